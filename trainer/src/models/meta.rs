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

impl Normalization {
    pub fn for_model(arch: Arch, dataset: Dataset) -> Self {
        match (arch, dataset) {
            (Arch::Linear, _) => Normalization::None,
            (_, Dataset::Cifar10) => {
                Normalization::MeanStd { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.2470, 0.2435, 0.2616] }
            }
            _ => Normalization::None,
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
