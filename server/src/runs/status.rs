//! Run statuses and how a trainer's exit becomes one.

use serde::{Deserialize, Serialize};

use crt_trainer::supervise::ExitRecord;

use crate::launch::BackendKind;
use crate::record::Terminal;
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

/// How an attempt ended, as far as its exit record and the backend tell.
#[derive(Debug, Clone, Copy)]
pub enum Ended<'a> {
    /// The supervisor's exit record.
    Record(&'a ExitRecord),
    /// No exit record: the process or job vanished (SIGKILL to the supervisor, a lost node, an
    /// outside `scancel` past its kill wait); `why` in words when the backend knows.
    Vanished { why: Option<&'a str> },
    /// No exit record, but the supervisor's own wait status is known (this server started it).
    Unrecorded { code: Option<i32>, signal: Option<i32> },
}

/// The run's final status from how the attempt ended and the trainer's last terminal event
/// (the two together are the truth: an event alone may be followed by a crash, an exit code
/// alone says too little).
pub fn classify(
    ended: Ended,
    terminal: Option<&Terminal>,
    stop_requested: bool,
    backend: BackendKind,
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
    let (code, signal) = match ended {
        Ended::Record(r) => (r.code, r.signal),
        Ended::Vanished { .. } => (None, None),
        Ended::Unrecorded { code, signal } => (code, signal),
    };
    let (status, error) = match ended {
        Ended::Vanished { .. } if terminal == Some(&Terminal::Finished) => (RunStatus::Finished, None),
        Ended::Vanished { .. } if stop_requested => {
            (RunStatus::Stopped, Some("stopped; the trainer was gone before it reported stopping".to_string()))
        }
        Ended::Vanished { why } => {
            let why = why.unwrap_or(
                "the trainer's supervisor vanished without an exit record (killed with SIGKILL, or its machine went down)",
            );
            (RunStatus::Crashed, Some(format!("{why}. Resume the run to continue from its last checkpoint{}", tail())))
        }
        Ended::Record(r) => classify_record(r, terminal, stop_requested, backend, &tail),
        Ended::Unrecorded { .. } if stop_requested => (RunStatus::Stopped, Some("stopped".to_string())),
        Ended::Unrecorded { code: Some(code), .. } => (
            RunStatus::Failed,
            Some(format!(
                "the trainer's supervisor exited with status {code} without an exit record (is the trainer \
                 executable a crt-trainer with `supervise`?){}",
                tail()
            )),
        ),
        Ended::Unrecorded { signal, .. } => {
            let sig = signal.map(signal_name).unwrap_or_else(|| "an unknown signal".into());
            (RunStatus::Crashed, Some(format!("the trainer's supervisor was killed by {sig}{}", tail())))
        }
    };
    Ending { status, exit_code: code.map(i64::from), exit_signal: signal.map(i64::from), error, wall_time_s }
}

fn classify_record(
    r: &ExitRecord,
    terminal: Option<&Terminal>,
    stop_requested: bool,
    backend: BackendKind,
    tail: &dyn Fn() -> String,
) -> (RunStatus, Option<String>) {
    let received = |name: &str| r.signals_received.iter().any(|s| s == name);
    let killed = |sig: Option<i32>| {
        let sig = sig.map(signal_name).unwrap_or_else(|| "a signal".into());
        format!("the trainer did not exit in time and was killed ({sig})")
    };
    match (r.code, terminal) {
        (Some(0), Some(Terminal::Finished)) => (RunStatus::Finished, None),
        _ if stop_requested => {
            let note = match terminal {
                Some(Terminal::Stopped) => None,
                _ if r.signal.is_some() => Some(format!("stopped: {}", killed(r.signal))),
                _ => Some("stopped before the trainer reported it".to_string()),
            };
            (RunStatus::Stopped, note)
        }
        _ if received("USR1") => {
            let note = match terminal {
                Some(Terminal::Stopped) => {
                    "reached its Slurm time limit and stopped at a checkpoint; resume it to continue".to_string()
                }
                _ => format!("reached its Slurm time limit; {}", killed(r.signal)),
            };
            (RunStatus::Stopped, Some(note))
        }
        (_, Some(Terminal::Stopped)) | (None, _) if received("TERM") && backend == BackendKind::Slurm => (
            RunStatus::Crashed,
            Some(
                "the Slurm job was cancelled outside CRT Lab (scancel); resume the run to continue from its checkpoint"
                    .into(),
            ),
        ),
        (Some(0), Some(Terminal::Stopped)) => {
            (RunStatus::Stopped, Some("the trainer was stopped by a signal from outside the server".into()))
        }
        (_, Some(Terminal::Failed(msg))) => (RunStatus::Failed, Some(format!("{msg}{}", tail()))),
        (None, _) => {
            let sig = r.signal.map(signal_name).unwrap_or_else(|| "an unknown signal".into());
            (RunStatus::Crashed, Some(format!("the trainer was killed by {sig}{}", tail())))
        }
        (Some(0), _) => (
            RunStatus::Failed,
            Some(format!("the trainer exited with status 0 without reporting `finished`{}", tail())),
        ),
        (Some(code), _) => (RunStatus::Failed, Some(format!("the trainer exited with status {code}{}", tail()))),
    }
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

    fn record(code: Option<i32>, signal: Option<i32>, received: &[&str]) -> ExitRecord {
        ExitRecord {
            code,
            signal,
            signals_received: received.iter().map(|s| s.to_string()).collect(),
            killed_after_grace: false,
            trainer_pid: 1,
            host: "h".into(),
            started_at: 0.0,
            ended_at: 1.0,
        }
    }

    fn local(r: &ExitRecord, t: Option<&Terminal>, stop: bool, last: &[String]) -> Ending {
        classify(Ended::Record(r), t, stop, BackendKind::Local, last, 1.0)
    }

    #[test]
    fn finished_needs_exit_zero_and_the_event() {
        let ok = record(Some(0), None, &[]);
        assert_eq!(local(&ok, Some(&Terminal::Finished), false, &[]).status, RunStatus::Finished);
        assert_eq!(local(&ok, None, false, &[]).status, RunStatus::Failed);
        let e = local(&record(Some(101), None, &[]), Some(&Terminal::Finished), false, &["panic".into()]);
        assert_eq!(e.status, RunStatus::Failed);
        assert!(e.error.unwrap().contains("status 101"));
    }

    #[test]
    fn signals_crash_unless_a_stop_was_asked_for() {
        let killed = record(None, Some(9), &[]);
        let e = local(&killed, None, false, &["epoch 1".into()]);
        assert_eq!(e.status, RunStatus::Crashed);
        let msg = e.error.unwrap();
        assert!(msg.contains("SIGKILL") && msg.contains("epoch 1"), "{msg}");
        assert_eq!(local(&killed, None, true, &[]).status, RunStatus::Stopped);
        assert_eq!(local(&record(Some(0), None, &["TERM"]), Some(&Terminal::Stopped), true, &[]).error, None);
    }

    #[test]
    fn slurm_time_limit_stops_and_outside_scancel_crashes() {
        let timed_out = record(Some(0), None, &["USR1"]);
        let e = classify(Ended::Record(&timed_out), Some(&Terminal::Stopped), false, BackendKind::Slurm, &[], 1.0);
        assert_eq!(e.status, RunStatus::Stopped);
        assert!(e.error.unwrap().contains("time limit"));
        let cancelled = record(Some(0), None, &["TERM"]);
        let e = classify(Ended::Record(&cancelled), Some(&Terminal::Stopped), false, BackendKind::Slurm, &[], 1.0);
        assert_eq!(e.status, RunStatus::Crashed);
        assert!(e.error.unwrap().contains("outside CRT Lab"));
        // The same stop asked through CRT Lab is a stop.
        let e = classify(Ended::Record(&cancelled), Some(&Terminal::Stopped), true, BackendKind::Slurm, &[], 1.0);
        assert_eq!(e.status, RunStatus::Stopped);
    }

    #[test]
    fn a_vanished_attempt_crashes_with_the_backends_reason() {
        let e = classify(
            Ended::Vanished { why: Some("the Slurm node failed (NODE_FAIL)") },
            None,
            false,
            BackendKind::Slurm,
            &[],
            1.0,
        );
        assert_eq!(e.status, RunStatus::Crashed);
        assert!(e.error.unwrap().contains("NODE_FAIL"));
        let e = classify(Ended::Vanished { why: None }, None, true, BackendKind::Local, &[], 1.0);
        assert_eq!(e.status, RunStatus::Stopped);
    }

    #[test]
    fn a_reported_failure_keeps_its_message() {
        let e = local(&record(Some(1), None, &[]), Some(&Terminal::Failed("no data".into())), false, &[]);
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
