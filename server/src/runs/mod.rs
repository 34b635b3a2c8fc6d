//! The run lifecycle: creation, stop and resume (this module), the queue that starts runs
//! ([`scheduler`]) and the supervision that records each attempt from its event log until it
//! ends ([`supervise`]). Supervision speaks only to the launcher seam (`crate::launch`), so a
//! run looks the same whether it executes here or on a Slurm node.
//!
//! Runs outlive the server: an attempt's record is its files (event log, stderr, exit record),
//! so a restarted server re-attaches to every launched attempt and catches up from the offsets
//! it stored, whether the attempt is still going or ended while the server was down.

pub mod scheduler;
pub mod status;
pub mod supervise;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crt_trainer::events::unix_now;

pub use status::RunStatus;
pub use validate::{CreateRunRequest, FieldError, ResumeRequest};

use crate::cli::Settings;
use crate::devices::placement;
use crate::devices::{Device, GpuMonitor};
use crate::launch::{BackendKind, Launcher};
use crate::store::runs::{Ending, Run};
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

/// An attempt this server supervises now.
struct Active {
    device: Device,
    backend: BackendKind,
}

pub struct RunManager {
    store: Store,
    settings: Arc<Settings>,
    gpus: Arc<GpuMonitor>,
    launcher: Launcher,
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
        let launcher = Launcher::new(settings.stop_grace);
        Arc::new(RunManager {
            store,
            settings,
            gpus,
            launcher,
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

    /// (run id, device) of every attempt this server's local backend runs now.
    pub fn running_devices(&self) -> Vec<(i64, Device)> {
        let active = self.active.lock().expect("active runs lock");
        let mut list: Vec<(i64, Device)> =
            active.iter().filter(|(_, a)| a.backend == BackendKind::Local).map(|(id, a)| (*id, a.device)).collect();
        list.sort_by_key(|(id, _)| *id);
        list
    }

    /// Re-attaches to every launched attempt (runs go on across server restarts), then starts
    /// the scheduler.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        self.reattach().await?;
        let me = self.clone();
        tokio::spawn(async move { me.scheduler().await });
        Ok(())
    }

    /// The server is exiting. With `--on-exit detach` (the default) runs go on and nothing is
    /// done; with `--on-exit stop` every launched attempt is asked to stop and waited for.
    pub async fn shutdown(self: &Arc<Self>) {
        self.shutdown.cancel();
        if self.settings.on_exit == crate::cli::OnExit::Detach {
            return;
        }
        let ids: Vec<i64> = self.active.lock().expect("active runs lock").keys().copied().collect();
        for id in ids {
            if let Err(e) = self.stop(id).await {
                tracing::warn!(run = id, "stopping at shutdown: {e}");
            }
        }
        self.tasks.close();
        let limit = self.launcher.kill_after() + Duration::from_secs(10);
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
        if req.parents.len() > validate::MAX_PARENTS {
            return Err(FieldError::new(
                "parents",
                format!(
                    "must list at most {} runs (got {}); a run has at most one parent",
                    validate::MAX_PARENTS,
                    req.parents.len()
                ),
            )
            .into());
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
            Some(n) if n.chars().count() > validate::MAX_RUN_NAME_CHARS => {
                return Err(FieldError::new(
                    "name",
                    format!("must be at most {} characters", validate::MAX_RUN_NAME_CHARS),
                )
                .into())
            }
            other => other.map(str::to_string),
        };
        let checked = validate::check_config(&req.config, &parents, &self.settings.datasets_dir)?;
        let placement = validate::check_placement(&req, self.settings.backend)?;
        let device = placement.device;
        if placement.backend == BackendKind::Local {
            let gpus = self.gpus.snapshot();
            placement::check(device, &gpus.indices(), gpus.error.as_deref())
                .map_err(|message| FieldError::new("device", message))?;
        }

        let mut w = self.store.write().await?;
        let now = unix_now();
        let id = store::runs::insert(w.conn(), req.experiment_id, "", checked.kind, &checked.columns, &placement, now)
            .await?;
        let out_dir = self.settings.run_dir(id);
        let name = name.unwrap_or_else(|| format!("{} #{id}", checked.default_name()));
        let config = checked.with_out_dir(&out_dir);
        store::runs::set_config(w.conn(), id, &name, &config, &out_dir.to_string_lossy()).await?;
        store::runs::insert_parents(w.conn(), id, &req.parents).await?;
        w.journal(id, req.experiment_id, "status", json!({ "status": "queued", "backend": placement.backend })).await?;
        w.commit().await?;
        self.wake.notify_one();
        self.get(id).await
    }

    pub async fn get(&self, id: i64) -> Result<Run, RunError> {
        store::runs::get(&self.store.pool, id)
            .await?
            .ok_or_else(|| RunError::NotFound(format!("run {id} does not exist")))
    }

    /// Stops a queued run at once, or asks a launched attempt to stop (the trainer writes a
    /// checkpoint; killed after the grace period); the run becomes `stopped` when the attempt
    /// has ended. The request is stored, so a restarted server still knows it asked.
    pub async fn stop(self: &Arc<Self>, id: i64) -> Result<Run, RunError> {
        let run = self.get(id).await?;
        refuse_external(&run, "stop")?;
        match (&run.status, &run.handle) {
            (RunStatus::Queued, None) => {
                let end = Ending {
                    status: RunStatus::Stopped,
                    exit_code: None,
                    exit_signal: None,
                    error: Some("stopped before it started".into()),
                    wall_time_s: 0.0,
                };
                self.record_ending(&run, &end).await?;
            }
            (RunStatus::Queued | RunStatus::Running, Some(handle)) => {
                let mut w = self.store.write().await?;
                store::runs::request_stop(w.conn(), id, unix_now()).await?;
                w.commit().await?;
                let pending = run.status == RunStatus::Queued;
                self.launcher.stop(handle, pending).await?;
                let (me, handle) = (self.clone(), handle.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(me.launcher.kill_after()).await;
                    // Still not ended: everything in the attempt is killed.
                    if let Ok(Some(r)) = store::runs::get(&me.store.pool, id).await {
                        if r.status.is_active() && r.handle.as_ref() == Some(&handle) {
                            if let Err(e) = me.launcher.kill(&handle).await {
                                tracing::warn!(run = id, "killing after the grace period: {e:#}");
                            }
                        }
                    }
                });
            }
            (other, _) => {
                return Err(RunError::Conflict(format!(
                    "run {id} is {}; only queued or running runs can be stopped",
                    other.as_str()
                )))
            }
        }
        self.get(id).await
    }

