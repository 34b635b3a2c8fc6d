//! The run lifecycle: creation, the queue with its dependencies, supervision of trainer
//! processes, stop and resume, and reconciliation of runs a previous server left running.
//!
//! Reconciliation: a trainer's progress reaches the server only through its stdout pipe, and a
//! pipe cannot be re-attached after the server that held it died. So a run found `running` at
//! start is marked `crashed` (resumable from its last checkpoint); if its trainer is still
//! alive it is first sent SIGTERM (so it may write a checkpoint), then SIGKILL after the grace
//! period.

pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::io::BufReader;
use tokio::process::Child;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crt_trainer::events::unix_now;

pub use status::RunStatus;
pub use validate::{CreateRunRequest, FieldError};

use crate::cli::Settings;
use crate::devices::placement::{self, Decision, Slots};
use crate::devices::{Device, GpuMonitor};
use crate::ingest::{self, Ingest, Source};
use crate::launch;
use crate::store::runs::{Ending, Run, Started};
use crate::store::{self, Store};

/// Why a run operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A trainer process this server started and still supervises.
struct Active {
    pgid: i32,
    stop_requested: Arc<AtomicBool>,
    device: Device,
}

pub struct RunManager {
    store: Store,
    settings: Arc<Settings>,
    gpus: Arc<GpuMonitor>,
    active: Mutex<HashMap<i64, Active>>,
    wake: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl RunManager {
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        gpus: Arc<GpuMonitor>,
        shutdown: CancellationToken,
    ) -> Arc<RunManager> {
        Arc::new(RunManager {
            store,
            settings,
            gpus,
            active: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn gpus(&self) -> &GpuMonitor {
        &self.gpus
    }

    /// (run id, device) of every trainer running now.
    pub fn running_devices(&self) -> Vec<(i64, Device)> {
        let active = self.active.lock().expect("active runs lock");
        let mut list: Vec<(i64, Device)> = active.iter().map(|(id, a)| (*id, a.device)).collect();
        list.sort_by_key(|(id, _)| *id);
        list
    }

    /// Reconciles leftover runs, then starts the scheduler.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        self.reconcile().await?;
        let me = self.clone();
        tokio::spawn(async move { me.scheduler().await });
        Ok(())
    }

    /// Stops every trainer (they become `stopped`, resumable) and waits for them to exit.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let ids: Vec<i64> = self.active.lock().expect("active runs lock").keys().copied().collect();
        for id in ids {
            if let Err(e) = self.stop_running(id) {
                tracing::warn!(run = id, "stopping at shutdown: {e:#}");
            }
        }
        self.tasks.close();
        let limit = self.settings.stop_grace + Duration::from_secs(10);
        if tokio::time::timeout(limit, self.tasks.wait()).await.is_err() {
            tracing::warn!("some trainers did not exit within {limit:?}");
        }
    }

    pub async fn create(&self, req: CreateRunRequest) -> Result<Run, RunError> {
        let pool = &self.store.pool;
        if store::experiments::get(pool, req.experiment_id).await?.is_none() {
            return Err(
                FieldError::new("experiment_id", format!("experiment {} does not exist", req.experiment_id)).into()
            );
        }
        let mut parents = Vec::new();
        for (i, id) in req.parents.iter().enumerate() {
            if req.parents[..i].contains(id) {
                return Err(FieldError::new(format!("parents[{i}]"), format!("run {id} is listed twice")).into());
            }
            match store::runs::get(pool, *id).await? {
                Some(run) => parents.push(run),
                None => return Err(FieldError::new(format!("parents[{i}]"), format!("run {id} does not exist")).into()),
            }
        }
        let name = match req.name.as_deref().map(str::trim) {
            Some("") => {
                return Err(FieldError::new("name", "must not be empty (or leave it out for a default name)").into())
            }
            Some(n) if n.chars().count() > 200 => {
                return Err(FieldError::new("name", "must be at most 200 characters").into())
            }
            other => other.map(str::to_string),
        };
        let checked = validate::check_config(&req.config, &parents, &self.settings.datasets_dir)?;
        let device = req.device.unwrap_or_default();
        let gpus = self.gpus.snapshot();
        placement::check(device, &gpus.indices(), gpus.error.as_deref())
            .map_err(|message| FieldError::new("device", message))?;

        let mut w = self.store.write().await?;
        let now = unix_now();
        let id =
            store::runs::insert(w.conn(), req.experiment_id, "", checked.kind.as_str(), &checked.columns, device, now)
                .await?;
        let out_dir = self.settings.run_dir(id);
        let name = name.unwrap_or_else(|| format!("{} #{id}", checked.default_name()));
        let config = checked.with_out_dir(&out_dir);
        store::runs::set_config(w.conn(), id, &name, &config, &out_dir.to_string_lossy()).await?;
        store::runs::insert_parents(w.conn(), id, &req.parents).await?;
        w.journal(id, req.experiment_id, "status", json!({ "status": "queued" })).await?;
        w.commit().await?;
        self.wake.notify_one();
        self.get(id).await
    }

    pub async fn get(&self, id: i64) -> Result<Run, RunError> {
        store::runs::get(&self.store.pool, id)
            .await?
            .ok_or_else(|| RunError::NotFound(format!("run {id} does not exist")))
    }

    /// Stops a queued run at once, or asks a running trainer to stop (SIGTERM, then SIGKILL
    /// after the grace period); the run becomes `stopped` when the trainer has exited.
    pub async fn stop(&self, id: i64) -> Result<Run, RunError> {
        let run = self.get(id).await?;
        match run.status {
            RunStatus::Queued => {
                let end = Ending {
                    status: RunStatus::Stopped,
                    exit_code: None,
                    exit_signal: None,
                    error: Some("stopped before it started".into()),
                    wall_time_s: 0.0,
                };
                self.record_ending(&run, &end).await?;
            }
            RunStatus::Running => self.stop_running(id)?,
            other => {
                return Err(RunError::Conflict(format!(
                    "run {id} is {}; only queued or running runs can be stopped",
                    other.as_str()
                )))
            }
        }
        self.get(id).await
    }

    fn stop_running(&self, id: i64) -> Result<(), RunError> {
        let (pgid, flag) = {
            let active = self.active.lock().expect("active runs lock");
            let Some(a) = active.get(&id) else {
                return Err(RunError::Conflict(format!("run {id} has no trainer process (it is just ending)")));
            };
            (a.pgid, a.stop_requested.clone())
        };
        flag.store(true, Ordering::SeqCst);
        launch::signal_group(pgid, Signal::SIGTERM)?;
        let grace = self.settings.stop_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            // The flag is dropped with the supervisor once the trainer has exited; while it
            // lives, the group is still ours to kill.
            if Arc::strong_count(&flag) > 1 {
                let _ = launch::signal_group(pgid, Signal::SIGKILL);
            }
        });
        Ok(())
    }

    /// Puts a stopped or crashed train/transfer run back in the queue with `resume: true`;
    /// it keeps its id, metrics and logs, and the trainer continues from its checkpoint.
    pub async fn resume(&self, id: i64) -> Result<Run, RunError> {
        let run = self.get(id).await?;
        if !run.status.is_resumable() {
            return Err(RunError::Conflict(format!(
                "run {id} is {}; only stopped or crashed runs can be resumed",
                run.status.as_str()
            )));
        }
        let config = validate::resume_config(&run).map_err(RunError::Conflict)?;
        let mut w = self.store.write().await?;
        store::runs::requeue(w.conn(), id, &config, unix_now()).await?;
        w.journal(id, run.experiment_id, "status", json!({ "status": "queued", "resume": true })).await?;
        w.commit().await?;
        self.wake.notify_one();
        self.get(id).await
    }

    async fn scheduler(self: Arc<Self>) {
        loop {
            if let Err(e) = self.schedule_pass().await {
                tracing::error!("scheduling runs failed: {e:#}");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Fails runs whose parents failed, then starts ready runs where their device is free: one
    /// run per GPU, up to `--max-concurrent-runs` on the CPU. A run waiting for its device does
    /// not hold up later runs that want another one.
    async fn schedule_pass(self: &Arc<Self>) -> anyhow::Result<()> {
        // Repeat until no more change: a failure can cascade down a chain of dependents.
        loop {
            let orphans = store::runs::orphaned(&self.store.pool).await?;
            if orphans.is_empty() {
                break;
            }
            let mut done = Vec::new();
            for (run_id, parent_id, parent_error) in orphans {
                if done.contains(&run_id) {
                    continue;
                }
                done.push(run_id);
                let Some(run) = store::runs::get(&self.store.pool, run_id).await? else { continue };
                let why = parent_error.unwrap_or_default();
                let end = Ending {
                    status: RunStatus::Failed,
                    exit_code: None,
                    exit_signal: None,
                    error: Some(format!("parent run {parent_id} failed: {why}")),
                    wall_time_s: 0.0,
                };
                self.record_ending(&run, &end).await?;
            }
        }
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        let running = self.running_devices().into_iter().map(|(_, device)| device);
        let mut slots = Slots::new(self.settings.max_concurrent_runs, &self.gpus.snapshot().indices(), running);
        for (id, request) in store::runs::ready(&self.store.pool).await? {
            if slots.is_full() {
                break;
            }
            let pool = &self.store.pool;
            match slots.place(request) {
                Decision::Wait => {}
                Decision::Start(device) => {
                    if let Some(run) = store::runs::get(pool, id).await? {
                        self.launch(run, device).await?;
                    }
                }
                Decision::Impossible(why) => {
                    if let Some(run) = store::runs::get(pool, id).await? {
                        self.refuse(&run, why).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Fails a queued run that can never get its device.
    async fn refuse(&self, run: &Run, why: String) -> anyhow::Result<()> {
        let end = Ending {
            status: RunStatus::Failed,
            exit_code: None,
            exit_signal: None,
            error: Some(format!("cannot start: {why}")),
            wall_time_s: 0.0,
        };
        self.record_ending(run, &end).await
    }

    async fn launch(self: &Arc<Self>, run: Run, device: Device) -> anyhow::Result<()> {
        let run_dir = PathBuf::from(&run.out_dir);
        let trainer = self.settings.trainer_for(device);
        let mut child = match launch::spawn_trainer(trainer, &run_dir, &run.config, device) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(run = run.id, "{e:#}");
                let end = Ending {
                    status: RunStatus::Failed,
                    exit_code: None,
                    exit_signal: None,
                    error: Some(format!("{e:#}")),
                    wall_time_s: 0.0,
                };
                return self.record_ending(&run, &end).await;
            }
        };
        let pid = child.id().expect("a just-spawned child has a pid") as i32;
        let stop_requested = Arc::new(AtomicBool::new(false));
        self.active
            .lock()
            .expect("active runs lock")
            .insert(run.id, Active { pgid: pid, stop_requested: stop_requested.clone(), device });
        let recorded = async {
            let mut w = self.store.write().await?;
            let started = Started { pid: pid.into(), pgid: pid.into(), device };
            store::runs::set_running(w.conn(), run.id, &started, unix_now()).await?;
            let data = json!({ "status": "running", "pid": pid, "attempt": run.attempt + 1, "device": device });
            w.journal(run.id, run.experiment_id, "status", data).await?;
            w.commit().await
        }
        .await;
        if let Err(e) = recorded {
            // Without its row saying `running` the trainer must not go on unsupervised.
            let _ = launch::signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            self.active.lock().expect("active runs lock").remove(&run.id);
            return Err(e);
        }
        tracing::info!(run = run.id, pid, %device, trainer = %trainer.display(), "trainer started");
        let me = self.clone();
        self.tasks.spawn(async move { me.supervise(run, child, stop_requested).await });
        Ok(())
    }

    /// Feeds the trainer's output to the ingest, waits for it to exit and records the ending.
    async fn supervise(self: Arc<Self>, run: Run, mut child: Child, stop_requested: Arc<AtomicBool>) {
        let started = Instant::now();
        let pgid = child.id().unwrap_or_default() as i32;
        let (tx, rx) = mpsc::channel(4 * ingest::MAX_BATCH);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(ingest::read_lines(BufReader::new(out), Source::Stdout, tx.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(ingest::read_lines(BufReader::new(err), Source::Stderr, tx)));
        }
        let ingest = tokio::spawn(
            Ingest::new(self.store.clone(), run.id, run.experiment_id, run.out_dir.clone().into()).run(rx),
        );

        let exit = match child.wait().await {
            Ok(st) => status::Exit { code: st.code(), signal: st.signal() },
            Err(e) => {
                tracing::error!(run = run.id, "waiting for the trainer failed: {e}");
                status::Exit { code: None, signal: None }
            }
        };
        // Anything the trainer left behind in its group would hold the pipes open.
        let _ = launch::signal_group(pgid, Signal::SIGKILL);
        let outcome = match tokio::time::timeout(Duration::from_secs(30), ingest).await {
            Ok(Ok(outcome)) => outcome,
            _ => {
                tracing::error!(run = run.id, "the trainer's output did not end after it exited");
                readers.iter().for_each(|r| r.abort());
                ingest::Outcome::default()
            }
        };
        let wall = started.elapsed().as_secs_f64();
        let last: Vec<String> = outcome.last_lines.iter().cloned().collect();
        let end = status::classify(exit, outcome.terminal.as_ref(), stop_requested.load(Ordering::SeqCst), &last, wall);
        tracing::info!(run = run.id, status = end.status.as_str(), ?exit, "trainer exited");

        let known: Vec<String> = match store::artifacts::list(&self.store.pool, run.id).await {
            Ok(list) => list.into_iter().map(|a| a.path).collect(),
            Err(_) => Vec::new(),
        };
        let extra = ingest::unreported_files(std::path::Path::new(&run.out_dir), &known).await;
        if let Err(e) = ingest::record_artifacts(&self.store, run.id, run.experiment_id, &extra).await {
            tracing::error!(run = run.id, "recording artifacts failed: {e:#}");
        }
        if let Err(e) = self.record_ending(&run, &end).await {
            tracing::error!(run = run.id, "recording the end of the run failed: {e:#}");
        }
        self.active.lock().expect("active runs lock").remove(&run.id);
        drop(stop_requested);
        self.wake.notify_one();
    }

    /// Stores a final status, with a server log line and a journal entry.
    async fn record_ending(&self, run: &Run, end: &Ending) -> anyhow::Result<()> {
        let now = unix_now();
        let mut w = self.store.write().await?;
        store::runs::set_ended(w.conn(), run.id, end, now).await?;
        let note = match &end.error {
            Some(err) => format!("run {}: {err}", end.status.as_str()),
            None => format!("run {}", end.status.as_str()),
        };
        let level = if end.status == RunStatus::Finished { "info" } else { "warn" };
        let log_id = store::logs::insert(w.conn(), run.id, now, "server", Some(level), &note).await?;
        w.journal(
            run.id,
            run.experiment_id,
            "log",
            json!({ "id": log_id, "stream": "server", "level": level, "line": note }),
        )
        .await?;
        let data = json!({
            "status": end.status.as_str(),
            "exit_code": end.exit_code,
            "exit_signal": end.exit_signal,
            "error": end.error,
        });
        w.journal(run.id, run.experiment_id, "status", data).await?;
        w.commit().await
    }

    /// Marks runs a previous server left `running` as `crashed`, ending their trainers first.
    async fn reconcile(&self) -> anyhow::Result<()> {
        for run in store::runs::with_status(&self.store.pool, RunStatus::Running).await? {
            let run_dir = PathBuf::from(&run.out_dir);
            let pid = run.pid.unwrap_or(0) as i32;
            let pgid = run.pgid.unwrap_or(0) as i32;
            let error = if pid > 0 && launch::is_run_trainer(pid, pgid, &run_dir) {
                tracing::warn!(run = run.id, pid, "ending a trainer left by a previous server");
                let grace = self.settings.stop_grace.min(Duration::from_secs(10));
                launch::terminate_orphan(pid, pgid, grace).await?;
                format!(
                    "the server restarted while the trainer (pid {pid}) was running; its output could no longer be \
                     read, so it was terminated. Resume the run to continue from its last checkpoint"
                )
            } else {
                format!(
                    "the server restarted and the trainer (pid {pid}) was gone. Resume the run to continue from its \
                     last checkpoint"
                )
            };
            // The attempt ran at least until its last stored event.
            let last = store::journal::last_ts(&self.store.pool, run.id).await?;
            let wall = match (run.started_at, last) {
                (Some(s), Some(l)) if l > s => l - s,
                _ => 0.0,
            };
            let end = Ending {
                status: RunStatus::Crashed,
                exit_code: None,
                exit_signal: None,
                error: Some(error),
                wall_time_s: wall,
            };
            self.record_ending(&run, &end).await?;
        }
        // A trainer of a run not marked running: the previous server died between starting it
        // and recording it. It would collide with the run's next start.
        for (pid, pgid) in launch::trainers_under(&self.settings.runs_dir) {
            tracing::warn!(pid, "ending a stray trainer left by a previous server");
            launch::terminate_orphan(pid, pgid, Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
