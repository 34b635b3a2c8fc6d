//! `model.json`: what a saved model is (arch, dataset, input normalization) and how it was trained.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{Arch, Dataset, Method, TransferLoss};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const META_FILE: &str = "model.json";

/// The model's first layer: per-channel (x - mean) / std, or nothing. The references normalize
/// CIFAR-10 inside the model and feed MNIST-family LeNets raw [0, 1] pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    None,
    MeanStd { mean: Vec<f32>, std: Vec<f32> },
}

/// CIFAR-10's constants in the reference codes (`_CIFAR10_MEAN`, `_CIFAR10_STDDEV` of Cohen et al.'s
/// `code/datasets.py`, also Salman et al.'s): what new CIFAR-10 models use.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR10_STD: [f32; 3] = [0.2023, 0.1994, 0.2010];

/// The std CRT Lab's CIFAR-10 models used before they took the reference constants (with
/// [`CIFAR10_MEAN`]); such models keep it, as recorded in their `model.json`.
pub const CIFAR10_STD_LEGACY: [f32; 3] = [0.2470, 0.2435, 0.2616];

impl Normalization {
    /// The normalization of a new model: the reference constants for CIFAR-10 (except the linear
    /// baseline), none for the MNIST family (as the reference LeNets).
    pub fn for_model(arch: Arch, dataset: Dataset) -> Self {
        match (arch, dataset) {
            (Arch::Linear, _) => Normalization::None,
            (_, Dataset::Cifar10) => Self::reference(dataset),
            _ => Normalization::None,
        }
    }

    /// The reference codes' normalization layer for a dataset (none for the MNIST family).
    pub fn reference(dataset: Dataset) -> Self {
        match dataset {
            Dataset::Cifar10 => Normalization::MeanStd { mean: CIFAR10_MEAN.to_vec(), std: CIFAR10_STD.to_vec() },
            Dataset::Mnist | Dataset::FashionMnist => Normalization::None,
        }
    }

    /// Checks that the constants fit an input of `channels` channels: one mean and one positive,
    /// finite std per channel.
    pub fn check(&self, channels: usize) -> std::result::Result<(), String> {
        match self {
            Normalization::None => Ok(()),
            Normalization::MeanStd { mean, std } => {
                if mean.len() != channels || std.len() != channels {
                    return Err(format!(
                        "normalization has {} mean and {} std values; the input has {channels} channels",
                        mean.len(),
                        std.len()
                    ));
                }
                if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
                    return Err(format!("normalization mean {m} is not finite"));
                }
                if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                    return Err(format!("normalization std {s} is not a positive finite number"));
                }
                Ok(())
            }
        }
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Normalization::None => Ok(x.clone()),
            Normalization::MeanStd { mean, std } => {
                let c = mean.len();
                let mean = Tensor::from_slice(mean, (1, c, 1, 1), x.device())?;
                let std = Tensor::from_slice(std, (1, c, 1, 1), x.device())?;
                x.broadcast_sub(&mean)?.broadcast_div(&std)
            }
        }
    }
}

/// How a model came to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Provenance {
    Train { method: Method },
    Transfer { loss: TransferLoss, teacher_arch: Arch, teacher: String },
    Imported,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub arch: Arch,
    pub dataset: Dataset,
    pub normalization: Normalization,
    pub provenance: Provenance,
    /// The training noise level (None for standard training).
    pub sigma: Option<f64>,
    pub epochs: usize,
    pub seed: u64,
    pub parameters: usize,
    #[serde(default)]
    pub final_metrics: BTreeMap<String, f64>,
    pub wall_time_s: f64,
    pub trainer_version: String,
}

impl ModelMeta {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read model metadata {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid model metadata", path.display()))
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}
