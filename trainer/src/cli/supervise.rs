//! `crt-trainer supervise --attempt-dir DIR [--grace-secs G] -- PROGRAM [ARGS...]`: runs the trainer
//! (normally `crt-trainer run ...`) as a child with its stdout appended to `DIR/events.jsonl` and its
//! stderr to `DIR/stderr.log`, forwards SIGTERM / SIGINT / SIGUSR1 to it (USR1 as SIGTERM: Slurm's
//! time-limit warning), SIGKILLs it when it outlives the grace period after the first forwarded
//! signal, and records how it ended in `DIR/exit.json` (see [`crate::supervise`]).
//!
//! The supervisor survives these signals itself, forks no shell, and leaves the child in its own
//! process group (the server starts the supervisor as a group leader and signals the group).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::events::unix_now;
use crate::supervise::{ExitRecord, EVENTS_FILE, STDERR_FILE};

/// The exit code when the program cannot be started (as a shell's "command not found").
pub const SPAWN_FAILED: i32 = 127;

#[derive(Args, Debug)]
pub struct SuperviseArgs {
    /// The attempt directory (created): events.jsonl, stderr.log and exit.json go here.
    #[arg(long, value_name = "DIR")]
    pub attempt_dir: PathBuf,
    /// Seconds the program gets to exit after the first forwarded signal before it is SIGKILLed.
    #[arg(long, value_name = "G", default_value_t = 30.0)]
    pub grace_secs: f64,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}

/// Runs the supervision; returns the supervisor's exit code (the child's code, or 128 + signal).
pub fn execute(args: SuperviseArgs) -> anyhow::Result<i32> {
    let dir = &args.attempt_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("--attempt-dir {}: cannot create", dir.display()))?;
    if !(args.grace_secs >= 0.0 && args.grace_secs.is_finite()) {
        anyhow::bail!("--grace-secs must be a non-negative number of seconds (got {})", args.grace_secs);
    }
    let grace = Duration::from_secs_f64(args.grace_secs);
    // Handlers first: a signal between the spawn and their installation would kill the supervisor.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGUSR1]).context("cannot install signal handlers")?;
    let events = append(&dir.join(EVENTS_FILE))?;
    let mut stderr = append(&dir.join(STDERR_FILE))?;
    let mut record = ExitRecord {
        code: None,
        signal: None,
        signals_received: Vec::new(),
        killed_after_grace: false,
        trainer_pid: 0,
        host: hostname(),
        started_at: unix_now(),
        ended_at: 0.0,
    };

    let (program, program_args) = args.command.split_first().expect("clap requires the program");
    let spawned = Command::new(program)
        .args(program_args)
        .stdin(Stdio::null())
        .stdout(events)
        .stderr(stderr.try_clone().context("cannot duplicate the stderr.log handle")?)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = writeln!(stderr, "crt-trainer supervise: cannot start {program}: {e}");
            let _ = stderr.sync_all();
            record.code = Some(SPAWN_FAILED);
            record.ended_at = unix_now();
            write_record(&record, dir)?;
            return Ok(SPAWN_FAILED);
        }
    };
    record.trainer_pid = child.id();
    let pid = child.id() as libc::pid_t;

    let mut deadline: Option<Instant> = None;
    let status: ExitStatus = loop {
        for signal in signals.pending() {
            let (name, forward) = match signal {
                SIGINT => ("INT", SIGINT),
                SIGUSR1 => ("USR1", SIGTERM),
                _ => ("TERM", SIGTERM),
            };
            record.signals_received.push(name.to_string());
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(pid, forward) };
            deadline.get_or_insert_with(|| Instant::now() + grace);
        }
        if let Some(status) = child.try_wait().context("cannot wait for the program")? {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) && !record.killed_after_grace {
            let _ = writeln!(
                stderr,
                "crt-trainer supervise: {program} (pid {pid}) still running {}s after the signal: SIGKILL",
                args.grace_secs
            );
            let _ = child.kill();
            record.killed_after_grace = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    record.code = status.code();
    record.signal = status.signal();
    record.ended_at = unix_now();
    let _ = stderr.sync_all();
    write_record(&record, dir)?;
    Ok(match (record.code, record.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    })
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))
}

fn write_record(record: &ExitRecord, dir: &Path) -> anyhow::Result<()> {
    record.write(dir).with_context(|| format!("cannot write {}", dir.join(crate::supervise::EXIT_FILE).display()))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
