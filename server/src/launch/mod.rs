//! Starting and signalling trainer processes on this machine.
//!
//! Each trainer runs in its own process group (its pid is the group id), so a stop or kill
//! reaches anything it started too. A remote launcher (Slurm) would sit beside this one:
//! the rest of the server only sees the event stream and the exit status.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::devices::Device;

/// The file name of the config the server writes into each run directory.
pub const CONFIG_FILE: &str = "run-config.json";

/// Writes `config` to `<run_dir>/run-config.json` and starts
/// `crt-trainer run --config <that> --events jsonl --device <device>` in a new process group.
pub fn spawn_trainer(
    trainer_bin: &Path,
    run_dir: &Path,
    config: &serde_json::Value,
    device: Device,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let config_path = config_path(run_dir);
    let text = serde_json::to_string_pretty(config)?;
    std::fs::write(&config_path, text).with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut command = Command::new(trainer_bin);
    command
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .args(["--events", "jsonl"])
        .arg("--device")
        .arg(device.to_string())
        .current_dir(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Device::Cuda(_) = device {
        // CUDA numbers GPUs fastest first by default; nvidia-smi, whose index the server hands
        // out, numbers them by PCI bus. This makes cuda:N the GPU nvidia-smi calls N.
        command.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    }
    command.spawn().with_context(|| {
        let flag = match device {
            Device::Cuda(_) => "--trainer-cuda-bin (CRT_TRAINER_CUDA_BIN) or --trainer-bin",
            Device::Cpu => "--trainer-bin or CRT_TRAINER_BIN",
        };
        format!("cannot start the trainer {} (set {flag})", trainer_bin.display())
    })
}

pub fn config_path(run_dir: &Path) -> PathBuf {
    run_dir.join(CONFIG_FILE)
}

/// Sends `sig` to every process in the group; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: Signal) -> anyhow::Result<()> {
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot send {sig} to process group {pgid}: {e}")),
    }
}

/// Whether `pid` is a live (not zombie) process in group `pgid` running the trainer with
/// this run's config file — that is, a trainer a previous server started for this run,
/// and not an unrelated process that reused the pid.
pub fn is_run_trainer(pid: i32, pgid: i32, run_dir: &Path) -> bool {
    if !is_alive(pid) {
        return false;
    }
    if nix::unistd::getpgid(Some(Pid::from_raw(pid))).map(|g| g.as_raw()) != Ok(pgid) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let wanted = config_path(run_dir);
    cmdline.split(|&b| b == 0).any(|arg| Path::new(OsStr::from_bytes(arg)) == wanted)
}

/// Live trainer processes started for any run under `runs_dir` (found by the config path on
/// their command line), as (pid, pgid). At start-up, before this server has started any, these
/// are leftovers of a previous server.
pub fn trainers_under(runs_dir: &Path) -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let ours = cmdline.split(|&b| b == 0).any(|arg| {
            let arg = Path::new(OsStr::from_bytes(arg));
            arg.starts_with(runs_dir) && arg.file_name() == Some(OsStr::new(CONFIG_FILE))
        });
        if ours && is_alive(pid) {
            if let Ok(pgid) = nix::unistd::getpgid(Some(Pid::from_raw(pid))) {
                found.push((pid, pgid.as_raw()));
            }
        }
    }
    found
}

/// Alive and not a zombie (an orphaned trainer's zombie may linger if nobody reaps it).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// SIGTERM to the group, up to `grace` for `pid` to exit, then SIGKILL. For a trainer that
/// is not our child (left by a previous server), so it is polled rather than awaited.
pub async fn terminate_orphan(pid: i32, pgid: i32, grace: Duration) -> anyhow::Result<()> {
    signal_group(pgid, Signal::SIGTERM)?;
    let deadline = Instant::now() + grace;
    while is_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal_group(pgid, Signal::SIGKILL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_real_processes() {
        assert!(is_alive(std::process::id() as i32));
        let mut child = std::process::Command::new("sleep").arg("0").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!is_alive(pid));
    }

    #[tokio::test]
    async fn terminates_a_process_group() {
        let dir = tempfile::tempdir().unwrap();
        // A shell that ignores SIGTERM, so only the SIGKILL after the grace period ends it.
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; sleep 30 & wait"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap() as i32;
        // Signal only once the trap is set.
        let mut ready = String::new();
        use tokio::io::AsyncBufReadExt;
        tokio::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).await.unwrap();
        assert_eq!(ready.trim(), "ready");
        assert!(!is_run_trainer(pid, pid, dir.path()), "a shell is not this run's trainer");
        assert!(trainers_under(dir.path()).is_empty());
        let start = Instant::now();
        terminate_orphan(pid, pid, Duration::from_millis(300)).await.unwrap();
        let status = child.wait().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[tokio::test]
    async fn finds_trainers_by_their_config_path() {
        let runs = tempfile::tempdir().unwrap();
        let config = config_path(&runs.path().join("7"));
        // Any process whose arguments name a run's config file counts (here a shell).
        // A compound command, so that the shell cannot exec `sleep` in its own place.
        let mut child =
            Command::new("sh").args(["-c", "sleep 30; true", "sh"]).arg(&config).process_group(0).spawn().unwrap();
        let pid = child.id().unwrap() as i32;
        // Until the child has exec'd the shell, its command line is still this test's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while trainers_under(runs.path()).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(trainers_under(runs.path()), vec![(pid, pid)]);
        assert!(is_run_trainer(pid, pid, &runs.path().join("7")));
        assert!(!is_run_trainer(pid, pid, &runs.path().join("8")), "another run's trainer");
        let other = tempfile::tempdir().unwrap();
        assert!(trainers_under(other.path()).is_empty(), "another data directory's trainers are not ours");
        terminate_orphan(pid, pid, Duration::from_secs(5)).await.unwrap();
        child.wait().await.unwrap();
        assert!(trainers_under(runs.path()).is_empty());
    }
}
