//! Where a trainer runs: the seam between the run lifecycle and a backend.
//!
//! Every backend starts the same thing, `crt-trainer supervise --attempt-dir D -- crt-trainer run …`:
//! the supervisor appends the trainer's events to `D/events.jsonl` and its stderr to
//! `D/stderr.log`, and writes `D/exit.json` with the wait status when the trainer ends. Those
//! files are the record of an attempt; the server only reads them (see `runs::supervise`), so a
//! backend is small: start an attempt and hand back a [`Handle`] (stored on the run), say whether
//! it is still there ([`Observed`]), and pass on a stop.

pub mod local;
pub mod slurm;
pub mod slurm_watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::devices::Device;
use slurm::SlurmResources;
use slurm_watch::SlurmWatch;

pub use local::CONFIG_FILE;

/// The backends a run can execute on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A process group on the server's own machine.
    #[default]
    Local,
    /// A batch job on a Slurm cluster (`sbatch`).
    Slurm,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Slurm => "slurm",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(BackendKind::Local),
            "slurm" => Ok(BackendKind::Slurm),
            other => Err(format!("unknown backend {other:?}; expected \"local\" or \"slurm\"")),
        }
    }
}

/// One started attempt, as stored on the run (JSON), enough to find it again after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum Handle {
    /// The supervisor's pid, which is also its process group (the trainer is in it).
    Local {
        pid: i32,
        attempt_dir: PathBuf,
    },
    Slurm {
        job_id: String,
        attempt_dir: PathBuf,
    },
}

impl Handle {
    pub fn attempt_dir(&self) -> &Path {
        match self {
            Handle::Local { attempt_dir, .. } | Handle::Slurm { attempt_dir, .. } => attempt_dir,
        }
    }

    pub fn backend(&self) -> BackendKind {
        match self {
            Handle::Local { .. } => BackendKind::Local,
            Handle::Slurm { .. } => BackendKind::Slurm,
        }
    }
}

/// What a backend says about an attempt now.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Waiting to start (Slurm's queue), with the scheduler's reason.
    Pending {
        reason: String,
    },
    Running {
        node: Option<String>,
    },
    /// Its process or job is gone; `why` says how when the backend knows (e.g. Slurm's NODE_FAIL).
    Gone {
        why: Option<String>,
    },
    /// The supervisor this server started exited with this wait status (code, signal): what
    /// there is to go on when it wrote no exit record (e.g. --trainer-bin is not a crt-trainer).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Cannot tell now (e.g. `squeue` failed); ask again later.
    Unknown,
}

/// One attempt to start.
pub struct Attempt<'a> {
    pub run_id: i64,
    pub run_dir: &'a Path,
    pub attempt: i64,
    pub config: &'a serde_json::Value,
    pub device: Device,
    pub trainer: &'a Path,
    /// Slurm resources (defaults already filled in); ignored by the local backend.
    pub resources: &'a SlurmResources,
}

impl Attempt<'_> {
    pub fn attempt_dir(&self) -> PathBuf {
        crt_trainer::supervise::attempt_dir(self.run_dir, self.attempt as u32)
    }

    /// Writes the run config and creates the attempt directory; returns the supervisor's argv.
    fn prepare(&self, grace: Duration, device_flag: &str) -> anyhow::Result<Vec<String>> {
        let dir = self.attempt_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let config_path = local::config_path(self.run_dir);
        let text = serde_json::to_string_pretty(self.config)?;
        std::fs::write(&config_path, text).with_context(|| format!("cannot write {}", config_path.display()))?;
        let trainer = self.trainer.display().to_string();
        Ok(vec![
            trainer.clone(),
            "supervise".into(),
            "--attempt-dir".into(),
            dir.display().to_string(),
            "--grace-secs".into(),
            grace.as_secs().to_string(),
            "--".into(),
            trainer,
            "run".into(),
            "--config".into(),
            config_path.display().to_string(),
            "--events".into(),
            "jsonl".into(),
            "--device".into(),
            device_flag.into(),
        ])
    }
}

/// The backends, behind one interface.
pub struct Launcher {
    grace: Duration,
    slurm_grace_secs: u32,
    pub slurm: SlurmWatch,
}

