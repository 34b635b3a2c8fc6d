//! `crt-trainer certify` and `crt-trainer predict`: a `CertifyConfig` / `PredictConfig` from
//! `--config FILE` and/or flags. Flags given together with `--config` override the file's values.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::Args;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{
    Arch, CertifyConfig, CertifyMode, ConfigError, Dataset, ModelSource, PredictConfig, RunConfig, RunKind,
    SmoothingConfig,
};

#[derive(Args, Debug, Default)]
pub struct CertifyArgs {
    #[command(flatten)]
    pub common: SmoothedArgs,
    /// Noise samples that select the top class [default: 100].
    #[arg(long)]
    pub n0: Option<usize>,
    /// Target-radius mode: decide certified / not certifiable at this L2 radius as early as the
    /// sequential test allows (--n is the cap).
    #[arg(long, value_name = "R", allow_negative_numbers = true, conflicts_with = "tolerance")]
    pub radius: Option<f64>,
    /// Adaptive-N mode: stop when more samples are not expected to raise the radius by more than
    /// this (L2; --n is the cap).
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    pub tolerance: Option<f64>,
}

#[derive(Args, Debug, Default)]
pub struct PredictArgs {
    #[command(flatten)]
    pub common: SmoothedArgs,
}

/// The flags CERTIFY and PREDICT share: the model, the Monte Carlo parameters, data and output.
#[derive(Args, Debug, Default)]
pub struct SmoothedArgs {
    /// A CertifyConfig / PredictConfig as JSON (or a RunConfig of that kind); flags given as well override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A trainer output directory (model.safetensors + model.json).
    #[arg(long, value_name = "DIR", conflicts_with = "weights")]
    pub model: Option<PathBuf>,
    /// A safetensors file with PyTorch parameter names (a model trained elsewhere); needs --arch,
    /// --dataset and --sigma.
    #[arg(long, value_name = "FILE", requires_all = ["arch", "dataset"])]
    pub weights: Option<PathBuf>,
    /// Architecture of --weights: linear, mlp, lenet, resnet20, resnet56 or resnet110.
    #[arg(long, requires = "weights")]
    pub arch: Option<Arch>,
    /// Dataset of --weights: mnist, fashion-mnist or cifar10.
    #[arg(long, requires = "weights")]
    pub dataset: Option<Dataset>,
    /// Noise level of the smoothed classifier [default: the model's training sigma from model.json].
    #[arg(long, allow_negative_numbers = true)]
    pub sigma: Option<f64>,
    /// Noise samples that estimate the top class's probability [default: 100000].
    #[arg(long)]
    pub n: Option<usize>,
    /// Significance: each result holds with probability at least 1 - alpha [default: 0.001].
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f64>,
    /// Noisy copies per forward pass [default: 1000].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Take every K-th test image, from index 0 [default: 1].
    #[arg(long, value_name = "K")]
    pub skip: Option<usize>,
    /// Stop after M images [default: all].
    #[arg(long, value_name = "M")]
    pub max: Option<usize>,
    /// Seed of the noise [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Data directory (datasets are fetched into it on first use) [default: data].
    #[arg(long, env = "CRT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Output directory [default: out].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the rows already in the output directory's table and do only the images not in it.
    #[arg(long)]
    pub resume: bool,
}

impl CertifyArgs {
    /// The validated configuration these flags (and file) describe.
    pub fn into_run_config(self) -> anyhow::Result<RunConfig> {
        let file =
            self.common.config.as_deref().map(|p| read_kind(p, RunKind::Certify, RunConfig::Certify)).transpose()?;
        let mut cfg = match file {
            Some(RunConfig::Certify(c)) => c,
            Some(_) => unreachable!("read_kind returns the requested kind"),
            None => CertifyConfig {
                model: self.common.model_source()?,
                data_dir: PathBuf::from("data"),
                smoothing: SmoothingConfig::default(),
                out_dir: PathBuf::from("out"),
                resume: false,
            },
        };
        if let Some(n0) = self.n0 {
            cfg.smoothing.n0 = n0;
        }
        if let Some(radius) = self.radius {
            cfg.smoothing.mode = CertifyMode::TargetRadius { radius };
        }
        if let Some(tolerance) = self.tolerance {
            cfg.smoothing.mode = CertifyMode::Adaptive { tolerance };
        }
        self.common.apply(&mut cfg.model, &mut cfg.data_dir, &mut cfg.smoothing, &mut cfg.out_dir)?;
        cfg.resume |= self.common.resume;
        let run = RunConfig::Certify(cfg);
        run.validate().map_err(flag_error)?;
        Ok(run)
    }
}

