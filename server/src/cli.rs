//! Command-line flags and the settings resolved from them (absolute paths, database URL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::auth::Scope;
use crate::devices::Device;
use crate::launch::slurm::SlurmResources;
use crate::launch::BackendKind;

/// CRT Lab server: experiments, runs, trainer supervision and live streaming.
#[derive(Debug, Clone, Parser)]
#[command(name = "crt-server", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to listen on; port 0 picks a free port (the bound address is printed on stdout).
    /// Any address but loopback requires API tokens (`crt-server token create`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Require an API token (or a browser login) even on a loopback address.
    #[arg(long)]
    pub require_auth: bool,
    /// Where the SQLite database, run outputs and datasets live.
    #[arg(long, global = true, default_value = "./crt-data")]
    pub data_dir: PathBuf,
    /// Where datasets are cached (default: <data-dir>/datasets).
    #[arg(long, env = "CRT_DATASETS_DIR")]
    pub datasets_dir: Option<PathBuf>,
    /// Use this database instead of the embedded SQLite file (postgres://… or sqlite:…).
    #[arg(long, global = true, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// How many trainer processes may run at once (1 suits a CPU machine).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_runs: u32,
    /// The crt-trainer executable (default: next to this executable).
    #[arg(long, env = "CRT_TRAINER_BIN")]
    pub trainer_bin: Option<PathBuf>,
    /// A CUDA build of crt-trainer for GPU runs (CPU runs keep --trainer-bin: a CUDA build cannot
    /// start where the driver library is missing). Default: --trainer-bin for every run.
    #[arg(long, env = "CRT_TRAINER_CUDA_BIN")]
    pub trainer_cuda_bin: Option<PathBuf>,
    /// The nvidia-smi that lists the GPUs; when it is absent the server has no GPUs.
    #[arg(long, env = "CRT_NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: PathBuf,
    /// Seconds a stopping trainer gets to write its checkpoint before SIGKILL.
    #[arg(long, default_value_t = 30)]
    pub stop_grace_secs: u64,
    /// Where runs execute unless a run names its own backend: `local` (process groups on this
    /// machine) or `slurm` (batch jobs through sbatch; the runs directory must be shared with
    /// the nodes).
    #[arg(long, env = "CRT_BACKEND", value_enum, default_value = "local")]
    pub backend: BackendKind,
    /// Where run directories live (default: <data-dir>/runs). With Slurm, a path the compute
    /// nodes see at the same place (a shared filesystem).
    #[arg(long, env = "CRT_RUNS_DIR")]
    pub runs_dir: Option<PathBuf>,
    /// What SIGINT/SIGTERM to the server does to running trainers: `detach` (they go on, and a
    /// restarted server catches up with them) or `stop` (they are stopped, resumable, and the
    /// server waits for them: for a laptop).
    #[arg(long, value_enum, default_value = "detach")]
    pub on_exit: OnExit,
    /// Default Slurm partition for runs that name none.
    #[arg(long, env = "CRT_SLURM_PARTITION")]
    pub slurm_partition: Option<String>,
    /// Default CPUs per Slurm job (--cpus-per-task).
    #[arg(long)]
    pub slurm_cpus: Option<u32>,
    /// Default memory per Slurm job, in MB (--mem).
    #[arg(long)]
    pub slurm_mem_mb: Option<u64>,
    /// Default Slurm time limit in minutes (--time).
    #[arg(long)]
    pub slurm_time_min: Option<u32>,
    /// Extra sbatch argument for every Slurm job (repeatable), e.g. --slurm-extra-arg=--account=lab.
    #[arg(long = "slurm-extra-arg", allow_hyphen_values = true)]
    pub slurm_extra_args: Vec<String>,
    /// Static files served under /static.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../static"))]
    pub static_dir: PathBuf,
}

/// What to do instead of serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// API tokens: create (the secret is printed once), list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (alone, on stdout); only its hash is stored.
    Create {
        /// read: see everything; write: also launch, stop and delete; admin: also manage tokens.
        #[arg(long, value_enum)]
        scope: Scope,
        /// A name to recognize it by in `token list` (e.g. who or what uses it).
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id: it stops working at once, and its browser sessions end.
    Revoke { id: i64 },
}

