//! Resumable certify / predict runs as real processes on real MNIST test images: a resumed run
//! keeps the complete rows of the table, drops a partial last line, evaluates (and reports) only
//! the missing images, and its table and summary equal those of an uninterrupted run (each image's
//! noise is keyed by (seed, image index), so a row does not depend on which run computed it).
//!
//! The model is the nearest-centroid `linear` model of certify_cli.rs.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::{Device, Tensor};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::data;
use crt_trainer::events::{Event, EventLine};
use crt_trainer::models::meta::{ModelMeta, Provenance, META_FILE, WEIGHTS_FILE};
use crt_trainer::models::Model;
use serde_json::Value;

const SIGMA: f64 = 0.25;

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("CRT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/crt-data"));
    data::ensure_dataset(Dataset::Mnist, &dir).expect("MNIST available");
    dir
}

/// The nearest-centroid classifier as a linear model (as in certify_cli.rs).
fn write_model_dir(dir: &Path) {
    let train = data::load(Dataset::Mnist, &data_dir(), true).unwrap();
    let d = train.image_len();
    let mut means = vec![0f64; 10 * d];
    let mut counts = [0usize; 10];
    for i in 0..train.len() {
        let c = usize::from(train.label(i));
        counts[c] += 1;
        for (m, &x) in means[c * d..(c + 1) * d].iter_mut().zip(train.image(i)) {
            *m += f64::from(x);
        }
    }
    let mut bias = vec![0f32; 10];
    for c in 0..10 {
        let row = &mut means[c * d..(c + 1) * d];
        row.iter_mut().for_each(|m| *m /= counts[c] as f64);
        bias[c] = (-0.5 * row.iter().map(|m| m * m).sum::<f64>()) as f32;
    }
    let weight: Vec<f32> = means.iter().map(|&m| m as f32).collect();
    let dev = Device::Cpu;
    let model = Model::new(Arch::Linear, Dataset::Mnist, &dev, 0).unwrap();
    for (name, var) in model.named_vars() {
        let value = match name.as_str() {
            "fc.weight" => Tensor::from_vec(weight.clone(), (10, d), &dev).unwrap(),
            "fc.bias" => Tensor::from_vec(bias.clone(), 10, &dev).unwrap(),
            other => panic!("unexpected variable {other}"),
        };
        var.set(&value).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    model.save(&dir.join(WEIGHTS_FILE)).unwrap();
    ModelMeta {
        arch: Arch::Linear,
        dataset: Dataset::Mnist,
        normalization: model.normalization.clone(),
        provenance: Provenance::Imported,
        sigma: Some(SIGMA),
        epochs: 0,
        seed: 0,
        parameters: model.parameter_count(),
        final_metrics: Default::default(),
        wall_time_s: 0.0,
        trainer_version: env!("CARGO_PKG_VERSION").to_string(),
    }
    .write(&dir.join(META_FILE))
    .unwrap();
}

fn trainer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crt-trainer"));
    cmd.args(["--events", "jsonl", "--device", "cpu", "--threads", "1"]);
    cmd
}

