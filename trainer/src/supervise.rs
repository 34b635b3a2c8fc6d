//! The supervisor's files: what `crt-trainer supervise` leaves in an attempt directory for the
//! server to read. Part of the wire format shared with the server (builds without candle).
//!
//! `<run_dir>/attempts/<attempt>/` holds the trainer's stdout ([`EVENTS_FILE`], JSON lines), its
//! stderr ([`STDERR_FILE`]) and, once the trainer has ended, [`EXIT_FILE`] ([`ExitRecord`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const EVENTS_FILE: &str = "events.jsonl";
pub const STDERR_FILE: &str = "stderr.log";
pub const EXIT_FILE: &str = "exit.json";

/// `<run_dir>/attempts/<attempt>`
pub fn attempt_dir(run_dir: &Path, attempt: u32) -> PathBuf {
    run_dir.join("attempts").join(attempt.to_string())
}

/// How the supervised trainer ended (`exit.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The trainer's exit status, when it exited (127 when it could not be started).
    pub code: Option<i32>,
    /// The signal that killed the trainer, when one did.
    pub signal: Option<i32>,
    /// Signals the supervisor received, in order: "TERM", "INT", "USR1" (USR1 = Slurm's time-limit warning).
    pub signals_received: Vec<String>,
    /// The supervisor had to SIGKILL the trainer after the grace period.
    pub killed_after_grace: bool,
    /// 0 when the trainer could not be started.
    pub trainer_pid: u32,
    pub host: String,
    /// Unix seconds.
    pub started_at: f64,
    pub ended_at: f64,
}

impl ExitRecord {
    /// Ok(None) when the file does not exist yet; Err on unreadable/garbled file.
    pub fn read(attempt_dir: &Path) -> std::io::Result<Option<ExitRecord>> {
        let path = attempt_dir.join(EXIT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
    }

    /// Atomic: write exit.json.tmp, fsync, rename to exit.json, fsync the directory.
    pub fn write(&self, attempt_dir: &Path) -> std::io::Result<()> {
        let tmp = attempt_dir.join(format!("{EXIT_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, attempt_dir.join(EXIT_FILE))?;
        File::open(attempt_dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ExitRecord {
        ExitRecord {
            code: None,
            signal: Some(15),
            signals_received: vec!["USR1".into(), "TERM".into()],
            killed_after_grace: false,
            trainer_pid: 4242,
            host: "node-7".into(),
            started_at: 1764111111.25,
            ended_at: 1764111190.5,
        }
    }

    #[test]
    fn attempt_dirs_are_numbered_under_attempts() {
        assert_eq!(attempt_dir(Path::new("/runs/r1"), 3), PathBuf::from("/runs/r1/attempts/3"));
    }

    #[test]
    fn exit_records_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ExitRecord::read(dir.path()).unwrap(), None);
        let rec = record();
        rec.write(dir.path()).unwrap();
        assert_eq!(ExitRecord::read(dir.path()).unwrap(), Some(rec.clone()));
        assert!(!dir.path().join("exit.json.tmp").exists(), "the temporary file is renamed away");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(EXIT_FILE)).unwrap()).unwrap();
        assert_eq!(json["code"], serde_json::Value::Null);
        assert_eq!(json["signals_received"], serde_json::json!(["USR1", "TERM"]));
        // A second write replaces the first.
        let rec2 = ExitRecord { code: Some(0), signal: None, ..rec };
        rec2.write(dir.path()).unwrap();
        assert_eq!(ExitRecord::read(dir.path()).unwrap(), Some(rec2));
    }

    #[test]
    fn garbled_exit_records_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EXIT_FILE), "{\"code\": 0, ").unwrap();
        let err = ExitRecord::read(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
