//! `crt-trainer certify` / `predict` as real processes on real MNIST test images: the tables, the
//! summary, the events, `--weights` and `--config`, SIGTERM, and clear errors for bad flags.
//!
//! The model is a nearest-centroid classifier written as a `linear` model (fc.weight rows are the
//! MNIST training class means m_c, fc.bias = -|m_c|^2 / 2), saved through the models module: cheap
//! to build, and accurate enough that the smoothed classifier is mostly right.
//! Data: `CRT_DATA_DIR`, default `<repo>/target/crt-data`; MNIST is fetched there on first use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::{Device, Tensor};
use crt_trainer::certify::clopper_pearson::{lower_bound, raw_radius};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::data;
use crt_trainer::events::{ArtifactKind, Event, EventLine};
use crt_trainer::models::meta::{ModelMeta, Provenance, META_FILE, WEIGHTS_FILE};
use crt_trainer::models::Model;
use serde_json::Value;

const SIGMA: f64 = 0.25;
const HEADER: &str = "idx\tlabel\tpredict\tradius\tcorrect\tcount_a\tp_lower\ttime";

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("CRT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/crt-data"));
    data::ensure_dataset(Dataset::Mnist, &dir).expect("MNIST available");
    dir
}

/// Writes the nearest-centroid model (model.safetensors + model.json, trained sigma = `sigma`).
fn write_model_dir(dir: &Path, sigma: Option<f64>) {
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
        sigma,
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
    cmd.args(["--events", "jsonl", "--device", "cpu"]);
    cmd
}

fn run(args: &[&str]) -> Output {
    trainer().args(args).output().expect("crt-trainer runs")
}

fn events(stdout: &[u8]) -> Vec<Event> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| EventLine::parse(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")).event)
        .collect()
}

