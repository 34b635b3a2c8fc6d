//! Every robust teacher method trains LeNet on real MNIST through the `crt-trainer train` CLI:
//! the run finishes, writes a model whose metadata records the method and its parameters, and
//! the loss it reports is finite and falls.

mod train_common;

use std::process::Command;

use crt_trainer::events::{Event, EventLine};
use crt_trainer::models::ModelMeta;

fn train(method: &str, extra: &[&str], out: &std::path::Path) -> Vec<Event> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crt-trainer"));
    cmd.env("CRT_DATA_DIR", train_common::mnist_dir()).args(["--threads", "2", "--events", "jsonl", "train"]);
    cmd.args(["--dataset", "mnist", "--arch", "lenet", "--method", method, "--sigma", "0.25"]);
    cmd.args(["--epochs", "1", "--batch-size", "16", "--train-subset", "960", "--test-subset", "100"]);
    cmd.args(["--lr", "0.05", "--seed", "1", "--out", out.to_str().unwrap()]);
    cmd.args(extra);
    let output = cmd.output().expect("crt-trainer runs");
    assert!(output.status.success(), "{method}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(|l| EventLine::parse(l).unwrap().event).collect()
}

fn losses(events: &[Event]) -> Vec<f64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Metrics { values, .. } => values.get("train/loss").copied(),
            _ => None,
        })
        .collect()
}

#[test]
fn each_robust_method_trains_lenet_from_the_cli() {
    let cases: [(&str, &[&str]); 4] = [
        ("smoothadv", &["--m", "2", "--steps", "1", "--warmup-epochs", "1"]),
        ("macer", &["--k", "4"]),
        ("consistency", &["--m", "2"]),
        ("smoothmix", &["--m", "2", "--steps", "1", "--warmup-epochs", "1"]),
    ];
    for (method, extra) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let events = train(method, extra, tmp.path());
        assert!(matches!(events.last(), Some(Event::Finished { .. })), "{method}: {:?}", events.last());
        let l = losses(&events);
        assert!(l.len() >= 2 && l.iter().all(|v| v.is_finite()), "{method}: losses {l:?}");
        assert!(l.last().unwrap() < l.first().unwrap(), "{method}: loss did not fall: {l:?}");
        let meta = ModelMeta::read(&tmp.path().join("model.json")).unwrap();
        let recorded = serde_json::to_value(&meta.provenance).unwrap();
        assert_eq!(recorded["method"]["name"], method, "{recorded}");
        assert_eq!(meta.sigma, Some(0.25));
        assert!(tmp.path().join("model.safetensors").exists());
    }
}
