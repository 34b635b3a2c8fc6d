//! A certify or predict run from its configuration: load the model (trainer directory or bare
//! weights), settle sigma, fetch and load the test split, pick every skip-th image up to max, and
//! evaluate them.

use std::path::Path;

use anyhow::{bail, Context as _};
use candle_core::Device;

use super::evaluate::{certify_images, predict_images, LabeledImage, Sink};
use super::smoothed::Smoothing;
use crate::cli::run::{Context, Outcome};
use crate::config::{CertifyConfig, Dataset, ModelSource, PredictConfig, SmoothingConfig};
use crate::data::{self, Split};
use crate::models::Model;

/// `crt-trainer certify`: Cohen et al.'s CERTIFY on the test split.
pub fn run_certify(config: &CertifyConfig, ctx: &Context) -> anyhow::Result<Outcome> {
    let job = Job::prepare(&config.model, &config.data_dir, &config.smoothing, ctx)?;
    let run = certify_images(&job.model, &job.images(), &job.params, job.sink(&config.out_dir, config.resume, ctx))?;
    Ok(match run.summary {
        Some(summary) => Outcome::Finished { summary: summary.metrics() },
        None => Outcome::Stopped { checkpoint: None },
    })
}

/// `crt-trainer predict`: Cohen et al.'s PREDICT on the test split.
pub fn run_predict(config: &PredictConfig, ctx: &Context) -> anyhow::Result<Outcome> {
    let job = Job::prepare(&config.model, &config.data_dir, &config.smoothing, ctx)?;
    let run = predict_images(&job.model, &job.images(), &job.params, job.sink(&config.out_dir, config.resume, ctx))?;
    Ok(match run.summary {
        Some(summary) => Outcome::Finished { summary: summary.metrics() },
        None => Outcome::Stopped { checkpoint: None },
    })
}

/// Everything a run needs, loaded.
struct Job {
    model: Model,
    params: Smoothing,
    split: Split,
    indices: Vec<usize>,
}

impl Job {
    fn prepare(
        source: &ModelSource,
        data_dir: &Path,
        smoothing: &SmoothingConfig,
        ctx: &Context,
    ) -> anyhow::Result<Self> {
        let (model, trained_sigma) = load_model(source, &ctx.device)?;
        // A model directory names its architecture only now: the batch's memory bound for it.
        smoothing
            .check_batch_memory("smoothing", model.arch, model.dataset)
            .map_err(|e| anyhow::anyhow!("{} (--batch): {} (model {})", e.field, e.message, source_name(source)))?;
        let sigma = resolve_sigma(smoothing.sigma, trained_sigma, source)?;
        if let (Some(given), Some(trained)) = (smoothing.sigma, trained_sigma) {
            if given != trained {
                ctx.reporter.log(format!("certifying at sigma {given}; the model was trained at sigma {trained}"));
            }
        }
        let split = load_test_split(model.dataset, data_dir)?;
        let indices = select(split.len(), smoothing.skip, smoothing.max);
        ctx.reporter.log(format!(
            "{} {} on {}: {} of {} test images, sigma {sigma}",
            model.arch.as_str(),
            source_name(source),
            model.dataset.as_str(),
            indices.len(),
            split.len()
        ));
        let params = Smoothing::from_config(smoothing, sigma);
        if let Some(test) = params.sequential() {
            ctx.reporter.log(format!(
                "sequential mode {}: {} looks ({:?}), each at level {:.3e}",
                params.mode.name(),
                test.looks().len(),
                test.looks(),
                test.alpha_per_look()
            ));
            if let crate::config::CertifyMode::TargetRadius { radius } = params.mode {
                if radius > test.max_radius() {
                    ctx.reporter.log(format!(
                        "target radius {radius} exceeds {:.4}, the largest radius n = {} samples can certify: \
                         no image will certify",
                        test.max_radius(),
                        params.n
                    ));
                }
            }
        }
        Ok(Job { model, params, split, indices })
    }

    fn images(&self) -> Vec<LabeledImage<'_>> {
        self.indices
            .iter()
            .map(|&i| LabeledImage {
                idx: i as u64,
                label: i64::from(self.split.label(i)),
                pixels: self.split.image(i),
            })
            .collect()
    }

    fn sink<'a>(&self, out_dir: &'a Path, resume: bool, ctx: &'a Context) -> Sink<'a> {
        Sink { out_dir, reporter: ctx.reporter, stop: &ctx.stop, resume }
    }
}

/// The model and the sigma it was trained at (when its model.json records one).
fn load_model(source: &ModelSource, device: &Device) -> anyhow::Result<(Model, Option<f64>)> {
    match source {
        ModelSource::Dir { path } => {
            if !path.is_dir() {
                bail!("model.path (--model) {}: no such directory; expected a trainer output directory with model.safetensors and model.json", path.display());
            }
            let (model, meta) =
                Model::load_dir(path, device).with_context(|| format!("model.path (--model) {}", path.display()))?;
            Ok((model, meta.sigma))
        }
        ModelSource::Weights { path, arch, dataset } => {
            if !path.is_file() {
                bail!("model.path (--weights) {}: no such file; expected a .safetensors file", path.display());
            }
            let model = Model::load_weights(*arch, *dataset, path, device)
                .with_context(|| format!("model.path (--weights) {}", path.display()))?;
            Ok((model, None))
        }
    }
}

/// The given sigma, else the training sigma from model.json; bare weights have none to fall back on.
fn resolve_sigma(given: Option<f64>, trained: Option<f64>, source: &ModelSource) -> anyhow::Result<f64> {
    if let Some(sigma) = given.or(trained) {
        return Ok(sigma);
    }
    match source {
        ModelSource::Dir { path } => bail!(
            "smoothing.sigma (--sigma) is required: {} records no training sigma (a standard-trained model?)",
            path.join(crate::models::meta::META_FILE).display()
        ),
        ModelSource::Weights { .. } => {
            bail!("smoothing.sigma (--sigma) is required when certifying bare weights (--weights)")
        }
    }
}

fn load_test_split(dataset: Dataset, data_dir: &Path) -> anyhow::Result<Split> {
    data::ensure_dataset(dataset, data_dir)
        .with_context(|| format!("data_dir (--data-dir) {}: cannot get {}", data_dir.display(), dataset.as_str()))?;
    data::load(dataset, data_dir, false).with_context(|| {
        format!("data_dir (--data-dir) {}: cannot load the {} test split", data_dir.display(), dataset.as_str())
    })
}

/// Every `skip`-th index from 0, at most `max` of them.
pub fn select(len: usize, skip: usize, max: Option<usize>) -> Vec<usize> {
    (0..len).step_by(skip.max(1)).take(max.unwrap_or(usize::MAX)).collect()
}

fn source_name(source: &ModelSource) -> String {
    match source {
        ModelSource::Dir { path } | ModelSource::Weights { path, .. } => path.display().to_string(),
    }
}
