//! Every architecture saves to safetensors with PyTorch `state_dict` names and loads back to a model
//! with bit-identical outputs; extra `num_batches_tracked` tensors are ignored, missing ones refused.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::models::Model;

fn input(dataset: Dataset, seed: u64) -> Tensor {
    let (c, h, w) = dataset.image_shape();
    let n = 3 * c * h * w;
    // A fixed pseudo-random pattern in [0, 1] (no RNG needed to make inputs differ per pixel).
    let data: Vec<f32> = (0..n).map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32) / 1000.0).collect();
    Tensor::from_vec(data, (3, c, h, w), &Device::Cpu).unwrap()
}

fn cases() -> Vec<(Arch, Dataset)> {
    let mut cases: Vec<(Arch, Dataset)> = Arch::ALL.iter().map(|&a| (a, Dataset::Mnist)).collect();
    cases.extend([(Arch::Resnet20, Dataset::Cifar10), (Arch::Mlp, Dataset::Cifar10), (Arch::Lenet, Dataset::Cifar10)]);
    cases
}

#[test]
fn save_then_load_gives_identical_outputs_for_every_arch() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, dataset) in cases() {
        let model = Model::new(arch, dataset, &Device::Cpu, 11).unwrap();
        let path = tmp.path().join(format!("{}-{}.safetensors", arch.as_str(), dataset.as_str()));
        model.save(&path).unwrap();
        let loaded = Model::load_weights(arch, dataset, &path, &Device::Cpu).unwrap();
        let x = input(dataset, 3);
        for train in [false, true] {
            let a = model.forward_t(&x, train).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = loaded.forward_t(&x, train).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{arch:?} on {dataset:?} (train = {train})");
        }
        // A differently seeded model gives different outputs, so equality above means something.
        let other = Model::new(arch, dataset, &Device::Cpu, 12).unwrap();
        let c = other.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a = model.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(a, c, "{arch:?}");
    }
}

/// A tensor name and its shape.
type Named<'a> = (&'a str, &'a [usize]);

#[test]
fn tensor_names_follow_pytorch_state_dicts() {
    let tmp = tempfile::tempdir().unwrap();
    let expect: [(Arch, &[Named]); 4] = [
        (Arch::Linear, &[("fc.weight", &[10, 784]), ("fc.bias", &[10])]),
        (Arch::Mlp, &[("fc1.weight", &[512, 784]), ("fc2.weight", &[512, 512]), ("fc3.bias", &[10])]),
        (
            Arch::Lenet,
            &[("conv1.weight", &[20, 1, 5, 5]), ("conv2.weight", &[50, 20, 5, 5]), ("fc1.weight", &[500, 800])],
        ),
        (
            Arch::Resnet20,
            &[
                ("conv1.weight", &[16, 1, 3, 3]),
                ("bn1.running_var", &[16]),
                ("layer1.2.conv2.weight", &[16, 16, 3, 3]),
                ("layer2.0.downsample.0.weight", &[32, 16, 1, 1]),
                ("layer3.0.downsample.1.bias", &[64]),
                ("fc.weight", &[10, 64]),
            ],
        ),
    ];
    for (arch, names) in expect {
        let path = tmp.path().join(format!("{}.safetensors", arch.as_str()));
        Model::new(arch, Dataset::Mnist, &Device::Cpu, 0).unwrap().save(&path).unwrap();
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        for (name, shape) in names {
            let t = tensors.get(*name).unwrap_or_else(|| panic!("{arch:?}: no tensor {name}"));
            assert_eq!(t.dims(), *shape, "{arch:?} {name}");
        }
    }
}

#[test]
fn num_batches_tracked_is_ignored_and_a_missing_tensor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("resnet20.safetensors");
    let model = Model::new(Arch::Resnet20, Dataset::Mnist, &Device::Cpu, 4).unwrap();
    model.save(&path).unwrap();
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert("bn1.num_batches_tracked".into(), Tensor::new(&[7i64], &Device::Cpu).unwrap());
    let with_extra = tmp.path().join("extra.safetensors");
    candle_core::safetensors::save(&tensors, &with_extra).unwrap();
    let loaded = Model::load_weights(Arch::Resnet20, Dataset::Mnist, &with_extra, &Device::Cpu).unwrap();
    let x = input(Dataset::Mnist, 1);
    let a = model.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = loaded.forward_t(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);

    tensors.remove("layer3.2.bn2.weight");
    let missing = tmp.path().join("missing.safetensors");
    candle_core::safetensors::save(&tensors, &missing).unwrap();
    let err = Model::load_weights(Arch::Resnet20, Dataset::Mnist, &missing, &Device::Cpu).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("missing.safetensors") && msg.contains("resnet20"), "{msg}");

    // Weights of another architecture do not load silently.
    let lenet = tmp.path().join("lenet.safetensors");
    Model::new(Arch::Lenet, Dataset::Mnist, &Device::Cpu, 0).unwrap().save(&lenet).unwrap();
    assert!(Model::load_weights(Arch::Mlp, Dataset::Mnist, &lenet, &Device::Cpu).is_err());
}