/// Runs a command that must fail; returns its stderr.
fn failure(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// certify.tsv's rows, without the header, split into fields.
fn rows(out: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(out.join("certify.tsv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HEADER));
    lines.map(|l| l.split('\t').map(str::to_string).collect()).collect()
}

#[test]
fn certify_writes_tables_summary_and_events() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, out) = (tmp.path().join("model"), tmp.path().join("cert"));
    write_model_dir(&model, Some(SIGMA));
    let data = data_dir();
    let common = ["--n0", "20", "--n", "500", "--batch", "128", "--skip", "1000", "--max", "6"];
    let mut args = vec!["certify", "--model", s(&model), "--data-dir", s(&data), "--out", s(&out)];
    args.extend(common);
    let output = run(&args);
    assert!(output.status.success(), "certify failed: {}", String::from_utf8_lossy(&output.stderr));

    // certify.tsv: every 1000th test image from 0, labels from the test split, consistent columns.
    let test = data::load(Dataset::Mnist, &data, false).unwrap();
    let table = rows(&out);
    assert_eq!(table.len(), 6);
    let mut acr = 0.0;
    for (i, row) in table.iter().enumerate() {
        assert_eq!(row.len(), 8, "{row:?}");
        let idx: usize = row[0].parse().unwrap();
        let label: i64 = row[1].parse().unwrap();
        let predict: i64 = row[2].parse().unwrap();
        let radius: f64 = row[3].parse().unwrap();
        let correct = row[4] == "1";
        let count_a: u64 = row[5].parse().unwrap();
        let p_lower: f64 = row[6].parse().unwrap();
        assert_eq!(idx, 1000 * i);
        assert_eq!(label, i64::from(test.label(idx)));
        assert_eq!(correct, predict == label, "{row:?}");
        assert!(count_a <= 500);
        assert_eq!(p_lower, lower_bound(count_a, 500, 0.001), "{row:?}");
        if predict == -1 {
            assert_eq!(radius, 0.0);
        } else {
            assert!((0..10).contains(&predict));
            assert!((radius - raw_radius(SIGMA, p_lower)).abs() < 1e-12 && radius >= 0.0, "{row:?}");
        }
        acr += if correct { radius } else { 0.0 } / 6.0;
    }

    // summary.json: sigma from model.json, the parameters, the curve up to the largest radius.
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["images"], 6);
    assert_eq!((summary["n0"].as_u64(), summary["n"].as_u64()), (Some(20), Some(500)));
    assert_eq!((summary["sigma"].as_f64(), summary["alpha"].as_f64()), (Some(SIGMA), Some(0.001)));
    // max radius = 0.25 PhiInv(0.001^(1/500)) = 0.55: curve points 0, 0.25, 0.5.
    let curve = summary["certified_accuracy"].as_array().unwrap();
    let radii: Vec<f64> = curve.iter().map(|p| p["radius"].as_f64().unwrap()).collect();
    assert_eq!(radii, [0.0, 0.25, 0.5]);
    assert!((summary["acr"].as_f64().unwrap() - acr).abs() < 1e-9);
    let clean = summary["clean_acc"].as_f64().unwrap();
    assert_eq!(clean, curve[0]["accuracy"].as_f64().unwrap());
    assert!(clean >= 0.5, "the smoothed nearest-centroid classifier got {clean} of 6 images");
    assert!(summary["wall_time_s"].as_f64().unwrap() > 0.0);

    // Events: one certificate per image, progress to 6/6, both artifacts, the final metrics.
    let events = events(&output.stdout);
    let certified: Vec<_> =
        events.iter().filter_map(|e| if let Event::Certified(c) = e { Some(c) } else { None }).collect();
    assert_eq!(certified.iter().map(|c| c.idx).collect::<Vec<_>>(), [0, 1000, 2000, 3000, 4000, 5000]);
    assert!(events.iter().any(|e| matches!(e, Event::Progress { done: 6, total: 6, .. })));
    let artifacts: Vec<_> = events
        .iter()
        .filter_map(|e| if let Event::Artifact { path, kind, .. } = e { Some((path.clone(), *kind)) } else { None })
        .collect();
    assert!(
        artifacts.contains(&(s(&out.join("certify.tsv")).to_string(), ArtifactKind::Certificates)),
        "{artifacts:?}"
    );
    assert!(artifacts.contains(&(s(&out.join("summary.json")).to_string(), ArtifactKind::Summary)), "{artifacts:?}");
    let Some(Event::Finished { summary: metrics, .. }) = events.last() else {
        panic!("last event: {:?}", events.last())
    };
    for key in ["certified_acc@0", "certified_acc@0.25", "certified_acc@0.5", "acr", "clean_acc"] {
        assert!(metrics.contains_key(key), "finished lacks {key}: {metrics:?}");
    }
    assert_eq!(metrics["clean_acc"], clean);

    // The same weights as bare --weights, through a --config file with a flag on top: same rows.
    let weights_out = tmp.path().join("weights");
    let config = serde_json::json!({
        "model": {"source": "weights", "path": model.join(WEIGHTS_FILE), "arch": "linear", "dataset": "mnist"},
        "data_dir": data,
        "smoothing": {"sigma": SIGMA, "n0": 20, "n": 500, "batch": 128, "skip": 1000, "max": 6},
        "out_dir": weights_out,
    });
    let config_path = tmp.path().join("certify.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let output = run(&["certify", "--config", s(&config_path), "--max", "2"]);
    assert!(output.status.success(), "certify --config failed: {}", String::from_utf8_lossy(&output.stderr));
    let without_time =
        |rows: Vec<Vec<String>>| rows.into_iter().map(|mut r| r.drain(..7).collect::<Vec<_>>()).collect::<Vec<_>>();
    assert_eq!(without_time(rows(&weights_out)), without_time(table)[..2]);
}

#[test]
fn predict_writes_its_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, out) = (tmp.path().join("model"), tmp.path().join("pred"));
    write_model_dir(&model, Some(SIGMA));
    let data = data_dir();
    let args = ["predict", "--model", s(&model), "--data-dir", s(&data), "--out", s(&out)];
    let output = run(&[&args[..], &["--n", "400", "--skip", "200", "--max", "50"]].concat());
    assert!(output.status.success(), "predict failed: {}", String::from_utf8_lossy(&output.stderr));
    let test = data::load(Dataset::Mnist, &data, false).unwrap();
    let text = std::fs::read_to_string(out.join("predict.tsv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("idx\tlabel\tpredict\tcorrect\ttime"));
    let mut correct = 0;
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f[0], (200 * i).to_string());
        assert_eq!(f[1], test.label(200 * i).to_string());
        assert_eq!(f[3] == "1", f[2] == f[1], "{line}");
        correct += usize::from(f[3] == "1");
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["images"], 50);
    assert_eq!(summary["correct"], correct);
    eprintln!("predict: {correct} of 50 correct");
    // Chance is 10 %; the classifier's is about 70 % (measured: 37 of these 50).
    assert!(correct >= 25, "the smoothed nearest-centroid classifier got {correct} of 50 right:\n{text}");
}

