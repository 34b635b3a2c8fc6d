//! Where a command's progress goes: JSON lines on stdout (`--events jsonl`, read by the server) or,
//! for a person at a terminal, a progress bar and short messages on stderr.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::events::{ArtifactKind, Certificate, Event, EventLine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Jsonl,
    Human,
    /// Nothing at all (library use, tests).
    Quiet,
}

pub struct Reporter {
    output: Output,
    bar: Mutex<Option<ProgressBar>>,
}

impl Reporter {
    pub fn new(output: Output) -> Self {
        Reporter { output, bar: Mutex::new(None) }
    }

    pub fn quiet() -> Self {
        Reporter::new(Output::Quiet)
    }

    pub fn emit(&self, event: Event) {
        match self.output {
            Output::Quiet => {}
            Output::Jsonl => {
                let durable = needs_fsync(&event);
                let mut line = EventLine::now(event).to_json();
                line.push('\n');
                let mut out = std::io::stdout().lock();
                // One write per line (a reader never sees half a line from us), flushed at once. A
                // closed stdout (the server went away) must not kill a run: ignore write errors.
                let _ = out.write_all(line.as_bytes());
                let _ = out.flush();
                if durable {
                    sync_stdout();
                }
            }
            Output::Human => self.human(event),
        }
    }

    fn human(&self, event: Event) {
        let mut bar = self.bar.lock().expect("bar lock");
        match event {
            Event::Progress { phase, done, total, unit } => {
                let b = bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(total);
                    b.set_style(
                        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
                            .expect("template")
                            .progress_chars("=> "),
                    );
                    b
                });
                b.set_length(total);
                b.set_position(done);
                b.set_message(format!("{phase} ({unit})"));
            }
            Event::Metrics { step, epoch, values } => {
                let text: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
                let epoch = epoch.map(|e| format!(" epoch {e:.2}")).unwrap_or_default();
                self.print(&bar, &format!("step {step}{epoch}: {}", text.join(" ")));
            }
            Event::Log { level, message } => self.print(&bar, &format!("[{level}] {message}")),
            Event::Artifact { path, size, .. } => self.print(&bar, &format!("wrote {path} ({size} bytes)")),
            Event::Finished { wall_time_s, .. } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("finished in {wall_time_s:.1} s");
            }
            Event::Stopped { wall_time_s, .. } => {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                eprintln!("stopped after {wall_time_s:.1} s (checkpoint written)");
            }
            Event::Failed { error } => eprintln!("failed: {error}"),
            Event::Started { .. } | Event::Certified(_) => {}
        }
    }

    fn print(&self, bar: &Option<ProgressBar>, msg: &str) {
        match bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn metrics(&self, step: u64, epoch: Option<f64>, values: &[(&str, f64)]) {
        let values: BTreeMap<String, f64> = values.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        self.emit(Event::Metrics { step, epoch, values });
    }

    pub fn progress(&self, phase: &str, done: u64, total: u64, unit: &str) {
        self.emit(Event::Progress { phase: phase.into(), done, total, unit: unit.into() });
    }

    pub fn log(&self, message: impl Into<String>) {
        self.emit(Event::Log { level: "info".into(), message: message.into() });
    }

    pub fn certified(&self, cert: Certificate) {
        self.emit(Event::Certified(cert));
    }

    /// Reports a written file with its size and sha256.
    pub fn artifact(&self, path: &Path, kind: ArtifactKind) -> std::io::Result<()> {
        let bytes = std::fs::read(path)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        self.emit(Event::Artifact { path: path.display().to_string(), kind, size: bytes.len() as u64, sha256 });
        Ok(())
    }
}

/// Checkpoints and the terminal events must survive a crash of the machine when stdout is a file
/// (a supervised run's events.jsonl): they decide where a resumed run starts and how a run ended.
fn needs_fsync(event: &Event) -> bool {
    matches!(
        event,
        Event::Artifact { kind: ArtifactKind::Checkpoint, .. }
            | Event::Finished { .. }
            | Event::Stopped { .. }
            | Event::Failed { .. }
    )
}

/// fsync(2) on stdout; errors are ignored (a pipe or terminal answers EINVAL).
fn sync_stdout() {
    // SAFETY: fsync takes any descriptor number and only reports errors for bad ones.
    let _ = unsafe { libc::fsync(libc::STDOUT_FILENO) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_and_terminal_events_are_synced() {
        let artifact = |kind| Event::Artifact { path: "p".into(), kind, size: 1, sha256: String::new() };
        assert!(needs_fsync(&artifact(ArtifactKind::Checkpoint)));
        assert!(!needs_fsync(&artifact(ArtifactKind::Model)));
        assert!(needs_fsync(&Event::Finished { wall_time_s: 1.0, summary: BTreeMap::new() }));
        assert!(needs_fsync(&Event::Stopped { wall_time_s: 1.0, checkpoint: None }));
        assert!(needs_fsync(&Event::Failed { error: "x".into() }));
        assert!(!needs_fsync(&Event::Log { level: "info".into(), message: "m".into() }));
        // Syncing a descriptor that cannot be synced (the test harness's stdout) must not panic.
        sync_stdout();
    }
}
