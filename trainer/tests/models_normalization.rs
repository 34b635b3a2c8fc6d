//! The input normalization: a loaded model uses the one its `model.json` records (models trained
//! before the change keep theirs), and new CIFAR-10 models use the reference codes' constants.

use std::path::Path;

use candle_core::{Device, Tensor};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::models::meta::{CIFAR10_MEAN, CIFAR10_STD, CIFAR10_STD_LEGACY, META_FILE, WEIGHTS_FILE};
use crt_trainer::models::{Model, Normalization};

/// `model.json` as `train` wrote it for a CIFAR-10 LeNet (the format is unchanged; only the
/// normalization differs between models), with the given normalization.
fn write_meta(dir: &Path, normalization: &str) {
    let text = format!(
        r#"{{
  "arch": "lenet",
  "dataset": "cifar10",
  "normalization": {normalization},
  "provenance": {{ "kind": "train", "method": {{ "name": "gaussian", "sigma": 0.25 }} }},
  "sigma": 0.25,
  "epochs": 1,
  "seed": 3,
  "parameters": 657080,
  "final_metrics": {{}},
  "wall_time_s": 1.5,
  "trainer_version": "0.1.0"
}}"#
    );
    std::fs::write(dir.join(META_FILE), text).unwrap();
}

/// A CIFAR-10 LeNet's weights in `dir` (the network; the normalization comes from model.json).
fn write_weights(dir: &Path) -> Model {
    let model = Model::new(Arch::Lenet, Dataset::Cifar10, &Device::Cpu, 3).unwrap();
    model.save(&dir.join(WEIGHTS_FILE)).unwrap();
    model
}

fn inputs() -> Tensor {
    let n = 4 * 3 * 32 * 32;
    let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    Tensor::from_vec(values, (4, 3, 32, 32), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// The logits of `model`'s network on x normalized by hand with (mean, std).
fn by_hand(model: &mut Model, x: &Tensor, mean: &[f32], std: &[f32]) -> Tensor {
    let m = Tensor::from_slice(mean, (1, 3, 1, 1), &Device::Cpu).unwrap();
    let s = Tensor::from_slice(std, (1, 3, 1, 1), &Device::Cpu).unwrap();
    let normalized = x.broadcast_sub(&m).unwrap().broadcast_div(&s).unwrap();
    let saved = std::mem::replace(&mut model.normalization, Normalization::None);
    let logits = model.forward_t(&normalized, false).unwrap();
    model.normalization = saved;
    logits
}

#[test]
fn new_cifar10_models_use_the_reference_constants() {
    for arch in [Arch::Lenet, Arch::Resnet20, Arch::Mlp] {
        let model = Model::new(arch, Dataset::Cifar10, &Device::Cpu, 0).unwrap();
        assert_eq!(
            model.normalization,
            Normalization::MeanStd { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.2023, 0.1994, 0.2010] },
            "{arch:?}"
        );
    }
    assert_eq!(CIFAR10_MEAN, [0.4914, 0.4822, 0.4465]);
    assert_eq!(CIFAR10_STD, [0.2023, 0.1994, 0.2010]);
    // The MNIST family has none (as the reference LeNets), nor has the linear baseline.
    for (arch, ds) in
        [(Arch::Lenet, Dataset::Mnist), (Arch::Lenet, Dataset::FashionMnist), (Arch::Linear, Dataset::Cifar10)]
    {
        assert_eq!(
            Model::new(arch, ds, &Device::Cpu, 0).unwrap().normalization,
            Normalization::None,
            "{arch:?} {ds:?}"
        );
    }
}

#[test]
fn an_existing_model_keeps_the_constants_it_was_trained_with() {
    let dir = tempfile::tempdir().unwrap();
    let mut reference = write_weights(dir.path());
    write_meta(
        dir.path(),
        r#"{ "kind": "mean_std", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616] }"#,
    );
    let (loaded, meta) = Model::load_dir(dir.path(), &Device::Cpu).unwrap();
    let legacy = Normalization::MeanStd { mean: CIFAR10_MEAN.to_vec(), std: CIFAR10_STD_LEGACY.to_vec() };
    assert_eq!(meta.normalization, legacy);
    assert_eq!(loaded.normalization, legacy, "the recorded normalization is not the one loaded");

    let x = inputs();
    let got = loaded.forward_t(&x, false).unwrap();
    let want = by_hand(&mut reference, &x, &CIFAR10_MEAN, &CIFAR10_STD_LEGACY);
    let with_new_constants = by_hand(&mut reference, &x, &CIFAR10_MEAN, &CIFAR10_STD);
    assert!(max_abs_diff(&got, &want) < 1e-5, "logits {}", max_abs_diff(&got, &want));
    // The two constant sets give measurably different logits, so the check above can fail.
    assert!(max_abs_diff(&got, &with_new_constants) > 1e-3, "{}", max_abs_diff(&got, &with_new_constants));
}

#[test]
fn a_custom_normalization_in_model_json_is_used_by_the_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut reference = write_weights(dir.path());
    let (mean, std) = ([0.1f32, 0.6, 0.3], [0.5f32, 0.125, 0.9]);
    write_meta(dir.path(), &format!(r#"{{ "kind": "mean_std", "mean": {mean:?}, "std": {std:?} }}"#));
    let (loaded, _) = Model::load_dir(dir.path(), &Device::Cpu).unwrap();
    let x = inputs();
    let got = loaded.forward_t(&x, false).unwrap();
    let want = by_hand(&mut reference, &x, &mean, &std);
    assert!(max_abs_diff(&got, &want) < 1e-5, "custom normalization ignored: {}", max_abs_diff(&got, &want));
    let default = reference.forward_t(&x, false).unwrap();
    assert!(max_abs_diff(&got, &default) > 1e-2, "the default constants give the same logits");

    // `none` recorded: raw pixels.
    write_meta(dir.path(), r#"{ "kind": "none" }"#);
    let (loaded, _) = Model::load_dir(dir.path(), &Device::Cpu).unwrap();
    reference.normalization = Normalization::None;
    assert!(max_abs_diff(&loaded.forward_t(&x, false).unwrap(), &reference.forward_t(&x, false).unwrap()) == 0.0);
}

#[test]
fn a_normalization_that_does_not_fit_the_input_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_weights(dir.path());
    for (bad, says) in [
        (r#"{ "kind": "mean_std", "mean": [0.5], "std": [0.2] }"#, "3 channels"),
        (r#"{ "kind": "mean_std", "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2] }"#, "std 0"),
    ] {
        write_meta(dir.path(), bad);
        let err = Model::load_dir(dir.path(), &Device::Cpu).err().expect("loaded a bad normalization");
        let msg = format!("{err:#}");
        assert!(msg.contains(META_FILE) && msg.contains(says), "{msg}");
    }
}