#[test]
fn sigterm_stops_between_images_and_keeps_the_rows_done() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, out) = (tmp.path().join("model"), tmp.path().join("cert"));
    write_model_dir(&model, Some(SIGMA));
    let data = data_dir();
    let mut child = trainer()
        .args(["certify", "--model", s(&model), "--data-dir", s(&data), "--out", s(&out)])
        .args(["--n0", "10", "--n", "20000", "--batch", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let event = EventLine::parse(&line.unwrap()).unwrap().event;
        if matches!(event, Event::Certified(_)) {
            let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            assert!(status.success());
            seen.push(event);
            break;
        }
    }
    seen.extend(lines.map(|l| EventLine::parse(&l.unwrap()).unwrap().event));
    assert!(child.wait().unwrap().success(), "a stopped certification exits cleanly");
    assert!(matches!(seen.last(), Some(Event::Stopped { .. })), "last event: {:?}", seen.last());
    let done = seen.iter().filter(|e| matches!(e, Event::Certified(_))).count();
    assert!((1..10_000).contains(&done));
    assert_eq!(rows(&out).len(), done, "one row per certified image");
    assert!(!out.join("summary.json").exists(), "no summary for a stopped run");
}

#[test]
fn bad_flags_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_model_dir(&model, Some(SIGMA));
    let standard = tmp.path().join("standard");
    write_model_dir(&standard, None);
    let weights = model.join(WEIGHTS_FILE);
    let (m, w) = (s(&model), s(&weights));

    let err = failure(&["certify", "--model", m, "--sigma", "-1"]);
    assert!(err.contains("--sigma") && err.contains("-1"), "{err}");
    let missing = tmp.path().join("no-such-model");
    let err = failure(&["certify", "--model", s(&missing)]);
    assert!(err.contains("--model") && err.contains("no-such-model"), "{err}");
    let err = failure(&["certify", "--weights", w, "--dataset", "mnist", "--sigma", "0.25"]);
    assert!(err.contains("--arch"), "{err}");
    let err = failure(&["certify", "--weights", w, "--arch", "linear", "--dataset", "mnist"]);
    assert!(err.contains("--sigma"), "{err}");
    let err = failure(&["certify", "--model", s(&standard), "--out", s(&tmp.path().join("o"))]);
    assert!(err.contains("--sigma") && err.contains("model.json"), "{err}");
    let err = failure(&["certify", "--model", m, "--alpha", "0.7"]);
    assert!(err.contains("--alpha"), "{err}");
    let err = failure(&["predict", "--model", m, "--n", "0"]);
    assert!(err.contains("--n"), "{err}");
    let err = failure(&["certify"]);
    assert!(err.contains("--model") && err.contains("--weights"), "{err}");
}

#[test]
fn certify_radius_runs_the_target_radius_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, out) = (tmp.path().join("model"), tmp.path().join("cert"));
    write_model_dir(&model, Some(SIGMA));
    let data = data_dir();
    let args = ["certify", "--model", s(&model), "--data-dir", s(&data), "--out", s(&out), "--radius", "0.25"];
    let output =
        run(&[&args[..], &["--n0", "20", "--n", "3000", "--batch", "128", "--skip", "1000", "--max", "4"]].concat());
    assert!(output.status.success(), "certify --radius failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(out.join("certify.tsv")).unwrap();
    assert!(text.starts_with(&format!("{HEADER}\tsamples\tdecision\tp_upper\n")), "{text}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["mode"], serde_json::json!({"name": "target_radius", "radius": 0.25}));
    assert_eq!(summary["certified_accuracy"].as_array().unwrap().len(), 1);
    assert!(summary["samples"]["mean"].as_f64().unwrap() <= 3000.0);
    let events = events(&output.stdout);
    let certified: Vec<_> =
        events.iter().filter_map(|e| if let Event::Certified(c) = e { Some(c) } else { None }).collect();
    assert_eq!(certified.len(), 4);
    assert!(certified.iter().all(|c| c.samples.is_some() && c.decision.is_some() && c.p_upper.is_some()));
    let Some(Event::Finished { summary: metrics, .. }) = events.last() else { panic!("no finished event") };
    assert!(metrics.contains_key("certified_acc@0.25") && metrics.contains_key("samples_mean"), "{metrics:?}");

    let err = failure(&[&args[..7], &["--radius", "-1"]].concat());
    assert!(err.contains("--radius") && err.contains("smoothing.mode.radius"), "{err}");
    let err = failure(&[&args[..7], &["--tolerance", "0"]].concat());
    assert!(err.contains("--tolerance"), "{err}");
    let err = failure(&[&args[..], &["--tolerance", "0.01"]].concat());
    assert!(err.contains("cannot be used with"), "{err}");
}
