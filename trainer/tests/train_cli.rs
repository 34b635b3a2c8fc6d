//! The `crt-trainer train` command as a real process: JSON-lines events, SIGTERM handling with a
//! checkpoint and `--resume`, and clear errors for bad flags and configuration files.

mod train_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crt_trainer::events::{Event, EventLine};

fn trainer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crt-trainer"));
    cmd.env("CRT_DATA_DIR", train_common::mnist_dir()).args(["--threads", "1", "--events", "jsonl"]);
    cmd
}

fn events(stdout: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| EventLine::parse(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")).event)
        .collect()
}

fn run(args: &[&str]) -> Output {
    trainer().args(args).output().expect("crt-trainer runs")
}

/// Runs a command that must fail; returns its stderr.
fn failure(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sigterm_writes_a_checkpoint_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let out = out_dir.to_str().unwrap();
    // 1600 images in batches of 16: 100 LeNet steps, long enough to be interrupted.
    let args = [
        "train",
        "--dataset",
        "mnist",
        "--arch",
        "lenet",
        "--sigma",
        "0.25",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--train-subset",
        "1600",
        "--test-subset",
        "200",
        "--seed",
        "3",
        "--out",
        out,
    ];
    let mut child = trainer().args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Wait for a few steps, then ask it to stop as a scheduler would.
    for line in lines.by_ref() {
        let event = EventLine::parse(&line.unwrap()).unwrap().event;
        let progressed = matches!(event, Event::Progress { done, .. } if done >= 5);
        seen.push(event);
        if progressed {
            let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            assert!(status.success());
            break;
        }
    }
    seen.extend(lines.map(|l| EventLine::parse(&l.unwrap()).unwrap().event));
    let status = child.wait().unwrap();
    assert!(status.success(), "a stopped run exits 0, got {status:?}");
    let Some(Event::Stopped { checkpoint: Some(ck), .. }) = seen.last() else {
        panic!("last event: {:?}", seen.last())
    };
    assert!(Path::new(ck).is_file(), "checkpoint {ck} exists");
    assert!(seen
        .iter()
        .any(|e| matches!(e, Event::Artifact { kind: crt_trainer::events::ArtifactKind::Checkpoint, .. })));
    assert!(!out_dir.join("model.safetensors").exists(), "no final model after a stop");
    let stopped_at = crt_trainer::train::checkpoint::peek_step(&out_dir).unwrap();
    assert!((5..100).contains(&stopped_at), "stopped mid-run at step {stopped_at}");

    let mut resumed_args = args.to_vec();
    resumed_args.push("--resume");
    let out = run(&resumed_args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = events(&out.stdout);
    let Some(Event::Started { resumed_from_step, .. }) = events.first() else {
        panic!("first event: {:?}", events.first())
    };
    assert_eq!(*resumed_from_step, Some(stopped_at));
    let first_progress = events.iter().find_map(|e| match e {
        Event::Progress { done, .. } => Some(*done),
        _ => None,
    });
    assert_eq!(first_progress, Some(stopped_at + 1), "the resumed run continues at the next step");
    assert!(matches!(events.last(), Some(Event::Finished { .. })), "{:?}", events.last());
    assert!(out_dir.join("model.safetensors").is_file() && out_dir.join("model.json").is_file());
}

#[test]
fn events_report_metrics_schedule_and_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let output = run(&[
        "train",
        "--dataset",
        "mnist",
        "--arch",
        "linear",
        "--method",
        "standard",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--train-subset",
        "500",
        "--test-subset",
        "100",
        "--lr",
        "0.02",
        "--lr-step",
        "1",
        "--gamma",
        "0.5",
        "--out",
        out,
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let events = events(&output.stdout);
    let lrs: Vec<(f64, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { epoch: Some(ep), values, .. } => values.get("lr").map(|lr| (*ep, *lr)),
            _ => None,
        })
        .collect();
    assert!(!lrs.is_empty());
    for (epoch, lr) in &lrs {
        let want = if *epoch <= 1.0 { 0.02 } else { 0.01 };
        assert!((lr - want).abs() < 1e-12, "lr {lr} at epoch {epoch}");
    }
    assert!(lrs.iter().any(|(e, _)| *e > 1.0), "metrics during the second epoch");
    let test_accs: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { values, .. } => values.get("test/acc").copied(),
            _ => None,
        })
        .collect();
    assert_eq!(test_accs.len(), 2, "one test evaluation per epoch");
    assert!(test_accs.iter().all(|a| (0.0..=1.0).contains(a)));
    let kinds: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Artifact { kind, .. } => Some(kind.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["checkpoint", "checkpoint", "model", "metadata"]);
    let Some(Event::Progress { done, total, .. }) = events.iter().rev().find(|e| matches!(e, Event::Progress { .. }))
    else {
        panic!("no progress")
    };
    assert_eq!((*done, *total), (20, 20));
    let meta = crt_trainer::models::ModelMeta::read(&tmp.path().join("model.json")).unwrap();
    assert_eq!((meta.epochs, meta.sigma, meta.parameters), (2, None, 7850));
}