fn run<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Output {
    let out = trainer().args(args).output().expect("crt-trainer runs");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn events(stdout: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| EventLine::parse(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")).event)
        .collect()
}

fn certified_indices(events: &[Event]) -> Vec<u64> {
    events.iter().filter_map(|e| if let Event::Certified(c) = e { Some(c.idx) } else { None }).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A table's rows without the header, each without its last column (`time`, which varies).
fn rows_without_time(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "the table ends with a complete line");
    text.lines()
        .skip(1)
        .map(|l| {
            let mut f: Vec<String> = l.split('\t').map(str::to_string).collect();
            f.pop();
            f
        })
        .collect()
}

fn summary(dir: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("wall_time_s");
    v
}

/// Cuts the table to its header, its first `keep` rows and half of the next line (a crash mid-write).
fn truncate_table(path: &Path, keep: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let next = lines[keep + 1];
    let cut = format!("{}{}", lines[..=keep].concat(), &next[..next.len() / 2]);
    std::fs::write(path, cut).unwrap();
}

#[test]
fn resumed_certify_does_only_the_missing_images_and_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_model_dir(&model);
    let data = data_dir();
    let common = ["--n0", "20", "--n", "500", "--batch", "128", "--skip", "1000", "--seed", "7"];
    let args = |out: &Path, max: &'static str| -> Vec<String> {
        let mut a: Vec<String> =
            ["certify", "--model", s(&model), "--data-dir", s(&data), "--out", s(out), "--max", max]
                .iter()
                .map(|x| x.to_string())
                .collect();
        a.extend(common.iter().map(|x| x.to_string()));
        a
    };

    // The uninterrupted run: 8 images.
    let full = tmp.path().join("full");
    let full_events = events(&run(&args(&full, "8")).stdout);
    assert_eq!(certified_indices(&full_events), (0..8).map(|i| i * 1000).collect::<Vec<_>>());

    // An interrupted one: 6 images done, then the table loses all but 3 rows and half a line.
    let part = tmp.path().join("part");
    run(&args(&part, "6"));
    truncate_table(&part.join("certify.tsv"), 3);
    std::fs::remove_file(part.join("summary.json")).unwrap();

    let mut resumed = args(&part, "8");
    resumed.push("--resume".into());
    let resumed_events = events(&run(&resumed).stdout);
    assert_eq!(certified_indices(&resumed_events), [3000, 4000, 5000, 6000, 7000], "only the missing images");
    let first_progress = resumed_events.iter().find_map(|e| match e {
        Event::Progress { done, total, .. } => Some((*done, *total)),
        _ => None,
    });
    assert_eq!(first_progress, Some((3, 8)), "progress starts at the rows kept");

    let table = rows_without_time(&part.join("certify.tsv"));
    let indices: Vec<&str> = table.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(indices, ["0", "1000", "2000", "3000", "4000", "5000", "6000", "7000"], "each index exactly once");
    assert_eq!(table, rows_without_time(&full.join("certify.tsv")), "same rows as the uninterrupted run");
    assert_eq!(summary(&part), summary(&full), "the summary covers the old and the new rows");
    assert_eq!(summary(&part)["images"], 8);
    let finished = |events: &[Event]| match events.last() {
        Some(Event::Finished { summary, .. }) => summary.clone(),
        other => panic!("last event: {other:?}"),
    };
    assert_eq!(finished(&resumed_events), finished(&full_events));

    // Resuming a complete run certifies nothing more and leaves the table alone.
    let before = std::fs::read_to_string(part.join("certify.tsv")).unwrap();
    let again = events(&run(&resumed).stdout);
    assert!(certified_indices(&again).is_empty());
    assert_eq!(std::fs::read_to_string(part.join("certify.tsv")).unwrap(), before);
    assert!(matches!(again.last(), Some(Event::Finished { .. })));
}

#[test]
fn a_certification_stopped_by_sigterm_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, out) = (tmp.path().join("model"), tmp.path().join("cert"));
    write_model_dir(&model);
    let data = data_dir();
    let args = [
        "certify",
        "--model",
        s(&model),
        "--data-dir",
        s(&data),
        "--out",
        s(&out),
        "--n0",
        "10",
        "--n",
        "40000",
        "--batch",
        "1000",
        "--skip",
        "300",
        "--max",
        "30",
    ];
    let mut child = trainer().args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let event = EventLine::parse(&line.unwrap()).unwrap().event;
        let certified = matches!(event, Event::Certified(_));
        seen.push(event);
        if certified {
            // SAFETY: kill(2) on our child, not yet waited for.
            assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
            break;
        }
    }
    seen.extend(lines.map(|l| EventLine::parse(&l.unwrap()).unwrap().event));
    assert!(child.wait().unwrap().success(), "a stopped certification exits cleanly");
    assert!(matches!(seen.last(), Some(Event::Stopped { .. })), "last event: {:?}", seen.last());
    let done = certified_indices(&seen);
    eprintln!("stopped after {} of 30 images", done.len());
    assert!((1..30).contains(&done.len()), "stopped after {} images", done.len());
    let table = rows_without_time(&out.join("certify.tsv"));
    assert_eq!(table.len(), done.len(), "the table ends at the last image reported");

    let resumed: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let events = events(&run(&resumed).stdout);
    let all: Vec<u64> = (0..30).map(|i| i * 300).collect();
    assert_eq!(certified_indices(&events), all[done.len()..], "the resumed run continues at the next image");
    let table = rows_without_time(&out.join("certify.tsv"));
    let indices: Vec<u64> = table.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(indices, all, "each index exactly once");
    assert_eq!(summary(&out)["images"], 30);
}

#[test]
fn resumed_predict_appends_the_missing_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_model_dir(&model);
    let data = data_dir();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let args = |out: &Path| -> Vec<String> {
        ["predict", "--model", s(&model), "--data-dir", s(&data), "--n", "300", "--skip", "700", "--max", "5"]
            .iter()
            .map(|x| x.to_string())
            .chain(["--out".to_string(), s(out).to_string()])
            .collect()
    };
    let go = |v: Vec<String>| events(&run(&v).stdout);
    go(args(&full));
    go(args(&part));
    truncate_table(&part.join("predict.tsv"), 2);
    let mut resumed = args(&part);
    resumed.push("--resume".into());
    let events = go(resumed);
    assert_eq!(certified_indices(&events), [1400, 2100, 2800]);
    let table = rows_without_time(&part.join("predict.tsv"));
    assert_eq!(table, rows_without_time(&full.join("predict.tsv")));
    assert_eq!(summary(&part), summary(&full));
}
