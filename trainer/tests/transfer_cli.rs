//! `crt-trainer transfer` as a real process: a CRT student from a real (briefly trained) LeNet
//! teacher, the teacher's files untouched, and the noise-level and dataset checks.

mod train_common;

use std::path::Path;
use std::process::{Command, Output};

use crt_trainer::config::{Arch, Method};
use crt_trainer::events::{Event, EventLine};
use crt_trainer::models::meta::Provenance;
use crt_trainer::models::ModelMeta;
use train_common::{sha256_file, small_config};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crt-trainer"))
        .env("CRT_DATA_DIR", train_common::mnist_dir())
        .args(["--threads", "1", "--events", "jsonl"])
        .args(args)
        .output()
        .expect("crt-trainer runs")
}

/// A LeNet teacher trained with Gaussian noise sigma = 0.25 for one epoch on 256 MNIST images.
fn teacher(dir: &Path) {
    let mut cfg = small_config(Arch::Lenet, Method::Gaussian { sigma: 0.25 }, dir, 7);
    cfg.optim.epochs = 1;
    train_common::train(&cfg);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn crt_transfer_trains_a_student_and_leaves_the_teacher_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher_dir = tmp.path().join("teacher");
    teacher(&teacher_dir);
    let files = ["model.safetensors", "model.json", "checkpoint.safetensors"];
    let before: Vec<String> = files.iter().map(|f| sha256_file(&teacher_dir.join(f))).collect();

    let student_dir = tmp.path().join("student");
    let out = trainer(&[
        "transfer",
        "--teacher",
        teacher_dir.to_str().unwrap(),
        "--student-arch",
        "linear",
        "--logit-weight",
        "0.9",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--train-subset",
        "256",
        "--test-subset",
        "100",
        "--out",
        student_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let after: Vec<String> = files.iter().map(|f| sha256_file(&teacher_dir.join(f))).collect();
    assert_eq!(before, after, "the teacher's files are bit-identical after the transfer");

    let meta = ModelMeta::read(&student_dir.join("model.json")).unwrap();
    assert_eq!((meta.arch, meta.sigma, meta.epochs), (Arch::Linear, Some(0.25), 1));
    let Provenance::Transfer { teacher_arch, loss, teacher } = &meta.provenance else {
        panic!("{:?}", meta.provenance)
    };
    assert_eq!(*teacher_arch, Arch::Lenet);
    assert_eq!(*loss, crt_trainer::config::TransferLoss::Crt { logit_weight: 0.9 });
    assert_eq!(teacher, teacher_dir.to_str().unwrap());
    let noisy = meta.final_metrics["test/noisy_acc"];
    assert!((0.0..=1.0).contains(&noisy));
    let (student, _) = crt_trainer::models::Model::load_dir(&student_dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(student.parameter_count(), 7850);

    let events: Vec<Event> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| EventLine::parse(l).unwrap().event).collect();
    let Some(Event::Started { config, .. }) = events.first() else { panic!("no started event") };
    let crt_trainer::config::RunConfig::Transfer(cfg) = config.as_ref() else { panic!("not a transfer") };
    assert_eq!(cfg.sigma, Some(0.25), "the teacher's noise level is the default, recorded in the config");
    let losses: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { values, .. } => values.get("train/loss").copied(),
            _ => None,
        })
        .collect();
    assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");

    // Same teacher, KD loss into a LeNet student: runs too.
    let kd_dir = tmp.path().join("kd");
    let out = trainer(&[
        "transfer",
        "--teacher",
        teacher_dir.to_str().unwrap(),
        "--student-arch",
        "lenet",
        "--loss",
        "kd",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--train-subset",
        "128",
        "--test-subset",
        "50",
        "--out",
        kd_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kd = ModelMeta::read(&kd_dir.join("model.json")).unwrap();
    assert!(matches!(kd.provenance, Provenance::Transfer { loss: crt_trainer::config::TransferLoss::Kd { .. }, .. }));
    assert_eq!(before, files.iter().map(|f| sha256_file(&teacher_dir.join(f))).collect::<Vec<_>>());
}

#[test]
fn mismatched_sigma_dataset_and_flags_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher_dir = tmp.path().join("teacher");
    teacher(&teacher_dir);
    let t = teacher_dir.to_str().unwrap();
    let out_dir = tmp.path().join("student");
    let o = out_dir.to_str().unwrap();

    let out = trainer(&["transfer", "--teacher", t, "--student-arch", "linear", "--sigma", "0.5", "--out", o]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("0.5") && err.contains("0.25") && err.contains("--allow-sigma-mismatch"), "{err}");
    assert!(!out_dir.join("model.safetensors").exists());

    let out =
        trainer(&["transfer", "--teacher", t, "--student-arch", "linear", "--dataset", "fashion-mnist", "--out", o]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("data.dataset") && err.contains("mnist"), "{err}");

    let out = trainer(&["transfer", "--teacher", "/nonexistent/teacher", "--student-arch", "linear", "--out", o]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("--teacher") && err.contains("/nonexistent/teacher"), "{err}");

    let out = trainer(&["transfer", "--teacher", t, "--student-arch", "linear", "--logit-weight", "1.5", "--out", o]);
    assert!(stderr(&out).contains("--logit-weight"), "{}", stderr(&out));
    let out = trainer(&["transfer", "--teacher", t, "--student-arch", "linear", "--temperature", "2", "--out", o]);
    assert!(stderr(&out).contains("--temperature") && stderr(&out).contains("kd"), "{}", stderr(&out));

    let out = trainer(&["transfer", "--teacher", t, "--student-arch", "linear", "--out", t]);
    assert!(stderr(&out).contains("teacher's directory"), "{}", stderr(&out));
}

#[test]
fn sigma_resolution_rules() {
    use crt_trainer::train::transfer::resolve_sigma;
    let dir = Path::new("t");
    assert_eq!(resolve_sigma(None, Some(0.25), false, dir).unwrap(), 0.25);
    assert_eq!(resolve_sigma(Some(0.25), Some(0.25), false, dir).unwrap(), 0.25);
    assert_eq!(resolve_sigma(Some(0.5), Some(0.25), true, dir).unwrap(), 0.5);
    let err = resolve_sigma(Some(0.5), Some(0.25), false, dir).unwrap_err().to_string();
    assert!(err.starts_with("sigma:") && err.contains("allow-sigma-mismatch"), "{err}");
    assert!(resolve_sigma(None, None, true, dir).unwrap_err().to_string().contains("--sigma"));
    assert_eq!(resolve_sigma(Some(0.5), None, true, dir).unwrap(), 0.5);
}
