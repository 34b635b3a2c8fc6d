//! Gaussian data augmentation (Cohen et al. 2019) and plain training.

use candle_core::{Result, Tensor};

use super::common::cross_entropy;
use crate::models::Model;

/// (1/B) sum_b CE(f(x_b + noise_b), y_b); noise [B, C, H, W] is already scaled by sigma.
pub fn gaussian_loss(model: &Model, x: &Tensor, y: &Tensor, noise: &Tensor) -> Result<Tensor> {
    standard_loss(model, &(x + noise)?, y)
}

/// (1/B) sum_b CE(f(x_b), y_b): standard training, train mode.
pub fn standard_loss(model: &Model, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    cross_entropy(&model.forward_t(x, true)?, y)
}
