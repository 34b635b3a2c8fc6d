//! The `vit` architecture: its tensor names and parameter count, a save -> load round trip (weights
//! file and model directory) with identical logits on 1x28x28 and 3x32x32 inputs, a gradient for
//! every parameter, and the logits of its PyTorch twin (`scripts/make_vit_reference.py`, outputs in
//! tests/data/vit, so no torch is needed here) within 1e-4 after `crt-trainer import --arch vit`.
//!
//! Measured (x86-64 CPU, torch 2.15.0 reference): max |logit - PyTorch| is printed by the test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use candle_core::{Device, Tensor};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::models::import::{import_pytorch, write_model_dir, Imported, NormalizationSource, ReferenceArch};
use crt_trainer::models::meta::{CIFAR10_MEAN, CIFAR10_STD};
use crt_trainer::models::{Model, Normalization};

const TRAINER: &str = env!("CARGO_BIN_EXE_crt-trainer");

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vit").join(name)
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(data("reference.safetensors"), &Device::Cpu).expect("reference file")
}

fn input(dataset: Dataset, n: usize) -> Tensor {
    let (c, h, w) = dataset.image_shape();
    let data: Vec<f32> = (0..n * c * h * w).map(|i| (((i as u64 * 2654435761 + 5) % 1000) as f32) / 1000.0).collect();
    Tensor::from_vec(data, (n, c, h, w), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    values(a).iter().zip(values(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tensor_names_shapes_and_parameter_counts() {
    let tmp = tempfile::tempdir().unwrap();
    // 64-wide tokens, 4 blocks of 4 heads, MLP 128; 49 tokens on 28x28, 64 on 32x32.
    for (dataset, params, tokens, channels) in [(Dataset::Mnist, 138_890, 49, 1), (Dataset::Cifar10, 141_898, 64, 3)] {
        let model = Model::new(Arch::Vit, dataset, &Device::Cpu, 0).unwrap();
        assert_eq!(model.parameter_count(), params, "{dataset:?}");
        let path = tmp.path().join("vit.safetensors");
        model.save(&path).unwrap();
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let expect: [(&str, &[usize]); 12] = [
            ("patch_embed.proj.weight", &[64, channels, 4, 4]),
            ("patch_embed.proj.bias", &[64]),
            ("pos_embed", &[1, tokens, 64]),
            ("blocks.0.norm1.weight", &[64]),
            ("blocks.0.attn.qkv.weight", &[192, 64]),
            ("blocks.0.attn.qkv.bias", &[192]),
            ("blocks.1.attn.proj.weight", &[64, 64]),
            ("blocks.2.norm2.bias", &[64]),
            ("blocks.3.mlp.fc1.weight", &[128, 64]),
            ("blocks.3.mlp.fc2.weight", &[64, 128]),
            ("norm.weight", &[64]),
            ("head.weight", &[10, 64]),
        ];
        for (name, shape) in expect {
            let t = tensors.get(name).unwrap_or_else(|| panic!("no tensor {name}"));
            assert_eq!(t.dims(), shape, "{name}");
        }
        assert_eq!(tensors.len(), 3 + 4 * 12 + 2 + 2, "{:?}", tensors.keys());
        let y = model.forward_t(&input(dataset, 2), false).unwrap();
        assert_eq!(y.dims(), &[2, 10]);
    }
}

#[test]
fn save_then_load_gives_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for dataset in [Dataset::Mnist, Dataset::Cifar10] {
        let model = Model::new(Arch::Vit, dataset, &Device::Cpu, 11).unwrap();
        let x = input(dataset, 3);
        let want = values(&model.forward_t(&x, false).unwrap());

        let path = tmp.path().join(format!("{}.safetensors", dataset.as_str()));
        model.save(&path).unwrap();
        let loaded = Model::load_weights(Arch::Vit, dataset, &path, &Device::Cpu).unwrap();
        assert_eq!(values(&loaded.forward_t(&x, false).unwrap()), want, "{dataset:?} weights file");
        // Train mode is the same function (no dropout, no BatchNorm).
        assert_eq!(values(&loaded.forward_t(&x, true).unwrap()), want, "{dataset:?} train mode");

        // Through a model directory (model.json + model.safetensors), normalization included.
        let dir = tmp.path().join(format!("dir-{}", dataset.as_str()));
        let imported = Imported {
            model,
            source: NormalizationSource::DatasetDefault,
            checkpoint_arch: None,
            epoch: None,
            loaded: 0,
            ignored: 0,
        };
        write_model_dir(&imported, Some(0.25), &dir).unwrap();
        let (from_dir, meta) = Model::load_dir(&dir, &Device::Cpu).unwrap();
        assert_eq!(meta.arch, Arch::Vit);
        assert_eq!(from_dir.normalization, Normalization::for_model(Arch::Vit, dataset));
        assert_eq!(values(&from_dir.forward_t(&x, false).unwrap()), want, "{dataset:?} model directory");

        let other = Model::new(Arch::Vit, dataset, &Device::Cpu, 12).unwrap();
        assert_ne!(values(&other.forward_t(&x, false).unwrap()), want, "seeds 11 and 12 give the same model");
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    for dataset in [Dataset::Mnist, Dataset::Cifar10] {
        let model = Model::new(Arch::Vit, dataset, &Device::Cpu, 3).unwrap();
        let loss = model.forward_t(&input(dataset, 2), true).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in model.trainable_vars() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{dataset:?}: no gradient for {name}"));
            let norm = values(g).iter().map(|v| v.abs()).fold(0.0, f32::max);
            assert!(norm > 0.0 && norm.is_finite(), "{dataset:?}: gradient of {name} is {norm}");
        }
    }
}

#[test]
fn imported_twin_gives_pytorch_logits() {
    let refs = reference();
    let checkpoint = data("vit_mnist.pth.tar");
    let imported = import_pytorch(&checkpoint, ReferenceArch::Vit, Dataset::Mnist, None, &Device::Cpu).unwrap();
    assert_eq!(imported.checkpoint_arch.as_deref(), Some("vit"));
    assert_eq!(imported.loaded, 3 + 4 * 12 + 2 + 2);
    let mnist = imported.model;
    assert_eq!(mnist.normalization, Normalization::None);
    let diff_mnist = max_abs_diff(&mnist.forward_t(&refs["mnist.x"], false).unwrap(), &refs["mnist.logits"]);
    println!("vit mnist: max |logit - PyTorch| = {diff_mnist:e}");
    assert!(diff_mnist <= 1e-4, "mnist logits differ from PyTorch's by {diff_mnist:e}");

    // The 3x32x32 twin: the MNIST twin's blocks, its own patch embedding, positions and head,
    // behind the CIFAR-10 reference normalization (the default of a new CIFAR-10 model).
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors: HashMap<String, Tensor> =
        mnist.named_vars().into_iter().map(|(name, var)| (name, var.as_tensor().clone())).collect();
    for (key, t) in &refs {
        if let Some(name) = key.strip_prefix("cifar.").filter(|n| tensors.contains_key(*n)) {
            tensors.insert(name.to_string(), t.clone());
        }
    }
    let path = tmp.path().join("cifar.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let cifar = Model::load_weights(Arch::Vit, Dataset::Cifar10, &path, &Device::Cpu).unwrap();
    let reference_norm = Normalization::MeanStd { mean: CIFAR10_MEAN.to_vec(), std: CIFAR10_STD.to_vec() };
    assert_eq!(cifar.normalization, reference_norm);
    let diff_cifar = max_abs_diff(&cifar.forward_t(&refs["cifar.x"], false).unwrap(), &refs["cifar.logits"]);
    println!("vit cifar10: max |logit - PyTorch| = {diff_cifar:e}");
    assert!(diff_cifar <= 1e-4, "cifar10 logits differ from PyTorch's by {diff_cifar:e}");

    // The logits vary between inputs (a constant model would not pass by accident).
    let spread = max_abs_diff(&refs["mnist.logits"].get(0).unwrap(), &refs["mnist.logits"].get(1).unwrap());
    assert!(spread > 1e-3, "reference logits barely differ between inputs: {spread}");
}

#[test]
fn import_command_writes_a_vit_model_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("vit");
    let checkpoint = data("vit_mnist.pth.tar");
    let o = Command::new(TRAINER)
        .args(["import", "--from", "pytorch", checkpoint.to_str().unwrap(), "--arch", "vit", "--dataset", "mnist"])
        .args(["--sigma", "0.25", "--out", out.to_str().unwrap(), "--device", "cpu"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    let (model, meta) = Model::load_dir(&out, &Device::Cpu).unwrap();
    assert_eq!((meta.arch, meta.parameters), (Arch::Vit, 138_890));
    let refs = reference();
    let diff = max_abs_diff(&model.forward_t(&refs["mnist.x"], false).unwrap(), &refs["mnist.logits"]);
    assert!(diff <= 1e-4, "{diff:e}");
}
