//! `crt-trainer transfer`: a `TransferConfig` from `--config FILE` and/or flags. The dataset and the
//! noise level default to the teacher's (read from its model.json).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, ValueEnum};
use serde_json::Value;

use super::train::{flag_error, CommonArgs};
use crate::config::{Arch, DataConfig, Dataset, OptimConfig, RunConfig, TransferConfig, TransferLoss};
use crate::models::meta::META_FILE;
use crate::models::ModelMeta;

#[derive(Args, Debug, Default)]
pub struct TransferArgs {
    /// A TransferConfig as JSON (or a RunConfig with "kind": "transfer"); flags given as well override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The teacher: output directory of a finished training run (model.safetensors + model.json).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// The student's architecture: linear, mlp, lenet, resnet20, resnet56, resnet110 or vit.
    #[arg(long)]
    pub student_arch: Option<Arch>,
    /// Must be the teacher's dataset [default: the teacher's].
    #[arg(long)]
    pub dataset: Option<Dataset>,
    /// crt (logit matching) or kd (distillation) [default: crt].
    #[arg(long, value_enum)]
    pub loss: Option<LossName>,
    /// CRT: weight of the logit distance; 1 - it weighs the cross-entropy [default: 1].
    #[arg(long)]
    pub logit_weight: Option<f64>,
    /// KD: softmax temperature [default: 4].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// KD: weight of the cross-entropy on the labels [default: 0].
    #[arg(long)]
    pub ce_weight: Option<f64>,
    /// Noise level [default: the teacher's].
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Allow a noise level different from the teacher's.
    #[arg(long)]
    pub allow_sigma_mismatch: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossName {
    Crt,
    Kd,
}

impl TransferArgs {
    pub fn into_run_config(self) -> anyhow::Result<RunConfig> {
        let mut cfg = match &self.config {
            Some(path) => read_transfer_config(path)?,
            None => self.config_from_flags()?,
        };
        if self.config.is_some() {
            if let Some(t) = &self.teacher {
                cfg.teacher = t.clone();
            }
            if let Some(a) = self.student_arch {
                cfg.student_arch = a;
            }
            if let Some(d) = self.dataset {
                cfg.data.dataset = d;
            }
        }
        if self.sigma.is_some() {
            cfg.sigma = self.sigma;
        }
        cfg.allow_sigma_mismatch |= self.allow_sigma_mismatch;
        cfg.loss = self.loss(&cfg.loss)?;
        self.common.apply(&mut cfg.data, &mut cfg.optim, &mut cfg.seed, &mut cfg.out_dir, &mut cfg.resume)?;
        cfg.validate().map_err(flag_error)?;
        Ok(RunConfig::Transfer(cfg))
    }

    fn config_from_flags(&self) -> anyhow::Result<TransferConfig> {
        let teacher = self.teacher.clone().ok_or_else(|| anyhow!("--teacher is required (or give --config FILE)"))?;
        let student_arch =
            self.student_arch.ok_or_else(|| anyhow!("--student-arch is required (or give --config FILE)"))?;
        let meta_path = teacher.join(META_FILE);
        let meta = ModelMeta::read(&meta_path).with_context(|| {
            format!("--teacher {}: expected a finished training run's output directory", teacher.display())
        })?;
        Ok(TransferConfig {
            data: DataConfig {
                dataset: self.dataset.unwrap_or(meta.dataset),
                data_dir: PathBuf::from("data"),
                train_subset: None,
                test_subset: None,
            },
            teacher,
            student_arch,
            loss: TransferLoss::default(),
            // Recorded explicitly so the run's configuration says which noise level it used.
            sigma: self.sigma.or(meta.sigma),
            allow_sigma_mismatch: false,
            optim: OptimConfig::default(),
            seed: 0,
            out_dir: PathBuf::from("out"),
            resume: false,
        })
    }

    /// The loss after the loss flags; a flag of the other loss is an error.
    fn loss(&self, current: &TransferLoss) -> anyhow::Result<TransferLoss> {
        let name = self.loss.unwrap_or(match current {
            TransferLoss::Crt { .. } => LossName::Crt,
            TransferLoss::Kd { .. } => LossName::Kd,
        });
        match name {
            LossName::Crt => {
                reject(self.temperature.is_some(), "--temperature", "kd")?;
                reject(self.ce_weight.is_some(), "--ce-weight", "kd")?;
                let current = match current {
                    TransferLoss::Crt { logit_weight } => *logit_weight,
                    TransferLoss::Kd { .. } => 1.0,
                };
                Ok(TransferLoss::Crt { logit_weight: self.logit_weight.unwrap_or(current) })
            }
            LossName::Kd => {
                reject(self.logit_weight.is_some(), "--logit-weight", "crt")?;
                let (t, w) = match current {
                    TransferLoss::Kd { temperature, ce_weight } => (*temperature, *ce_weight),
                    TransferLoss::Crt { .. } => (4.0, 0.0),
                };
                Ok(TransferLoss::Kd {
                    temperature: self.temperature.unwrap_or(t),
                    ce_weight: self.ce_weight.unwrap_or(w),
                })
            }
        }
    }
}

fn reject(given: bool, flag: &str, loss: &str) -> anyhow::Result<()> {
    if given {
        bail!("{flag}: applies only to --loss {loss}");
    }
    Ok(())
}

/// A TransferConfig file, bare or as a RunConfig of kind transfer.
fn read_transfer_config(path: &Path) -> anyhow::Result<TransferConfig> {
    let value: Value = super::read_config(path)?;
    match value.get("kind").and_then(Value::as_str) {
        None => super::read_config(path),
        Some("transfer") => match super::read_config::<RunConfig>(path)? {
            RunConfig::Transfer(c) => Ok(c),
            _ => unreachable!("kind transfer parses as RunConfig::Transfer"),
        },
        Some(other) => {
            bail!("--config {}: kind is '{other}', expected 'transfer' (run it with `crt-trainer run`)", path.display())
        }
    }
}
