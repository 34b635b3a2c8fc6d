//! `crt-trainer import --from pytorch` on checkpoints in the reference codes' layout, made once by
//! PyTorch (`scripts/make_reference_checkpoint.py`; the files and the logits PyTorch gave on 100
//! fixed inputs are in tests/data/pytorch, so no torch is needed here): the imported model gives
//! PyTorch's logits within 1e-4 and the same top class under the same noise (except where the
//! reference top-2 gap is below 1e-4); `1.`, `module.1.` and plain keys are accepted; a fork's
//! normalization buffers are read; a wrong shape, an unknown key, a missing key (ResNet-110), an
//! `arch` mismatch and the legacy format are refused with messages naming the key or the remedy.
//!
//! Measured (x86-64 CPU, torch 2.15.0 reference): max |logit - PyTorch| 3.6e-7 (LeNet) to 1.2e-6
//! (ResNet-20), printed by each test. The imported LeNet is certified by `crt-trainer certify` on
//! real MNIST test images (`CRT_DATA_DIR`, default `<repo>/target/crt-data`, fetched on first use).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::data;
use crt_trainer::models::import::{
    import_pytorch, write_model_dir, NormalizationFlag, NormalizationSource, ReferenceArch,
};
use crt_trainer::models::meta::{ModelMeta, Provenance, CIFAR10_MEAN, CIFAR10_STD};
use crt_trainer::models::{Model, Normalization};

const TRAINER: &str = env!("CARGO_BIN_EXE_crt-trainer");

fn pytorch_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/pytorch")
}

fn file(name: &str) -> PathBuf {
    pytorch_dir().join(name)
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(file("reference_logits.safetensors"), &Device::Cpu).expect("reference logits")
}

