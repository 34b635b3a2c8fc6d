//! Run statuses and how a trainer's exit becomes one.

use serde::{Deserialize, Serialize};

use crate::store::runs::Ending;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a free slot or for its parents to finish.
    Queued,
    Running,
    /// The trainer reported `finished` and exited 0.
    Finished,
    /// The trainer reported an error or exited non-zero; or a parent failed.
    Failed,
    /// Stopped on request (the trainer wrote a checkpoint); resumable.
    Stopped,
    /// The trainer died from a signal nobody asked for, or the server lost it; resumable.
    Crashed,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Finished,
        RunStatus::Failed,
        RunStatus::Stopped,
        RunStatus::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
            RunStatus::Crashed => "crashed",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }

    pub fn is_resumable(self) -> bool {
        matches!(self, RunStatus::Stopped | RunStatus::Crashed)
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = RunStatus::ALL.iter().map(|st| st.as_str()).collect();
            format!("unknown status '{s}'; expected one of {}", names.join(", "))
        })
    }
}

/// The last terminal event a trainer wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    Finished,
    Stopped,
    Failed(String),
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// The run's final status from the exit status and the last event (the two together are the
/// truth: an event alone may be followed by a crash, an exit code alone says too little).
pub fn classify(
    exit: Exit,
    terminal: Option<&Terminal>,
    stop_requested: bool,
    last_lines: &[String],
    wall_time_s: f64,
) -> Ending {
    let tail = || {
        if last_lines.is_empty() {
            String::new()
        } else {
            format!("; last output:\n{}", last_lines.join("\n"))
        }
    };
    let (status, error) = match (exit.code, terminal) {
        (Some(0), Some(Terminal::Finished)) => (RunStatus::Finished, None),
        _ if stop_requested => {
            let note = match (exit.signal, terminal) {
                (_, Some(Terminal::Stopped)) => None,
                (Some(sig), _) => {
                    Some(format!("stopped: the trainer did not exit in time and was killed ({})", signal_name(sig)))
                }
                _ => Some("stopped before the trainer reported it".to_string()),
            };
            (RunStatus::Stopped, note)
        }
        (Some(0), Some(Terminal::Stopped)) => {
            (RunStatus::Stopped, Some("the trainer was stopped by a signal from outside the server".into()))
        }
        (_, Some(Terminal::Failed(msg))) => (RunStatus::Failed, Some(format!("{msg}{}", tail()))),
        (None, _) => {
            let sig = exit.signal.map(signal_name).unwrap_or_else(|| "an unknown signal".into());
            (RunStatus::Crashed, Some(format!("the trainer was killed by {sig}{}", tail())))
        }
        (Some(0), _) => (
            RunStatus::Failed,
            Some(format!("the trainer exited with status 0 without reporting `finished`{}", tail())),
        ),
        (Some(code), _) => (RunStatus::Failed, Some(format!("the trainer exited with status {code}{}", tail()))),
    };
    Ending { status, exit_code: exit.code.map(i64::from), exit_signal: exit.signal.map(i64::from), error, wall_time_s }
}

pub fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("signal {sig} ({})", s.as_str()),
        Err(_) => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Exit = Exit { code: Some(0), signal: None };
    const KILLED: Exit = Exit { code: None, signal: Some(9) };

    #[test]
    fn finished_needs_exit_zero_and_the_event() {
        assert_eq!(classify(OK, Some(&Terminal::Finished), false, &[], 1.0).status, RunStatus::Finished);
        assert_eq!(classify(OK, None, false, &[], 1.0).status, RunStatus::Failed);
        let e =
            classify(Exit { code: Some(101), signal: None }, Some(&Terminal::Finished), false, &["panic".into()], 1.0);
        assert_eq!(e.status, RunStatus::Failed);
        assert!(e.error.unwrap().contains("status 101"));
    }

    #[test]
    fn signals_crash_unless_a_stop_was_asked_for() {
        let e = classify(KILLED, None, false, &["epoch 1".into()], 1.0);
        assert_eq!(e.status, RunStatus::Crashed);
        let msg = e.error.unwrap();
        assert!(msg.contains("SIGKILL") && msg.contains("epoch 1"), "{msg}");
        assert_eq!(classify(KILLED, None, true, &[], 1.0).status, RunStatus::Stopped);
        assert_eq!(classify(OK, Some(&Terminal::Stopped), true, &[], 1.0).error, None);
    }

    #[test]
    fn a_reported_failure_keeps_its_message() {
        let e =
            classify(Exit { code: Some(1), signal: None }, Some(&Terminal::Failed("no data".into())), false, &[], 1.0);
        assert_eq!(e.status, RunStatus::Failed);
        assert!(e.error.unwrap().starts_with("no data"));
    }

    #[test]
    fn statuses_parse() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), s);
        }
        assert!("done".parse::<RunStatus>().unwrap_err().contains("queued"));
    }
}
