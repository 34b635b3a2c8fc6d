//! `crt-trainer supervise` as a real process supervising real processes: the output files, the exit
//! record, signal forwarding (TERM, INT, USR1 as TERM), the kill after the grace period, a program
//! that cannot start, and a real `crt-trainer run` on MNIST.

mod train_common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crt_trainer::config::{Arch, Method, RunConfig};
use crt_trainer::events::{ArtifactKind, Event, EventLine};
use crt_trainer::supervise::{ExitRecord, EVENTS_FILE, STDERR_FILE};

const BIN: &str = env!("CARGO_BIN_EXE_crt-trainer");

fn supervise(dir: &Path, grace: &str, program: &[&str]) -> Child {
    Command::new(BIN)
        .args(["supervise", "--attempt-dir", dir.to_str().unwrap(), "--grace-secs", grace, "--"])
        .args(program)
        .spawn()
        .expect("crt-trainer supervise starts")
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// Waits until `file` in `dir` contains `text` (the child got that far).
fn wait_for(dir: &Path, file: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read(dir, file).contains(text) {
        assert!(Instant::now() < deadline, "{file} never showed {text:?}: {:?}", read(dir, file));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a child of this test that has not been waited for.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn wait(mut child: Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the supervisor did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn record(dir: &Path) -> ExitRecord {
    ExitRecord::read(dir).unwrap().expect("exit.json written")
}

#[test]
fn output_goes_to_the_attempt_files_and_the_exit_code_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("attempts/1");
    let program = ["sh", "-c", "echo out; echo err >&2; exit 3"];
    let before = crt_trainer::events::unix_now();
    let status = wait(supervise(&dir, "30", &program));
    assert_eq!(status.code(), Some(3));
    assert_eq!(read(&dir, EVENTS_FILE), "out\n");
    assert_eq!(read(&dir, STDERR_FILE), "err\n");
    let rec = record(&dir);
    assert_eq!((rec.code, rec.signal, rec.killed_after_grace), (Some(3), None, false));
    assert!(rec.signals_received.is_empty());
    assert!(rec.trainer_pid > 0 && !rec.host.is_empty(), "{rec:?}");
    assert!(before <= rec.started_at && rec.started_at <= rec.ended_at, "{rec:?}");

    // A second attempt in the same directory appends.
    let status = wait(supervise(&dir, "30", &["sh", "-c", "echo again"]));
    assert!(status.success());
    assert_eq!(read(&dir, EVENTS_FILE), "out\nagain\n");
    assert_eq!(record(&dir).code, Some(0));
}

#[test]
fn term_is_forwarded_and_the_supervisor_outlives_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let child = supervise(&dir, "30", &["sh", "-c", "echo ready; exec sleep 30"]);
    wait_for(&dir, EVENTS_FILE, "ready");
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = wait(child);
    assert!(sent.elapsed() < Duration::from_secs(10), "sleep ended by the forwarded TERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "the supervisor exits 128 + the child's signal");
    let rec = record(&dir);
    assert_eq!((rec.code, rec.signal), (None, Some(libc::SIGTERM)));
    assert_eq!(rec.signals_received, ["TERM"]);
    assert!(!rec.killed_after_grace);
}

#[test]
fn usr1_becomes_term_and_int_stays_int() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let script = "trap 'echo got-term' TERM; trap 'echo got-int; exit 5' INT; echo ready; \
                  while :; do sleep 0.05; done";
    let child = supervise(&dir, "30", &["sh", "-c", script]);
    wait_for(&dir, EVENTS_FILE, "ready");
    signal(&child, libc::SIGUSR1);
    wait_for(&dir, EVENTS_FILE, "got-term");
    signal(&child, libc::SIGINT);
    let status = wait(child);
    assert_eq!(status.code(), Some(5));
    assert_eq!(read(&dir, EVENTS_FILE), "ready\ngot-term\ngot-int\n");
    let rec = record(&dir);
    assert_eq!(rec.signals_received, ["USR1", "INT"]);
    assert_eq!((rec.code, rec.signal, rec.killed_after_grace), (Some(5), None, false));
}

#[test]
fn a_child_that_ignores_term_is_killed_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let child = supervise(&dir, "0.5", &["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"]);
    wait_for(&dir, EVENTS_FILE, "ready");
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = wait(child);
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(10), "killed after {took:?}");
    assert_eq!(status.code(), Some(128 + libc::SIGKILL));
    let rec = record(&dir);
    assert_eq!((rec.code, rec.signal, rec.killed_after_grace), (None, Some(libc::SIGKILL), true));
    assert_eq!(rec.signals_received, ["TERM"]);
    assert!(read(&dir, STDERR_FILE).contains("SIGKILL"), "{}", read(&dir, STDERR_FILE));
}

#[test]
fn a_missing_program_exits_127_with_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let status = wait(supervise(&dir, "30", &["/nonexistent/crt-no-such-program", "x"]));
    assert_eq!(status.code(), Some(127));
    let rec = record(&dir);
    assert_eq!((rec.code, rec.signal, rec.trainer_pid), (Some(127), None, 0));
    let stderr = read(&dir, STDERR_FILE);
    assert!(stderr.contains("cannot start /nonexistent/crt-no-such-program"), "{stderr}");
}

#[test]
fn supervises_a_real_training_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("attempts/1");
    let mut cfg = train_common::small_config(Arch::Linear, Method::Standard, &tmp.path().join("out"), 1);
    cfg.optim.epochs = 1;
    let config = tmp.path().join("config.json");
    std::fs::write(&config, serde_json::to_string(&RunConfig::Train(cfg)).unwrap()).unwrap();
    let trainer = [BIN, "--threads", "1", "--events", "jsonl", "--device", "cpu", "run", "--config"];
    let status = wait(supervise(&dir, "30", &[&trainer[..], &[config.to_str().unwrap()]].concat()));
    assert!(status.success(), "{status:?}; stderr: {}", read(&dir, STDERR_FILE));

    let text = read(&dir, EVENTS_FILE);
    let events: Vec<Event> =
        text.lines().map(|l| EventLine::parse(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")).event).collect();
    assert!(matches!(events.first(), Some(Event::Started { .. })), "{:?}", events.first());
    assert!(matches!(events.last(), Some(Event::Finished { .. })), "{:?}", events.last());
    assert!(events.iter().any(|e| matches!(e, Event::Artifact { kind: ArtifactKind::Model, .. })));
    let rec = record(&dir);
    assert_eq!((rec.code, rec.signal, rec.killed_after_grace), (Some(0), None, false));
    assert!(rec.signals_received.is_empty());
}