/// (clean, noisy) inputs of a set (`cifar` or `mnist`), decoded exactly as the script does:
/// x = byte / 255 (a true division), noise = (byte - 128) / 128.
fn inputs(refs: &HashMap<String, Tensor>, set: &str) -> (Tensor, Tensor) {
    let x = refs[&format!("{set}.x")].to_dtype(DType::F32).unwrap();
    let x = x.broadcast_div(&Tensor::new(255f32, &Device::Cpu).unwrap()).unwrap();
    let noise = refs[&format!("{set}.noise")].to_dtype(DType::F32).unwrap();
    let noise = noise.affine(1.0 / 128.0, -1.0).unwrap();
    assert_eq!(x.dim(0).unwrap(), 100);
    let noisy = (&x + &noise).unwrap();
    (x, noisy)
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    rows(a).iter().flatten().zip(rows(b).iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

fn top2_gap(row: &[f32]) -> f32 {
    let mut sorted = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted[1]
}

/// Logits within 1e-4 of PyTorch's, clean and noisy, and the same top class under the noise except
/// where the reference's top-2 gap is below 1e-4. Returns the largest difference.
fn check_logits(what: &str, model: &Model, refs: &HashMap<String, Tensor>, name: &str, set: &str) -> f32 {
    let (clean, noisy) = inputs(refs, set);
    let mut worst = 0f32;
    for (kind, x) in [("clean", &clean), ("noisy", &noisy)] {
        let want = &refs[&format!("{name}.{kind}")];
        let got = model.forward_t(x, false).unwrap();
        let diff = max_abs_diff(&got, want);
        println!("{what} {kind}: max |logit - PyTorch| = {diff:e}");
        assert!(diff <= 1e-4, "{what} {kind}: logits differ from PyTorch's by {diff:e}");
        worst = worst.max(diff);
        let (g, w) = (rows(&got), rows(want));
        let mut skipped = 0;
        for (i, (g, w)) in g.iter().zip(&w).enumerate() {
            if top2_gap(w) < 1e-4 {
                skipped += 1;
                continue;
            }
            assert_eq!(argmax(g), argmax(w), "{what} {kind}: image {i} gets another top class");
        }
        assert!(skipped < 5, "{what} {kind}: {skipped} near-ties");
    }
    // The logits vary between inputs (the comparison is not trivially passed by a constant model).
    let spread =
        rows(&refs[&format!("{name}.noisy")]).iter().map(|r| argmax(r)).collect::<std::collections::BTreeSet<_>>();
    assert!(spread.len() >= 2, "{what}: the reference predicts only {spread:?}");
    worst
}

fn import(
    name: &str,
    arch: ReferenceArch,
    dataset: Dataset,
    flag: Option<&NormalizationFlag>,
) -> anyhow::Result<Model> {
    import_pytorch(&file(name), arch, dataset, flag, &Device::Cpu).map(|i| i.model)
}

fn import_err(name: &str, arch: ReferenceArch, dataset: Dataset) -> String {
    match import(name, arch, dataset, None) {
        Ok(_) => panic!("{name} imported as {arch}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn cifar_resnet20_gives_pytorch_logits() {
    let refs = reference();
    let imported = import_pytorch(
        &file("cifar_resnet20.pth.tar"),
        ReferenceArch::CifarResnet20,
        Dataset::Cifar10,
        None,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(imported.source, NormalizationSource::DatasetDefault);
    assert_eq!(imported.checkpoint_arch.as_deref(), Some("cifar_resnet20"));
    assert_eq!(imported.epoch, Some(90));
    assert_eq!(imported.loaded, 65 + 42);
    assert_eq!(imported.ignored, 21, "num_batches_tracked of the 21 BatchNorm layers");
    assert_eq!(
        imported.model.normalization,
        Normalization::MeanStd { mean: CIFAR10_MEAN.to_vec(), std: CIFAR10_STD.to_vec() }
    );
    check_logits("cifar_resnet20", &imported.model, &refs, "resnet20", "cifar");

    // Written as `train` writes a model, and loaded back with the same normalization and logits.
    let out = tempfile::tempdir().unwrap();
    let meta = write_model_dir(&imported, Some(0.25), out.path()).unwrap();
    assert_eq!(meta.provenance, Provenance::Imported);
    let (loaded, meta2) = Model::load_dir(out.path(), &Device::Cpu).unwrap();
    assert_eq!(meta2, meta);
    assert_eq!(meta.sigma, Some(0.25));
    assert_eq!(loaded.normalization, imported.model.normalization);
    check_logits("cifar_resnet20 reloaded", &loaded, &refs, "resnet20", "cifar");
}

#[test]
fn the_normalization_flag_changes_the_model() {
    let refs = reference();
    // The reference constants given explicitly are the default; other constants change the logits.
    let explicit: NormalizationFlag = "0.4914,0.4822,0.4465:0.2023,0.1994,0.2010".parse().unwrap();
    let model =
        import("cifar_resnet20.pth.tar", ReferenceArch::CifarResnet20, Dataset::Cifar10, Some(&explicit)).unwrap();
    check_logits("cifar_resnet20 explicit", &model, &refs, "resnet20", "cifar");
    for flag in [NormalizationFlag::None, "0.5,0.5,0.5:0.25,0.25,0.25".parse().unwrap()] {
        let model =
            import("cifar_resnet20.pth.tar", ReferenceArch::CifarResnet20, Dataset::Cifar10, Some(&flag)).unwrap();
        assert_eq!(model.normalization, flag.resolve(Dataset::Cifar10));
        let (clean, _) = inputs(&refs, "cifar");
        let diff = max_abs_diff(&model.forward_t(&clean, false).unwrap(), &refs["resnet20.clean"]);
        assert!(diff > 1e-2, "{flag:?} gives the reference logits");
    }
    // The fork was saved with mean 0.5 / std 0.25: its logits are the resnet's under that flag.
    let flag: NormalizationFlag = "0.5,0.5,0.5:0.25,0.25,0.25".parse().unwrap();
    let model = import("cifar_resnet20.pth.tar", ReferenceArch::CifarResnet20, Dataset::Cifar10, Some(&flag)).unwrap();
    check_logits("cifar_resnet20 with the fork's constants", &model, &refs, "fork", "cifar");
}

#[test]
fn a_dataparallel_fork_with_normalization_buffers() {
    let refs = reference();
    let imported = import_pytorch(
        &file("cifar_resnet20_fork.pth.tar"),
        ReferenceArch::CifarResnet20,
        Dataset::Cifar10,
        None,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        imported.source,
        NormalizationSource::Checkpoint { mean_key: "module.0.means".into(), std_key: "module.0.sds".into() }
    );
    assert_eq!(imported.model.normalization, Normalization::MeanStd { mean: vec![0.5; 3], std: vec![0.25; 3] });
    check_logits("fork (module.1. keys, buffers)", &imported.model, &refs, "fork", "cifar");
    // A flag that contradicts the stored constants is refused, naming the keys.
    let flag = NormalizationFlag::Reference;
    let err = import("cifar_resnet20_fork.pth.tar", ReferenceArch::CifarResnet20, Dataset::Cifar10, Some(&flag))
        .err()
        .map(|e| format!("{e:#}"))
        .expect("conflicting flag accepted");
    assert!(err.contains("module.0.means") && err.contains("--normalization"), "{err}");
}

#[test]
fn lenet_with_plain_keys_gives_pytorch_logits() {
    let refs = reference();
    let model = import("lenet.pth.tar", ReferenceArch::Lenet, Dataset::Mnist, None).unwrap();
    assert_eq!(model.arch, Arch::Lenet);
    assert_eq!(model.normalization, Normalization::None, "MNIST has no normalization layer");
    check_logits("lenet", &model, &refs, "lenet", "mnist");
}

#[test]
fn bad_checkpoints_are_refused_naming_the_key() {
    let err = import_err("bad_wrong_shape.pth.tar", ReferenceArch::CifarResnet20, Dataset::Cifar10);
    assert!(
        err.contains("`1.conv1.weight`") && err.contains("[16, 1, 3, 3]") && err.contains("[16, 3, 3, 3]"),
        "{err}"
    );

    let err = import_err("bad_unknown_key.pth.tar", ReferenceArch::CifarResnet20, Dataset::Cifar10);
    assert!(err.contains("unknown key `1.layer4.0.conv1.weight`"), "{err}");

    let err = import_err("bad_resnet110_partial.pth.tar", ReferenceArch::CifarResnet110, Dataset::Cifar10);
    assert!(err.contains("missing key `1.fc.bias`") && err.contains("cifar_resnet110"), "{err}");
    assert!(err.contains("552 of its 557 tensors are absent"), "{err}");

    // The `arch` entry must match --arch.
    let err = import_err("cifar_resnet20.pth.tar", ReferenceArch::CifarResnet110, Dataset::Cifar10);
    assert!(err.contains("`cifar_resnet20`") && err.contains("--arch"), "{err}");
    let err = import_err("cifar_resnet20.pth.tar", ReferenceArch::Lenet, Dataset::Mnist);
    assert!(err.contains("`cifar_resnet20`"), "{err}");

    // The right arch on the wrong dataset: the stem's input channels do not fit.
    let err = import_err("lenet.pth.tar", ReferenceArch::Lenet, Dataset::Cifar10);
    assert!(err.contains("conv1.weight") || err.contains("fc1.weight"), "{err}");

    // The pre-1.6 format: the error gives the conversion command.
    let err = import_err("legacy_format.pth.tar", ReferenceArch::Lenet, Dataset::Mnist);
    assert!(err.contains("legacy") && err.contains("_use_new_zipfile_serialization=True"), "{err}");
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(TRAINER).args(args).output().expect("run crt-trainer")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_import_command_writes_a_model_directory() {
    let refs = reference();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("resnet");
    let f = file("cifar_resnet20.pth.tar");
    let args = ["import", "--from", "pytorch", f.to_str().unwrap(), "--arch", "cifar_resnet20", "--dataset", "cifar10"];
    let o = run(&[&args[..], &["--out", dir.to_str().unwrap(), "--sigma", "0.5", "--device", "cpu"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("mean [0.4914, 0.4822, 0.4465], std [0.2023, 0.1994, 0.201]"), "{}", text(&o));
    let meta = ModelMeta::read(&dir.join("model.json")).unwrap();
    assert_eq!((meta.arch, meta.dataset, meta.sigma), (Arch::Resnet20, Dataset::Cifar10, Some(0.5)));
    let (model, _) = Model::load_dir(&dir, &Device::Cpu).unwrap();
    check_logits("import command", &model, &refs, "resnet20", "cifar");

    // Flag errors name the flag's value.
    let o = run(&[&args[..], &["--out", dir.to_str().unwrap(), "--normalization", "0.5,0.5:1,1"]].concat());
    assert!(!o.status.success() && text(&o).contains("--normalization"), "{}", text(&o));
    let o = run(&[
        "import",
        "--from",
        "pytorch",
        f.to_str().unwrap(),
        "--arch",
        "resnet50",
        "--dataset",
        "cifar10",
        "--out",
        "x",
    ]);
    assert!(!o.status.success() && text(&o).contains("cifar_resnet110"), "{}", text(&o));
    let missing = Path::new("/nonexistent/ckpt.pth.tar");
    let o = run(&[
        "import",
        "--from",
        "pytorch",
        missing.to_str().unwrap(),
        "--arch",
        "lenet",
        "--dataset",
        "mnist",
        "--out",
        "x",
    ]);
    assert!(!o.status.success() && text(&o).contains("/nonexistent/ckpt.pth.tar"), "{}", text(&o));
}

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("CRT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/crt-data"));
    data::ensure_dataset(Dataset::Mnist, &dir).expect("MNIST available");
    dir
}

#[test]
fn an_imported_lenet_is_certified_by_the_certify_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, cert) = (tmp.path().join("lenet"), tmp.path().join("cert"));
    let f = file("lenet.pth.tar");
    let o = run(&[
        "import",
        "--from",
        "pytorch",
        f.to_str().unwrap(),
        "--arch",
        "lenet",
        "--dataset",
        "mnist",
        "--sigma",
        "0.25",
        "--out",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let data = data_dir();
    let o = run(&[
        "certify",
        "--model",
        model.to_str().unwrap(),
        "--n0",
        "10",
        "--n",
        "200",
        "--skip",
        "1000",
        "--max",
        "3",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        cert.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let table = std::fs::read_to_string(cert.join("certify.tsv")).unwrap();
    assert_eq!(table.lines().count(), 1 + 3, "{table}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cert.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["sigma"], 0.25, "sigma from the imported model.json: {summary}");
}
