//! Progress messages for fetching: an indicatif spinner on stderr when it is a terminal, plain
//! lines on stderr otherwise (logs, the server's pipes), so stdout stays free for events.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

pub(super) struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub(super) fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    /// A new step: replaces the spinner's message, or prints a line.
    pub(super) fn step(&self, message: impl Into<String>) {
        let message = message.into();
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None => eprintln!("{message}"),
        }
    }

    /// A passing status, shown on a terminal only (too chatty for logs).
    pub(super) fn transient(&self, message: impl Into<String>) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.into());
        }
    }

    /// Bytes received so far by a download (only shown on a terminal).
    pub(super) fn bytes(&self, what: &str, n: u64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{what}: {}", HumanBytes(n)));
        }
    }

    /// A line that stays (results, warnings), printed above the spinner.
    pub(super) fn note(&self, message: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(message.as_ref()),
            None => eprintln!("{}", message.as_ref()),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
