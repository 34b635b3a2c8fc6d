//! Supervision of a launched attempt, the same for a fresh launch and for one found again
//! after a server restart: tail the attempt's event log and stderr from the stored offsets
//! into the recorder, ask the backend whether the attempt is still there, and when the exit
//! record appears (or the attempt vanished without one) record how the run ended.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crt_trainer::events::unix_now;
use crt_trainer::supervise::{ExitRecord, EVENTS_FILE, STDERR_FILE};

use super::status::{self, Ended};
use super::{Active, RunManager, RunStatus};
use crate::launch::{local, BackendKind, Handle, Observed};
use crate::record::{self, Cursor, Incoming, Recorder};
use crt_trainer::config::RunKind;

use crate::store;
use crate::store::runs::{Ending, Run};

/// How often a quiet local attempt's files are looked at (the event latency's upper bound).
pub const LOCAL_POLL: Duration = Duration::from_millis(100);
/// The same for a Slurm attempt, whose files are on a shared filesystem (and whose state comes
/// from one `squeue` a second).
pub const SLURM_POLL: Duration = Duration::from_secs(1);
/// The most bytes of one file read into one batch.
const MAX_READ: u64 = 4 << 20;
/// How many of the trainer's last lines a failure message quotes.
const TAIL_LINES: i64 = 20;

enum Step {
    /// Still going; whether anything new was recorded (then look again at once).
    Going {
        recorded: bool,
    },
    Done,
}

impl RunManager {
    /// Finds every launched attempt again and supervises it; ends what cannot be followed.
    pub(super) async fn reattach(self: &Arc<Self>) -> anyhow::Result<()> {
        // Runs left `running` by a server from before event logs (no handle) cannot be tailed.
        // External runs (MLflow clients) have no process here: a restart leaves them as they are.
        for run in store::runs::with_status(&self.store.pool, RunStatus::Running).await? {
            if run.handle.is_none() && run.kind != RunKind::External {
                let end = Ending {
                    status: RunStatus::Crashed,
                    exit_code: None,
                    exit_signal: None,
                    error: Some("the server restarted and this run has no event log to catch up from".into()),
                    wall_time_s: 0.0,
                };
                self.record_ending(&run, &end).await?;
            }
        }
        let launched = store::runs::launched(&self.store.pool).await?;
        let mut ours = Vec::new();
        // A Slurm job may run on this very machine (a node of the cluster): its supervisor is a
        // process group under the runs directory too, and not a stray.
        let mut jobs_here = Vec::new();
        for run in launched {
            let Some(handle) = &run.handle else { continue };
            match handle {
                Handle::Local { pid, .. } => ours.push(*pid),
                Handle::Slurm { job_id, attempt_dir } => {
                    self.launcher.slurm.watch(job_id);
                    jobs_here.push(attempt_dir.clone());
                }
            }
            tracing::info!(run = run.id, ?handle, "re-attaching to a launched attempt");
            let device = run.device.unwrap_or(crate::devices::Device::Cpu);
            self.active.lock().expect("active runs lock").insert(run.id, Active { device, backend: run.backend });
            let me = self.clone();
            self.tasks.spawn(async move { me.supervise(run.id).await });
        }
        // A process group under the runs directory that no run knows: the previous server died
        // between starting it and storing its handle. It would collide with the run's next start.
        for pid in local::groups_under(&self.settings.runs_dir) {
            if !ours.contains(&pid) && !jobs_here.iter().any(|dir| local::is_supervisor(pid, dir)) {
                tracing::warn!(pid, "ending a stray trainer left by a previous server");
                local::terminate_orphan(pid, pid, Duration::from_secs(5)).await?;
            }
        }
        Ok(())
    }

    /// Follows one run's attempt until it has ended and that is recorded.
    pub(super) async fn supervise(self: Arc<Self>, id: i64) {
        loop {
            if self.shutdown.is_cancelled() && self.settings.on_exit == crate::cli::OnExit::Detach {
                // The attempt goes on; the next server catches up from the stored offsets.
                return;
            }
            let poll = match self.supervise_step(id).await {
                Ok(Step::Done) => break,
                Ok(Step::Going { recorded: true }) => continue,
                Ok(Step::Going { recorded: false }) => self.poll_interval(id),
                Err(e) => {
                    tracing::error!(run = id, "supervising the run failed (retrying): {e:#}");
                    Duration::from_secs(1)
                }
            };
            tokio::time::sleep(poll).await;
        }
        self.active.lock().expect("active runs lock").remove(&id);
        self.wake.notify_one();
    }

