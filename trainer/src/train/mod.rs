//! Training: `crt-trainer train` (a model from scratch with one method) and `crt-trainer transfer`
//! (a student from scratch guided by a frozen teacher) share one loop ([`fit`]), optimizer,
//! schedule, checkpoints and events; they differ only in the [`Objective`] each step minimizes.
//!
//! Reproducibility: all randomness comes from seeded RNGs — initialization (`Model::new`), data order
//! and augmentation (`data::epoch_rng(seed, epoch)`), step noise (`step_rng(seed, step)`) and
//! evaluation noise (`eval_rng(seed, epoch)`) — so the same seed and thread count give the same
//! weights, and a resumed run needs only its position to continue bit for bit.

pub mod checkpoint;
pub mod eval;
mod fit;
mod objective;
pub mod optim;
mod streams;
pub mod transfer;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

pub use fit::{fit, Fit, Job};
pub use objective::{Objective, StepInput, StepLoss};
pub use streams::{eval_rng, step_rng};

use crate::config::{DataConfig, Dataset, TrainConfig};
use crate::context::{Context, Outcome};
use crate::data::{self, Augmentation, Split};
use crate::events::ArtifactKind;
use crate::models::meta::{Provenance, META_FILE, WEIGHTS_FILE};
use crate::models::{Model, ModelMeta};

/// `crt-trainer train`: `cfg` must be validated and resolved (`TrainConfig::resolve`).
pub fn train(cfg: &TrainConfig, ctx: &Context) -> anyhow::Result<Outcome> {
    let (train_split, test_split) = load_splits(&cfg.data)?;
    create_out_dir(&cfg.out_dir)?;
    let model = Model::new(cfg.arch, cfg.data.dataset, &ctx.device, cfg.seed)?;
    let identity = identity(&[
        ("kind", "train".into()),
        ("data.dataset", serde_json::to_value(cfg.data.dataset)?),
        ("data.train_subset", serde_json::to_value(cfg.data.train_subset)?),
        ("arch", serde_json::to_value(cfg.arch)?),
        ("method", serde_json::to_value(&cfg.method)?),
        ("optim.batch_size", cfg.optim.batch_size.into()),
        ("seed", cfg.seed.into()),
    ]);
    let job = Job {
        model: &model,
        objective: &cfg.method,
        train: &train_split,
        test: &test_split,
        optim: &cfg.optim,
        seed: cfg.seed,
        out_dir: &cfg.out_dir,
        resume: cfg.resume,
        eval_sigma: cfg.method.sigma(),
        augment: augmentation(cfg.data.dataset),
        identity,
    };
    let outcome = fit(&job, ctx)?;
    let provenance = Provenance::Train { method: cfg.method.clone() };
    let made = Made { provenance, sigma: cfg.method.sigma(), epochs: cfg.optim.epochs, seed: cfg.seed };
    finish(outcome, &model, made, &cfg.out_dir, ctx)
}

/// Fetches the dataset on first use and loads both splits, cut to the configured subsets.
pub fn load_splits(data_cfg: &DataConfig) -> anyhow::Result<(Split, Split)> {
    let (dataset, dir) = (data_cfg.dataset, &data_cfg.data_dir);
    data::ensure_dataset(dataset, dir)
        .with_context(|| format!("data.dataset {}: cannot get the files into {}", dataset.as_str(), dir.display()))?;
    let mut train = data::load(dataset, dir, true)?;
    let mut test = data::load(dataset, dir, false)?;
    if let Some(n) = data_cfg.train_subset {
        train = train.subset(n);
    }
    if let Some(n) = data_cfg.test_subset {
        test = test.subset(n);
    }
    Ok((train, test))
}

/// Random crop and flip for CIFAR-10 (as the references train it); none for the MNIST family.
pub fn augmentation(dataset: Dataset) -> Option<Augmentation> {
    match dataset {
        Dataset::Cifar10 => Some(Augmentation::CIFAR),
        Dataset::Mnist | Dataset::FashionMnist => None,
    }
}

pub(crate) fn create_out_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("out_dir {}: cannot create it", dir.display()))
}

pub(crate) fn identity(pairs: &[(&str, serde_json::Value)]) -> BTreeMap<String, serde_json::Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// How a model was made, for its `model.json`.
pub(crate) struct Made {
    pub provenance: Provenance,
    pub sigma: Option<f64>,
    pub epochs: usize,
    pub seed: u64,
}

/// Writes `model.safetensors` and `model.json` after a finished fit, reporting both; maps the fit
/// to the run's outcome.
pub(crate) fn finish(
    outcome: Fit,
    model: &Model,
    made: Made,
    out_dir: &Path,
    ctx: &Context,
) -> anyhow::Result<Outcome> {
    let (metrics, elapsed_s) = match outcome {
        Fit::Stopped { checkpoint } => {
            return Ok(Outcome::Stopped { checkpoint: Some(checkpoint.display().to_string()) });
        }
        Fit::Finished { metrics, elapsed_s } => (metrics, elapsed_s),
    };
    let weights = out_dir.join(WEIGHTS_FILE);
    checkpoint::save_model_atomic(model, &weights)?;
    ctx.reporter.artifact(&weights, ArtifactKind::Model)?;
    let meta = ModelMeta {
        arch: model.arch,
        dataset: model.dataset,
        normalization: model.normalization.clone(),
        provenance: made.provenance,
        sigma: made.sigma,
        epochs: made.epochs,
        seed: made.seed,
        parameters: model.parameter_count(),
        final_metrics: metrics.clone(),
        wall_time_s: elapsed_s,
        trainer_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let meta_path = out_dir.join(META_FILE);
    checkpoint::write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    ctx.reporter.artifact(&meta_path, ArtifactKind::Metadata)?;
    let mut summary = metrics;
    summary.insert("train_time_s".into(), elapsed_s);
    Ok(Outcome::Finished { summary })
}