#[test]
fn bad_flags_name_the_flag() {
    let base = ["train", "--dataset", "mnist", "--arch", "lenet", "--out", "/nonexistent/never-written"];
    let with = |extra: &[&str]| -> String {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        failure(&args)
    };
    assert!(with(&["--batch-size", "0"]).contains("--batch-size"), "{}", with(&["--batch-size", "0"]));
    assert!(with(&["--momentum", "1.5"]).contains("--momentum"));
    assert!(with(&["--method", "gaussian"]).contains("--sigma is required"));
    let unknown = with(&["--method", "nope", "--sigma", "0.25"]);
    assert!(unknown.contains("--method") && unknown.contains("nope") && unknown.contains("smoothadv"), "{unknown}");
    let k = with(&["--sigma", "0.25", "--k", "3"]);
    assert!(k.contains("--k") && k.contains("gaussian"), "{k}");
    assert!(with(&["--sigma=-1"]).contains("--sigma"));
    assert!(with(&["--method", "standard", "--sigma", "0.25"]).contains("--sigma"));
    assert!(with(&["--gamma", "0"]).contains("--gamma"));
    assert!(with(&["--train-subset", "0"]).contains("--train-subset"));
    let arch = failure(&["train", "--dataset", "mnist"]);
    assert!(arch.contains("--arch is required"), "{arch}");
    let dataset = failure(&["train", "--dataset", "imagenet", "--arch", "lenet"]);
    assert!(dataset.contains("imagenet") && dataset.contains("--dataset"), "{dataset}");
}

#[test]
fn bad_config_files_name_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let unknown =
        write("a.json", r#"{"data":{"dataset":"mnist"},"arch":"lenet","method":{"name":"standard"},"bogus":1}"#);
    let err = failure(&["train", "--config", &unknown]);
    assert!(err.contains("bogus") && err.contains("a.json"), "{err}");
    let momentum = write(
        "b.json",
        r#"{"data":{"dataset":"mnist"},"arch":"lenet","method":{"name":"standard"},"optim":{"momentum":1.5}}"#,
    );
    let err = failure(&["train", "--config", &momentum]);
    assert!(err.contains("optim.momentum"), "{err}");
    let kind = write("c.json", r#"{"kind":"certify","model":{"source":"dir","path":"x"}}"#);
    let err = failure(&["train", "--config", &kind]);
    assert!(err.contains("certify") && err.contains("train"), "{err}");
    let missing = failure(&["train", "--config", "/nonexistent/run.json"]);
    assert!(missing.contains("/nonexistent/run.json"), "{missing}");
    // The same checks through `run --config`, which the server uses.
    let err = failure(&[
        "run",
        "--config",
        &write(
            "d.json",
            r#"{"kind":"train","data":{"dataset":"mnist"},"arch":"lenet","method":{"name":"gaussian","sigma":0}}"#,
        ),
    ]);
    assert!(err.contains("method.sigma"), "{err}");
}
