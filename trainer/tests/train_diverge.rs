//! A run whose loss becomes non-finite stops at that step, reports the value and fails with the
//! step and the remedy, keeps its last good checkpoint and resumes with a lower learning rate; and
//! a configuration file beyond a bound is refused with a message naming the field, not an abort.

mod train_common;

use std::path::Path;
use std::process::{Command, Output};

use crt_trainer::config::{max_cert_batch, Arch, Dataset};
use crt_trainer::events::{ArtifactKind, Event, EventLine};
use serde_json::{json, Value};

fn run_config(dir: &Path, name: &str, config: &Value, extra: &[&str]) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_crt-trainer"))
        .args(["--threads", "1", "--events", "jsonl", "run", "--config"])
        .arg(&path)
        .args(extra)
        .output()
        .expect("crt-trainer runs")
}

fn read_events(out: &Output) -> Vec<Event> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| EventLine::parse(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")).event)
        .collect()
}

/// A clean exit with status 1: no signal (abort), no panic.
fn assert_refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "exit status {:?}; stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Two epochs of LeNet on 64 images in batches of 8; the schedule multiplies the learning rate by
/// 1e5 at epoch 2 (0.01 -> 1000), so the first epoch trains and checkpoints, the second diverges.
fn diverging(out_dir: &Path, lr: f64, resume: bool) -> Value {
    json!({
        "kind": "train",
        "data": {"dataset": "mnist", "data_dir": train_common::mnist_dir(), "train_subset": 64, "test_subset": 32},
        "arch": "lenet",
        "method": {"name": "gaussian", "sigma": 0.25},
        "optim": {"epochs": 2, "batch_size": 8, "lr": lr,
                  "schedule": {"name": "multi_step", "milestones": [1], "gamma": 1e5}},
        "seed": 1,
        "out_dir": out_dir,
        "resume": resume
    })
}

#[test]
fn a_diverging_run_stops_at_the_step_keeps_its_checkpoint_and_resumes_with_a_lower_lr() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let out = run_config(tmp.path(), "diverge.json", &diverging(&out_dir, 0.01, false), &[]);
    let stderr = assert_refused(&out);
    let events = read_events(&out);

    // The one checkpoint is the end of epoch 1 (step 8), and it is what stays on disk.
    let checkpoints: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Artifact { kind: ArtifactKind::Checkpoint, sha256, .. } => Some(sha256),
            _ => None,
        })
        .collect();
    assert_eq!(checkpoints.len(), 1, "{events:?}");
    assert_eq!(&train_common::sha256_file(&out_dir.join("checkpoint.safetensors")), checkpoints[0]);

    // The non-finite loss is reported, at its step, before the failure, and nothing after it.
    let (bad_at, bad_step) = events
        .iter()
        .enumerate()
        .find_map(|(i, e)| match e {
            Event::Metrics { step, values, .. } if values.get("train/loss").is_some_and(|v| !v.is_finite()) => {
                Some((i, *step))
            }
            _ => None,
        })
        .expect("a non-finite train/loss is reported");
    assert!(bad_step > 8 && bad_step <= 16, "it diverges in epoch 2: step {bad_step}");
    let Event::Failed { error } = &events[bad_at + 1] else { panic!("failed must follow: {:?}", &events[bad_at..]) };
    assert_eq!(events.len(), bad_at + 2, "nothing after the failure: {events:?}");
    for part in [
        &format!("at step {bad_step} (epoch 2 of 2"),
        "training diverged",
        "lower learning rate, e.g. lr 0.001",
        "last good checkpoint (step 8) is kept",
    ] {
        assert!(error.contains(part), "{part:?} in {error}");
    }
    assert!(error.starts_with("loss became NaN") || error.starts_with("loss became Infinity"), "{error}");
    assert!(stderr.contains("training diverged"), "{stderr}");
    assert!(!out_dir.join("model.safetensors").exists(), "no model from diverged weights");

    // Resumed from the checkpoint with a learning rate 1e5 times lower, epoch 2 trains at 0.01.
    let out = run_config(tmp.path(), "resume.json", &diverging(&out_dir, 1e-7, true), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = read_events(&out);
    assert!(
        events.iter().any(|e| matches!(e, Event::Started { resumed_from_step: Some(8), .. })),
        "resumed from the checkpoint at step 8: {events:?}"
    );
    for e in &events {
        if let Event::Metrics { values, .. } = e {
            assert!(values.values().all(|v| v.is_finite()), "{values:?}");
        }
    }
    assert!(matches!(events.last(), Some(Event::Finished { .. })), "{events:?}");

    // Its model is certified only with a batch within LeNet's memory bound, checked once the
    // model directory is read (the config alone does not name the architecture).
    let over = max_cert_batch(Arch::Lenet, Dataset::Mnist) + 16;
    let certify = json!({
        "kind": "certify", "model": {"source": "dir", "path": out_dir}, "data_dir": train_common::mnist_dir(),
        "smoothing": {"n0": 10, "n": 100, "batch": over, "max": 1}, "out_dir": tmp.path().join("cert")
    });
    let stderr = assert_refused(&run_config(tmp.path(), "certify.json", &certify, &[]));
    assert!(stderr.contains("smoothing.batch"), "{stderr}");
    assert!(stderr.contains("for lenet on mnist"), "{stderr}");
}

#[test]
fn a_config_file_beyond_a_bound_is_refused_with_the_field_not_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    // The batch that made the trainer abort (SIGABRT) before the bounds.
    let certify = json!({
        "kind": "certify",
        "model": {"source": "weights", "path": tmp.path().join("w.safetensors"), "arch": "lenet", "dataset": "mnist"},
        "smoothing": {"sigma": 0.25, "batch": 1_000_000_000u64}, "out_dir": tmp.path().join("cert")
    });
    let stderr = assert_refused(&run_config(tmp.path(), "certify.json", &certify, &[]));
    assert!(stderr.contains("smoothing.batch: must be at most"), "{stderr}");
    assert!(stderr.contains("8 GiB"), "{stderr}");

    let mut train = diverging(&tmp.path().join("run"), 0.01, false);
    train["optim"]["epochs"] = json!(1001);
    let stderr = assert_refused(&run_config(tmp.path(), "train.json", &train, &[]));
    assert!(stderr.contains("optim.epochs: must be at most 1000 (got 1001)"), "{stderr}");

    // Through the `certify` command's flags, the message names the flag first.
    let out = Command::new(env!("CARGO_BIN_EXE_crt-trainer"))
        .args(["certify", "--config"])
        .arg(tmp.path().join("certify.json"))
        .output()
        .unwrap();
    let stderr = assert_refused(&out);
    assert!(stderr.contains("--batch: must be at most"), "{stderr}");
}
