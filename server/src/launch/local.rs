//! The local backend: the supervisor runs as a process group on this machine.
//!
//! The supervisor is started as a group leader (its pid is the group id) and the trainer stays
//! in its group, so a last-resort SIGKILL reaches both. It outlives the server: its output goes
//! to files, not to pipes the server holds, and a restarted server finds it again by its pid and
//! the attempt directory on its command line.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;

use crate::devices::Device;

/// The file name of the config the server writes into each run directory.
pub const CONFIG_FILE: &str = "run-config.json";

/// Starts `argv` (the supervisor) in a new process group, detached from the server: no pipes,
/// its own diagnostics in `<attempt_dir>/supervisor.log`. A task reaps it when it exits, while
/// this server lives; after a restart nobody needs to (it is no longer our child).
pub fn spawn(argv: &[String], run_dir: &Path, attempt_dir: &Path, device: Device) -> anyhow::Result<i32> {
    let log_path = attempt_dir.join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(run_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    if let Device::Cuda(_) = device {
        // CUDA numbers GPUs fastest first by default; nvidia-smi, whose index the server hands
        // out, numbers them by PCI bus. This makes cuda:N the GPU nvidia-smi calls N.
        command.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    }
    let mut child = command.spawn().with_context(|| {
        let flag = match device {
            Device::Cuda(_) => "--trainer-cuda-bin (CRT_TRAINER_CUDA_BIN) or --trainer-bin",
            Device::Cpu => "--trainer-bin or CRT_TRAINER_BIN",
        };
        format!("cannot start the trainer {} (set {flag})", argv[0])
    })?;
    let pid = child.id().context("a just-spawned child has a pid")? as i32;
    children().lock().expect("children lock").insert(pid, None);
    tokio::spawn(async move {
        if let Ok(status) = child.wait().await {
            use std::os::unix::process::ExitStatusExt;
            // Only while someone may still ask (see `forget`).
            if let Some(slot) = children().lock().expect("children lock").get_mut(&pid) {
                *slot = Some((status.code(), status.signal()));
            }
        }
    });
    Ok(pid)
}

/// A wait status: (exit code, signal).
pub type WaitStatus = (Option<i32>, Option<i32>);

/// Supervisors this server started: None while not reaped, then their wait status.
fn children() -> &'static std::sync::Mutex<std::collections::HashMap<i32, Option<WaitStatus>>> {
    static CHILDREN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<i32, Option<WaitStatus>>>> =
        std::sync::OnceLock::new();
    CHILDREN.get_or_init(Default::default)
}

/// What this server knows of a supervisor as its parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AsParent {
    /// Not started by this server (e.g. found again after a restart).
    NotOurs,
    /// Started here and not reaped yet (it may have exited a moment ago).
    NotReaped,
    /// Started here and reaped, with its wait status (taken once).
    Exited(WaitStatus),
}

/// The attempt's ending is recorded: nobody will ask about this supervisor again.
pub fn forget(pid: i32) {
    children().lock().expect("children lock").remove(&pid);
}

pub fn as_parent(pid: i32) -> AsParent {
    let mut map = children().lock().expect("children lock");
    match map.get(&pid) {
        None => AsParent::NotOurs,
        Some(None) => AsParent::NotReaped,
        Some(Some(status)) => {
            let status = *status;
            map.remove(&pid);
            AsParent::Exited(status)
        }
    }
}

/// Whether `pid` is a live supervisor of this attempt (a group leader whose command line names
/// the attempt directory), not an unrelated process that reused the pid.
pub fn is_supervisor(pid: i32, attempt_dir: &Path) -> bool {
    is_alive(pid)
        && nix::unistd::getpgid(Some(Pid::from_raw(pid))).map(|g| g.as_raw()) == Ok(pid)
        && cmdline(pid).iter().any(|arg| Path::new(arg) == attempt_dir)
}

/// Sends `sig` to the supervisor only (it forwards it to the trainer), if it is still this one.
pub fn signal_supervisor(pid: i32, attempt_dir: &Path, sig: Signal) -> anyhow::Result<()> {
    if !is_supervisor(pid, attempt_dir) {
        return Ok(());
    }
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot send {sig} to the supervisor {pid}: {e}")),
    }
}

fn cmdline(pid: i32) -> Vec<PathBuf> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| PathBuf::from(OsStr::from_bytes(a))).collect()
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

/// Process groups started for any run under `runs_dir`: live group leaders whose command line
/// names a path under it, as pids (= group ids). Only leaders count: a process the leader
/// forks carries the leader's command line until it execs, and must not be mistaken for a
/// second one (that race once made a test flaky).
pub fn groups_under(runs_dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let leader = nix::unistd::getpgid(Some(Pid::from_raw(pid))).map(|g| g.as_raw()) == Ok(pid);
        if leader && cmdline(pid).iter().any(|arg| arg.starts_with(runs_dir)) && is_alive(pid) {
            found.push(pid);
        }
    }
    found.sort_unstable();
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

/// SIGTERM to the group, up to `grace` for `pid` to exit, then SIGKILL. For a group that is not
/// our child (left by a previous server), so it is polled rather than awaited.
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
        assert!(!is_supervisor(pid, dir.path()), "a shell is not this attempt's supervisor");
        assert!(groups_under(dir.path()).is_empty());
        let start = Instant::now();
        terminate_orphan(pid, pid, Duration::from_millis(300)).await.unwrap();
        let status = child.wait().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    #[tokio::test]
    async fn finds_groups_by_their_attempt_dir_not_their_forks() {
        let runs = tempfile::tempdir().unwrap();
        let attempt = runs.path().join("7/attempts/1");
        // A group leader whose arguments name the attempt directory (here a shell), which keeps
        // forking children: each fork carries the shell's command line until it execs, and
        // must not count as a second group.
        let mut child = Command::new("sh")
            .args(["-c", "while true; do sleep 0.01; done", "sh"])
            .arg(&attempt)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap() as i32;
        // Until the child has exec'd the shell, its command line is still this test's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while groups_under(runs.path()).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Many looks while forks come and go: never more than the one leader.
        for _ in 0..50 {
            assert_eq!(groups_under(runs.path()), vec![pid]);
        }
        assert!(is_supervisor(pid, &attempt));
        assert!(!is_supervisor(pid, &runs.path().join("8/attempts/1")), "another run's attempt");
        let other = tempfile::tempdir().unwrap();
        assert!(groups_under(other.path()).is_empty(), "another data directory's groups are not ours");
        terminate_orphan(pid, pid, Duration::from_secs(5)).await.unwrap();
        child.wait().await.unwrap();
        assert!(groups_under(runs.path()).is_empty());
    }
}