    fn poll_interval(&self, id: i64) -> Duration {
        match self.active.lock().expect("active runs lock").get(&id).map(|a| a.backend) {
            Some(BackendKind::Slurm) => SLURM_POLL,
            _ => LOCAL_POLL,
        }
    }

    async fn supervise_step(&self, id: i64) -> anyhow::Result<Step> {
        let Some(run) = store::runs::get(&self.store.pool, id).await? else { return Ok(Step::Done) };
        let Some(handle) = run.handle.clone().filter(|_| run.status.is_active()) else { return Ok(Step::Done) };
        let dir = handle.attempt_dir().to_path_buf();
        // Read the exit record before the logs: everything it covers is then in the files.
        if let Some(exit) = ExitRecord::read(&dir)? {
            self.note_ran(&run, &handle, &exit).await?;
            self.catch_up(&run, &dir, true).await?;
            self.finish(id, Ended::Record(&exit)).await?;
            return Ok(Step::Done);
        }
        let recorded = self.catch_up(&run, &dir, false).await?;
        match self.launcher.observe(&handle).await {
            Observed::Pending { reason } => {
                let state = json!({ "state": "PENDING", "reason": reason });
                self.note_backend_state(&run, &state, None).await?;
            }
            Observed::Running { node } => {
                let state = match &handle {
                    Handle::Local { pid, .. } => json!({ "state": "RUNNING", "pid": pid }),
                    Handle::Slurm { job_id, .. } => json!({ "state": "RUNNING", "job_id": job_id, "node": node }),
                };
                self.note_backend_state(&run, &state, Some(RunStatus::Running)).await?;
            }
            Observed::Gone { why } => {
                // The exit record may have been written between the two looks.
                let ended = ExitRecord::read(&dir)?;
                if let Some(exit) = &ended {
                    self.note_ran(&run, &handle, exit).await?;
                }
                let run = store::runs::get(&self.store.pool, id).await?.unwrap_or(run);
                self.catch_up(&run, &dir, true).await?;
                match &ended {
                    Some(exit) => self.finish(id, Ended::Record(exit)).await?,
                    None => self.finish(id, Ended::Vanished { why: why.as_deref() }).await?,
                }
                return Ok(Step::Done);
            }
            Observed::Exited { code, signal } => {
                let ended = ExitRecord::read(&dir)?;
                let run = store::runs::get(&self.store.pool, id).await?.unwrap_or(run);
                self.catch_up(&run, &dir, true).await?;
                match &ended {
                    Some(exit) => self.finish(id, Ended::Record(exit)).await?,
                    None => self.finish(id, Ended::Unrecorded { code, signal }).await?,
                }
                return Ok(Step::Done);
            }
            Observed::Unknown => {}
        }
        Ok(Step::Going { recorded })
    }

    /// Stores what the backend says when it changed, and marks the run `running` once it runs.
    async fn note_backend_state(
        &self,
        run: &Run,
        state: &serde_json::Value,
        status: Option<RunStatus>,
    ) -> anyhow::Result<()> {
        let starts = status == Some(RunStatus::Running) && run.status == RunStatus::Queued;
        if run.backend_state.as_ref() == Some(state) && !starts {
            return Ok(());
        }
        let mut w = self.store.write().await?;
        store::runs::set_backend_state(w.conn(), run.id, state).await?;
        if starts {
            store::runs::set_running(w.conn(), run.id, unix_now()).await?;
            let data = json!({ "status": "running", "attempt": run.attempt, "device": run.device, "where": state });
            w.journal(run.id, run.experiment_id, "status", data).await?;
        } else {
            w.journal(run.id, run.experiment_id, "backend", state.clone()).await?;
        }
        w.commit().await
    }

    /// An attempt that ended before the backend was ever seen running it (a short Slurm job
    /// that started and ended between two polls): the run is marked `running` first, where and
    /// when its exit record says, so it does not go from `queued` (and PENDING) to its end.
    async fn note_ran(&self, run: &Run, handle: &Handle, exit: &ExitRecord) -> anyhow::Result<()> {
        if run.status != RunStatus::Queued {
            return Ok(());
        }
        let state = match handle {
            Handle::Local { pid, .. } => json!({ "state": "RUNNING", "pid": pid }),
            Handle::Slurm { job_id, .. } => json!({ "state": "RUNNING", "job_id": job_id, "node": exit.host }),
        };
        let mut w = self.store.write().await?;
        store::runs::set_backend_state(w.conn(), run.id, &state).await?;
        // The record's start time when it has one (a stand-in supervisor may write 0).
        let started = if exit.started_at > 0.0 { exit.started_at } else { unix_now() };
        store::runs::set_running(w.conn(), run.id, started).await?;
        let data = json!({ "status": "running", "attempt": run.attempt, "device": run.device, "where": state });
        w.journal(run.id, run.experiment_id, "status", data).await?;
        w.commit().await
    }