    /// Puts a stopped or crashed run back in the queue with `resume: true`; it keeps its id,
    /// metrics and logs, and the trainer continues from its checkpoint (train, transfer) or
    /// from the next image not yet certified (certify, predict). A failed train or transfer run
    /// with a checkpoint (e.g. one whose loss diverged) resumes from that checkpoint too;
    /// `req.lr` replaces its learning rate.
    pub async fn resume(&self, id: i64, req: &ResumeRequest) -> Result<Run, RunError> {
        let run = self.get(id).await?;
        refuse_external(&run, "resume")?;
        if !self.is_resumable(&run).await? {
            let why = if run.status == RunStatus::Failed && run.kind.makes_model() {
                "; this failed run has no checkpoint to resume from"
            } else {
                ""
            };
            return Err(RunError::Conflict(format!(
                "run {id} is {}; only stopped or crashed runs, and failed train or transfer runs with a checkpoint, can be resumed{why}",
                run.status.as_str()
            )));
        }
        req.check(run.kind)?;
        let config = validate::resume_config(&run, req);
        let mut w = self.store.write().await?;
        store::runs::requeue(w.conn(), id, &config, unix_now()).await?;
        w.journal(id, run.experiment_id, "status", json!({ "status": "queued", "resume": true })).await?;
        w.commit().await?;
        self.wake.notify_one();
        self.get(id).await
    }

    /// Stopped or crashed (any kind), or failed with a checkpoint (train, transfer).
    pub async fn is_resumable(&self, run: &Run) -> anyhow::Result<bool> {
        resumable(&self.store.pool, run).await
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
}

/// Whether `POST …/resume` accepts the run: stopped or crashed (any kind), or a failed train or
/// transfer run that has a checkpoint to continue from (its loss diverged, say).
pub async fn resumable(pool: &sqlx::AnyPool, run: &Run) -> anyhow::Result<bool> {
    if run.status.is_resumable() {
        return Ok(true);
    }
    if run.status == RunStatus::Failed && run.kind.makes_model() {
        return store::artifacts::has_checkpoint(pool, run.id).await;
    }
    Ok(false)
}

/// CRT Lab neither started nor can end an external run (an MLflow client logs it): stop and
/// resume are the client's.
fn refuse_external(run: &Run, what: &str) -> Result<(), RunError> {
    if run.kind == crt_trainer::config::RunKind::External {
        return Err(RunError::Conflict(format!(
            "run {} is an external run, logged by an MLflow client: CRT Lab has no process to {what}; \
             the client ends it (mlflow.end_run) or logs to it again (mlflow.start_run(run_id=...))",
            run.id
        )));
    }
    Ok(())
}