impl Cli {
    /// `--database-url`, or the embedded SQLite file in `--data-dir` (created if needed).
    pub fn resolved_database_url(&self) -> anyhow::Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => {
                let data_dir = make_dir(&self.data_dir, "--data-dir")?;
                Ok(format!("sqlite://{}?mode=rwc", data_dir.join("crt.db").display()))
            }
        }
    }
}

/// Everything the server needs, with paths made absolute and directories created.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    /// Tokens are required: `--require-auth`, or any bind address but loopback.
    pub require_auth: bool,
    pub data_dir: PathBuf,
    pub runs_dir: PathBuf,
    pub datasets_dir: PathBuf,
    pub database_url: String,
    pub max_concurrent_runs: usize,
    pub trainer_bin: PathBuf,
    pub trainer_cuda_bin: Option<PathBuf>,
    pub nvidia_smi: PathBuf,
    pub stop_grace: Duration,
    pub static_dir: PathBuf,
    pub backend: BackendKind,
    pub on_exit: OnExit,
    /// Slurm resources for runs that give none (field by field).
    pub slurm_defaults: SlurmResources,
}

/// What the server does to running trainers when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    Detach,
    Stop,
}

impl Settings {
    pub fn from_cli(cli: Cli) -> anyhow::Result<Settings> {
        let data_dir = make_dir(&cli.data_dir, "--data-dir")?;
        let runs_dir = match &cli.runs_dir {
            Some(dir) => make_dir(dir, "--runs-dir")?,
            None => make_dir(&data_dir.join("runs"), "<data-dir>/runs")?,
        };
        check_writable(&runs_dir)?;
        let slurm_defaults = SlurmResources {
            partition: cli.slurm_partition.clone(),
            cpus: cli.slurm_cpus,
            mem_mb: cli.slurm_mem_mb,
            time_limit_min: cli.slurm_time_min,
            gpus: None,
            extra_args: cli.slurm_extra_args.clone(),
        };
        slurm_defaults.validate().map_err(|(field, msg)| anyhow::anyhow!("--slurm-{field}: {msg}"))?;
        let datasets_dir =
            make_dir(&cli.datasets_dir.clone().unwrap_or_else(|| data_dir.join("datasets")), "--datasets-dir")?;
        let database_url = cli.resolved_database_url()?;
        let trainer_bin = match cli.trainer_bin {
            Some(p) => p,
            None => default_trainer_bin()?,
        };
        Ok(Settings {
            bind: cli.bind,
            require_auth: cli.require_auth || !cli.bind.ip().is_loopback(),
            data_dir,
            runs_dir,
            datasets_dir,
            database_url,
            max_concurrent_runs: cli.max_concurrent_runs as usize,
            trainer_bin,
            trainer_cuda_bin: cli.trainer_cuda_bin,
            nvidia_smi: cli.nvidia_smi,
            stop_grace: Duration::from_secs(cli.stop_grace_secs),
            static_dir: cli.static_dir,
            backend: cli.backend,
            on_exit: cli.on_exit,
            slurm_defaults,
        })
    }

    /// The trainer executable for a run on `device`.
    pub fn trainer_for(&self, device: Device) -> &Path {
        match (device, &self.trainer_cuda_bin) {
            (Device::Cuda(_), Some(cuda)) => cuda,
            _ => &self.trainer_bin,
        }
    }

    /// A run's output directory.
    pub fn run_dir(&self, run_id: i64) -> PathBuf {
        self.runs_dir.join(run_id.to_string())
    }
}

/// The runs directory must take new files (with Slurm, from the nodes too: only this side can
/// be checked here).
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    std::fs::write(&probe, b"ok").with_context(|| format!("the runs directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn make_dir(path: &Path, flag: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("{flag}: cannot create directory {}", path.display()))?;
    path.canonicalize().with_context(|| format!("{flag}: cannot resolve {}", path.display()))
}

/// `crt-trainer` in the same directory as this executable (cargo puts both bins in one target dir).
fn default_trainer_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the crt-server executable")?;
    Ok(exe.with_file_name("crt-trainer"))
}