impl PredictArgs {
    /// The validated configuration these flags (and file) describe.
    pub fn into_run_config(self) -> anyhow::Result<RunConfig> {
        let file =
            self.common.config.as_deref().map(|p| read_kind(p, RunKind::Predict, RunConfig::Predict)).transpose()?;
        let mut cfg = match file {
            Some(RunConfig::Predict(c)) => c,
            Some(_) => unreachable!("read_kind returns the requested kind"),
            None => PredictConfig {
                model: self.common.model_source()?,
                data_dir: PathBuf::from("data"),
                smoothing: SmoothingConfig::default(),
                out_dir: PathBuf::from("out"),
                resume: false,
            },
        };
        self.common.apply(&mut cfg.model, &mut cfg.data_dir, &mut cfg.smoothing, &mut cfg.out_dir)?;
        cfg.resume |= self.common.resume;
        let run = RunConfig::Predict(cfg);
        run.validate().map_err(flag_error)?;
        Ok(run)
    }
}

impl SmoothedArgs {
    /// The model the flags name; checked here so that the error names the flag.
    fn model_source(&self) -> anyhow::Result<ModelSource> {
        match (&self.model, &self.weights) {
            (Some(dir), _) => {
                if !dir.is_dir() {
                    bail!("--model {}: no such directory; expected a trainer output directory with model.safetensors and model.json", dir.display());
                }
                Ok(ModelSource::Dir { path: dir.clone() })
            }
            (None, Some(file)) => {
                if !file.is_file() {
                    bail!("--weights {}: no such file; expected a .safetensors file", file.display());
                }
                let arch = self.arch.ok_or_else(|| anyhow!("--arch is required with --weights"))?;
                let dataset = self.dataset.ok_or_else(|| anyhow!("--dataset is required with --weights"))?;
                if self.sigma.is_none() {
                    bail!("--sigma is required with --weights (bare weights record no training sigma)");
                }
                Ok(ModelSource::Weights { path: file.clone(), arch, dataset })
            }
            (None, None) => bail!(
                "give the model: --model DIR, or --weights FILE with --arch, --dataset and --sigma (or --config FILE)"
            ),
        }
    }

    /// Applies the flags that were given on top of the configuration's values.
    fn apply(
        &self,
        model: &mut ModelSource,
        data_dir: &mut PathBuf,
        smoothing: &mut SmoothingConfig,
        out_dir: &mut PathBuf,
    ) -> anyhow::Result<()> {
        if self.config.is_some() && (self.model.is_some() || self.weights.is_some()) {
            *model = self.model_source()?;
        }
        if self.sigma.is_some() {
            smoothing.sigma = self.sigma;
        }
        set(&mut smoothing.n, self.n);
        set(&mut smoothing.alpha, self.alpha);
        set(&mut smoothing.batch, self.batch);
        set(&mut smoothing.skip, self.skip);
        if self.max.is_some() {
            smoothing.max = self.max;
        }
        set(&mut smoothing.seed, self.seed);
        set(data_dir, self.data_dir.clone());
        set(out_dir, self.out.clone());
        Ok(())
    }
}

/// A config file of the given kind: bare (e.g. a CertifyConfig), or a RunConfig with that "kind".
fn read_kind<T: DeserializeOwned>(path: &Path, kind: RunKind, wrap: fn(T) -> RunConfig) -> anyhow::Result<RunConfig> {
    let value: Value = super::read_config(path)?;
    match value.get("kind").and_then(Value::as_str) {
        None => Ok(wrap(super::read_config::<T>(path)?)),
        Some(k) if k == kind.as_str() => super::read_config::<RunConfig>(path),
        Some(other) => bail!(
            "--config {}: kind is '{other}', expected '{}' (run it with `crt-trainer run`)",
            path.display(),
            kind.as_str()
        ),
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// A validation error phrased for the command line: the flag first, then the config field.
fn flag_error(e: ConfigError) -> anyhow::Error {
    let flag =
        e.field.strip_prefix("smoothing.").map(|f| format!("--{}", f.trim_start_matches("mode.").replace('_', "-")));
    match flag {
        Some(flag) => anyhow!("{flag}: {} (config field {})", e.message, e.field),
        None => anyhow!("{}: {}", e.field, e.message),
    }
}