impl Launcher {
    pub fn new(grace: Duration) -> Launcher {
        // Slurm warns the batch shell this long before the time limit: the stop grace plus a
        // margin for the trainer to notice between steps, at most the 1-minute minimum limit.
        let slurm_grace_secs = (grace.as_secs() as u32 + 10).min(55);
        Launcher { grace, slurm_grace_secs, slurm: SlurmWatch::default() }
    }

    pub async fn start(&self, backend: BackendKind, a: &Attempt<'_>) -> anyhow::Result<Handle> {
        match backend {
            BackendKind::Local => {
                let argv = a.prepare(self.grace, &a.device.to_string())?;
                let pid = local::spawn(&argv, a.run_dir, &a.attempt_dir(), a.device)?;
                Ok(Handle::Local { pid, attempt_dir: a.attempt_dir() })
            }
            BackendKind::Slurm => {
                // On a node the job sees only its own GPUs (Slurm sets CUDA_VISIBLE_DEVICES).
                let flag = match a.device {
                    Device::Cpu => "cpu",
                    Device::Cuda(_) => "cuda:0",
                };
                let argv = a.prepare(self.grace, flag)?;
                let dir = a.attempt_dir();
                let job_name = format!("crt-{}", a.run_id);
                let output = dir.join("slurm.out");
                let env: Vec<(String, String)> = Vec::new();
                let spec = slurm::JobSpec {
                    job_name: &job_name,
                    workdir: a.run_dir,
                    output: &output,
                    command: &argv,
                    resources: a.resources,
                    signal_grace_secs: self.slurm_grace_secs,
                    env: &env,
                };
                let script_path = dir.join("job.sbatch");
                std::fs::write(&script_path, slurm::batch_script(&spec))
                    .with_context(|| format!("cannot write {}", script_path.display()))?;
                let job_id = slurm::submit(&script_path).await?;
                self.slurm.watch(&job_id);
                Ok(Handle::Slurm { job_id, attempt_dir: dir })
            }
        }
    }

    pub async fn observe(&self, handle: &Handle) -> Observed {
        match handle {
            Handle::Local { pid, attempt_dir } => {
                if local::is_supervisor(*pid, attempt_dir) {
                    return Observed::Running { node: None };
                }
                match local::as_parent(*pid) {
                    local::AsParent::NotReaped => Observed::Running { node: None },
                    local::AsParent::Exited((code, signal)) => Observed::Exited { code, signal },
                    local::AsParent::NotOurs => Observed::Gone { why: None },
                }
            }
            Handle::Slurm { job_id, .. } => self.slurm.observe(job_id).await,
        }
    }

    /// Asks the attempt to stop: the supervisor forwards SIGTERM to the trainer (which writes a
    /// checkpoint) and kills it after the grace period. A job still waiting in Slurm's queue is
    /// cancelled.
    pub async fn stop(&self, handle: &Handle, pending: bool) -> anyhow::Result<()> {
        match handle {
            Handle::Local { pid, attempt_dir } => {
                local::signal_supervisor(*pid, attempt_dir, nix::sys::signal::SIGTERM)
            }
            Handle::Slurm { job_id, .. } => {
                let sent = if pending { slurm::cancel(job_id).await } else { slurm::signal(job_id, "TERM").await };
                // A job that ended a moment ago is no longer known to scancel: nothing left to
                // stop, and supervision records how it really ended.
                if let Err(e) = sent {
                    tracing::warn!(job_id, "stopping the Slurm job: {e:#}");
                }
                Ok(())
            }
        }
    }

    /// The last resort when a stop did not end the attempt: everything in it is killed.
    pub async fn kill(&self, handle: &Handle) -> anyhow::Result<()> {
        match handle {
            Handle::Local { pid, attempt_dir } => {
                if local::is_supervisor(*pid, attempt_dir) {
                    local::signal_group(*pid, nix::sys::signal::SIGKILL)?;
                }
                Ok(())
            }
            Handle::Slurm { job_id, .. } => slurm::cancel(job_id).await,
        }
    }

    /// How long a stop may take before [`Launcher::kill`]: the supervisor's grace plus a margin.
    pub fn kill_after(&self) -> Duration {
        self.grace + Duration::from_secs(10)
    }
}
