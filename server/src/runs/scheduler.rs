//! The queue: fails runs whose parents failed, and launches ready runs where their device and
//! backend allow.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Active, RunManager, RunStatus};
use crate::devices::placement::{Decision, Slots};
use crate::devices::{Device, DeviceRequest};
use crate::launch::{Attempt, BackendKind, Handle};
use crate::store;
use crate::store::runs::{Ending, Run};

impl RunManager {
    pub(super) async fn scheduler(self: Arc<Self>) {
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

    /// Fails runs whose parents failed, then launches ready runs: local ones where their
    /// device is free (one run per GPU, up to `--max-concurrent-runs` on the CPU; a run waiting
    /// for its device does not hold up later runs that want another one), Slurm ones at once
    /// (Slurm queues them).
    async fn schedule_pass(self: &Arc<Self>) -> anyhow::Result<()> {
        self.fail_orphans().await?;
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        let running = self.running_devices().into_iter().map(|(_, device)| device);
        let mut slots = Slots::new(self.settings.max_concurrent_runs, &self.gpus.snapshot().indices(), running);
        for (id, request) in store::runs::ready(&self.store.pool).await? {
            let Some(run) = store::runs::get(&self.store.pool, id).await? else { continue };
            if run.backend == BackendKind::Slurm {
                self.launch(run, slurm_device(request)).await?;
                continue;
            }
            if slots.is_full() {
                continue;
            }
            match slots.place(request) {
                Decision::Wait => {}
                Decision::Start(device) => self.launch(run, device).await?,
                Decision::Impossible(why) => self.refuse(&run, format!("cannot start: {why}")).await?,
            }
        }
        Ok(())
    }

    /// Repeats until no more change: a failure can cascade down a chain of dependents.
    async fn fail_orphans(&self) -> anyhow::Result<()> {
        loop {
            let orphans = store::runs::orphaned(&self.store.pool).await?;
            if orphans.is_empty() {
                return Ok(());
            }
            let mut done = Vec::new();
            for (run_id, parent_id, parent_error) in orphans {
                if done.contains(&run_id) {
                    continue;
                }
                done.push(run_id);
                let Some(run) = store::runs::get(&self.store.pool, run_id).await? else { continue };
                let why = parent_error.unwrap_or_default();
                self.refuse(&run, format!("parent run {parent_id} failed: {why}")).await?;
            }
        }
    }

    /// Fails a queued run that can never start.
    async fn refuse(&self, run: &Run, why: String) -> anyhow::Result<()> {
        let end = Ending {
            status: RunStatus::Failed,
            exit_code: None,
            exit_signal: None,
            error: Some(why),
            wall_time_s: 0.0,
        };
        self.record_ending(run, &end).await
    }

    async fn launch(self: &Arc<Self>, run: Run, device: Device) -> anyhow::Result<()> {
        let run_dir = PathBuf::from(&run.out_dir);
        let trainer = self.settings.trainer_for(device).to_path_buf();
        let mut resources = run.resources.clone().unwrap_or_default().or(&self.settings.slurm_defaults);
        if matches!(device, Device::Cuda(_)) && resources.gpus.is_none() {
            resources.gpus = Some(1);
        }
        let attempt = Attempt {
            run_id: run.id,
            run_dir: &run_dir,
            attempt: run.attempt + 1,
            config: &run.config,
            device,
            trainer: &trainer,
            resources: &resources,
        };
        let handle = match self.launcher.start(run.backend, &attempt).await {
            Ok(handle) => handle,
            Err(e) => {
                tracing::error!(run = run.id, "{e:#}");
                return self.refuse(&run, format!("{e:#}")).await;
            }
        };
        let recorded = async {
            let mut w = self.store.write().await?;
            store::runs::set_launched(w.conn(), run.id, &handle, device).await?;
            let data = json!({ "status": "launched", "attempt": run.attempt + 1, "device": device, "handle": handle });
            w.journal(run.id, run.experiment_id, "launched", data).await?;
            if let Handle::Local { pid, .. } = &handle {
                // A local attempt runs from the moment it is spawned (a Slurm job may wait in the
                // queue: supervision marks it running when Slurm says so).
                store::runs::set_running(w.conn(), run.id, crt_trainer::events::unix_now()).await?;
                let state = json!({ "state": "RUNNING", "pid": pid });
                store::runs::set_backend_state(w.conn(), run.id, &state).await?;
                let data = json!({ "status": "running", "attempt": run.attempt + 1, "device": device, "where": state });
                w.journal(run.id, run.experiment_id, "status", data).await?;
            }
            w.commit().await
        }
        .await;
        if let Err(e) = recorded {
            // Without its handle stored the attempt must not go on unsupervised.
            let _ = self.launcher.kill(&handle).await;
            return Err(e);
        }
        tracing::info!(run = run.id, ?handle, %device, trainer = %trainer.display(), "attempt launched");
        self.active.lock().expect("active runs lock").insert(run.id, Active { device, backend: run.backend });
        let me = self.clone();
        self.tasks.spawn(async move { me.supervise(run.id).await });
        Ok(())
    }
}

/// The device a Slurm job's trainer gets: a GPU request becomes `--gres=gpu:1` (see
/// `launch::slurm`), everything else the CPU.
fn slurm_device(request: DeviceRequest) -> Device {
    match request {
        DeviceRequest::AnyGpu | DeviceRequest::Gpu(_) => Device::Cuda(0),
        DeviceRequest::Auto | DeviceRequest::Cpu => Device::Cpu,
    }
}
