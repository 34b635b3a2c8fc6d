//! Shared by the train_* and transfer_* tests: the real MNIST files, a quiet run context, and
//! helpers to read what a run wrote.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use crt_trainer::cli::run::{Context, Outcome};
use crt_trainer::config::{Arch, DataConfig, Dataset, Method, OptimConfig, Optimizer, Schedule, TrainConfig};
use crt_trainer::report::Reporter;
use crt_trainer::stop::StopFlag;
use sha2::{Digest, Sha256};

/// The data directory: `CRT_DATA_DIR`, else `<repo>/target/crt-data`; MNIST is fetched on first use.
pub fn mnist_dir() -> PathBuf {
    let dir = std::env::var_os("CRT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/crt-data"));
    crt_trainer::data::ensure_dataset(Dataset::Mnist, &dir).expect("MNIST available");
    dir
}

pub fn quiet_context(reporter: &Reporter) -> Context<'_> {
    Context { device: Device::Cpu, reporter, stop: StopFlag::default(), threads: 1 }
}

/// A small, fast MNIST training configuration (resolved).
pub fn small_config(arch: Arch, method: Method, out_dir: &Path, seed: u64) -> TrainConfig {
    TrainConfig {
        data: DataConfig {
            dataset: Dataset::Mnist,
            data_dir: mnist_dir(),
            train_subset: Some(256),
            test_subset: Some(100),
        },
        arch,
        method,
        optim: OptimConfig {
            epochs: 2,
            batch_size: 64,
            lr: None,
            momentum: 0.9,
            weight_decay: 1e-4,
            schedule: Schedule::Step { every_epochs: 1, gamma: 0.5 },
            optimizer: Optimizer::Sgd,
        },
        seed,
        out_dir: out_dir.to_path_buf(),
        resume: false,
    }
    .resolve()
}

pub fn train(cfg: &TrainConfig) -> Outcome {
    let reporter = Reporter::quiet();
    crt_trainer::train::train(cfg, &quiet_context(&reporter)).expect("training runs")
}

/// Every tensor of a safetensors file as raw bits (bit-for-bit comparisons; f32 values widen to f64
/// exactly, so equal bits here are equal f32 bits, and integer tensors such as AdamW's step count
/// compare too).
pub fn tensor_bits(path: &Path) -> HashMap<String, Vec<u64>> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).expect("readable safetensors");
    tensors.into_iter().map(|(name, t)| (name, bits(&t))).collect()
}

fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap();
    t.to_vec1::<f64>().unwrap().into_iter().map(f64::to_bits).collect()
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("readable file")))
}