    /// Records what the attempt's files hold beyond the stored offsets; whether there was any.
    /// `last`: the attempt has ended, so a final line without its newline counts too.
    async fn catch_up(&self, run: &Run, dir: &Path, last: bool) -> anyhow::Result<bool> {
        let recorder = Recorder::new(self.store.clone(), run.id, run.experiment_id, run.out_dir.clone().into());
        let mut cursor = run.cursor;
        loop {
            let now = unix_now();
            let (events, events_end) = read_lines(&dir.join(EVENTS_FILE), cursor.events, last)?;
            let (errors, stderr_end) = read_lines(&dir.join(STDERR_FILE), cursor.stderr, last)?;
            if events.is_empty() && errors.is_empty() {
                return Ok(cursor != run.cursor);
            }
            let mut batch: Vec<Incoming> = events.iter().map(|l| Incoming::from_event_line(l, now)).collect();
            batch.extend(errors.into_iter().map(|text| Incoming::Log { stream: "stderr", ts: now, text }));
            cursor = Cursor { events: events_end, stderr: stderr_end };
            recorder.record(&batch, Some(cursor)).await?;
        }
    }

    /// Records how the attempt ended, with the files it left that no event announced.
    async fn finish(&self, id: i64, ended: Ended<'_>) -> anyhow::Result<()> {
        let Some(run) = store::runs::get(&self.store.pool, id).await? else { return Ok(()) };
        let last = store::logs::last_trainer_lines(&self.store.pool, id, TAIL_LINES).await?;
        let wall = match ended {
            Ended::Record(r) => (r.ended_at - r.started_at).max(0.0),
            Ended::Vanished { .. } | Ended::Unrecorded { .. } => {
                let last_ts = store::journal::last_ts(&self.store.pool, id).await?;
                match (run.started_at, last_ts) {
                    (Some(s), Some(l)) if l > s => l - s,
                    _ => 0.0,
                }
            }
        };
        let end =
            status::classify(ended, run.terminal.as_ref(), run.stop_requested_at.is_some(), run.backend, &last, wall);
        tracing::info!(run = id, status = end.status.as_str(), ?ended, "attempt ended");
        let known: Vec<String> =
            store::artifacts::list(&self.store.pool, id).await?.into_iter().map(|a| a.path).collect();
        let extra = record::unreported_files(Path::new(&run.out_dir), &known).await;
        record::record_artifacts(&self.store, id, run.experiment_id, &extra).await?;
        if let Some(Handle::Local { pid, .. }) = &run.handle {
            local::forget(*pid);
        }
        self.record_ending(&run, &end).await
    }
}

/// Complete lines of `path` from byte `offset` (at most [`MAX_READ`] bytes), and the offset
/// after the last one returned. A missing file has no lines. `last`: a final line without a
/// newline counts too.
fn read_lines(path: &Path, offset: u64, last: bool) -> std::io::Result<(Vec<String>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= offset {
        return Ok((Vec::new(), offset));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.take(MAX_READ.min(len - offset)).read_to_end(&mut buf)?;
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        // One line longer than a whole read: take it as it is rather than stall.
        None if buf.len() as u64 == MAX_READ || last => buf.len(),
        None => 0,
    };
    let take = if last && offset + buf.len() as u64 == len { buf.len() } else { complete };
    let lines = buf[..take]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).trim_end_matches('\r').to_string())
        .collect();
    Ok((lines, offset + take as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_lines_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        assert_eq!(read_lines(&path, 0, false).unwrap(), (vec![], 0), "a missing file has no lines");
        std::fs::write(&path, b"one\r\ntwo \xff\nthr").unwrap();
        let (lines, end) = read_lines(&path, 0, false).unwrap();
        assert_eq!(lines, vec!["one", "two \u{fffd}"]);
        assert_eq!(end, 11, "the partial line is left for later");
        assert_eq!(read_lines(&path, end, false).unwrap(), (vec![], 11));
        let (lines, last_end) = read_lines(&path, end, true).unwrap();
        assert_eq!((lines, last_end), (vec!["thr".to_string()], 14), "at the end it counts");
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"ee\nfour\n").unwrap();
        let (lines, end) = read_lines(&path, end, false).unwrap();
        assert_eq!((lines, end), (vec!["three".to_string(), "four".to_string()], 22));
    }
}
