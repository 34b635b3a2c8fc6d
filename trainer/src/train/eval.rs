//! Test-split evaluation after each epoch: clean accuracy and, for a noise level, accuracy of the
//! base classifier under one Gaussian draw per image (evaluation mode: BatchNorm running statistics).

use candle_core::{DType, Tensor, D};
use rand::rngs::StdRng;

use crate::data::Split;
use crate::models::Model;
use crate::stop::StopFlag;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub clean: f64,
    /// None when no noise level applies (standard training).
    pub noisy: Option<f64>,
}

/// Accuracy on `split`, `batch_size` images at a time; noise for the noisy accuracy comes from `rng`.
/// Returns None when `stop` is raised before it finishes (a stop request need not wait for it).
pub fn evaluate(
    model: &Model,
    split: &Split,
    batch_size: usize,
    sigma: Option<f64>,
    rng: &mut StdRng,
    stop: &StopFlag,
) -> anyhow::Result<Option<Accuracy>> {
    let (mut clean, mut noisy) = (0u64, 0u64);
    for batch in split.batches(batch_size, model.device()) {
        if stop.is_raised() {
            return Ok(None);
        }
        let batch = batch?;
        clean += correct(&model.forward_t(&batch.images, false)?, &batch.labels)?;
        if let Some(sigma) = sigma {
            let noise = crate::noise::gaussian(rng, batch.images.shape(), sigma, model.device())?;
            noisy += correct(&model.forward_t(&(&batch.images + noise)?, false)?, &batch.labels)?;
        }
    }
    let n = split.len().max(1) as f64;
    Ok(Some(Accuracy { clean: clean as f64 / n, noisy: sigma.map(|_| noisy as f64 / n) }))
}

/// How many rows of `logits` have their largest entry at the label.
pub fn correct(logits: &Tensor, labels: &Tensor) -> candle_core::Result<u64> {
    let predicted = logits.argmax(D::Minus1)?;
    let hits = predicted.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()?;
    Ok(u64::from(hits))
}
