//! Training objectives of randomized-smoothing methods and of certified-robustness transfer.
//!
//! Each loss is a pure function of the model(s), the batch and the random draws it uses (noise
//! already scaled by sigma, mixing coefficients), so it can be checked exactly against the PyTorch
//! fixtures in `tests/data/fixtures/` (see `tests/methods_fixtures.rs`). Attacks run the model in
//! eval mode, losses in train mode, as the official code does.
//!
//! Entry points for the training loop, which draw the random quantities from its seeded RNG:
//!
//! ```text
//! pub fn training_loss(method: &Method, model: &Model, x: &Tensor, y: &Tensor,
//!                      epoch: usize, rng: &mut StdRng) -> candle_core::Result<Tensor>
//! pub fn transfer_loss(loss: &TransferLoss, student: &Model, teacher: &Model, x: &Tensor,
//!                      y: &Tensor, sigma: f64, rng: &mut StdRng) -> candle_core::Result<Tensor>
//! ```
//!
//! x is [B, C, H, W] f32 in [0, 1], y is [B] u32 (or i64); `epoch` is 0-based. The result is the
//! scalar loss of one optimizer step; call `backward()` on it and read each trainable variable's
//! gradient. One optimizer step per batch for every method: SmoothMix's and SmoothAdv's official
//! code split a batch into chunks and step once per chunk; here the whole batch (each image with its
//! m noisy copies) is one step, so the loop's batch size is the chunk size.
//!
//! Schedules applied here: SmoothAdv's epsilon grows linearly, min(eps, eps (epoch + 1) / warmup);
//! MACER's robustness term is off while epoch < deferred_epochs; SmoothMix's mixup term is weighted
//! by w = min(1, (epoch + 1) / warmup) and its mixing coefficients are drawn from U[0, 1/2).

mod common;
mod consistency;
pub mod cost;
mod gaussian;
mod macer;
mod smoothadv;
mod smoothmix;
mod transfer;

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

pub use common::{phi_inv, phi_inv_value};
pub use consistency::consistency_loss;
pub use gaussian::{gaussian_loss, standard_loss};
pub use macer::{macer_loss, MacerOutput, MacerParams};
pub use smoothadv::{smoothadv_attack, smoothadv_loss, Attack};
pub use smoothmix::{smoothmix_attack, smoothmix_loss, SmoothMixOutput};
pub use transfer::{crt_loss, kd_loss};

use crate::config::{Method, TransferLoss};
use crate::models::Model;
use crate::noise;

/// The loss of one training step of `method` on the batch (x, y) at `epoch` (0-based).
/// Random draws, in order: the noise (one draw per image for gaussian, m or k per image for the
/// others, [B, n, C, H, W]), then SmoothMix's B mixing coefficients.
pub fn training_loss(
    method: &Method,
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    epoch: usize,
    rng: &mut StdRng,
) -> Result<Tensor> {
    match *method {
        Method::Standard => standard_loss(model, x, y),
        Method::Gaussian { sigma } => gaussian_loss(model, x, y, &noise::gaussian(rng, x.shape(), sigma, x.device())?),
        Method::SmoothAdv { sigma, m, steps, epsilon, warmup_epochs } => {
            let noise = copies_noise(rng, x, m, sigma)?;
            let epsilon = smoothadv_epsilon(epsilon, warmup_epochs, epoch);
            let x_adv =
                if epsilon > 0.0 { smoothadv_attack(model, x, y, &noise, epsilon, steps)?.x_adv } else { x.clone() };
            smoothadv_loss(model, &x_adv, y, &noise)
        }
        Method::Macer { sigma, k, lambda, beta, gamma, deferred_epochs } => {
            let noise = copies_noise(rng, x, k, sigma)?;
            let lambda = if macer_robust(deferred_epochs, epoch) { lambda } else { 0.0 };
            Ok(macer_loss(model, x, y, &noise, &MacerParams { sigma, lambda, beta, gamma })?.loss)
        }
        Method::Consistency { sigma, m, lambda, eta } => {
            consistency_loss(model, x, y, &copies_noise(rng, x, m, sigma)?, lambda, eta)
        }
        Method::SmoothMix { sigma, m, steps, step_size, eta, warmup_epochs } => {
            let noise = copies_noise(rng, x, m, sigma)?;
            let lam = mixing_coefficients(rng, x)?;
            let attack = smoothmix_attack(model, x, y, &noise, step_size, steps)?;
            let w = smoothmix_warmup(warmup_epochs, epoch);
            Ok(smoothmix_loss(model, x, y, &noise, &attack.x_adv, &lam, eta, w)?.loss)
        }
    }
}

/// The loss of one transfer step: one noise draw per image at `sigma`, shared by student and teacher.
pub fn transfer_loss(
    loss: &TransferLoss,
    student: &Model,
    teacher: &Model,
    x: &Tensor,
    y: &Tensor,
    sigma: f64,
    rng: &mut StdRng,
) -> Result<Tensor> {
    let noise = noise::gaussian(rng, x.shape(), sigma, x.device())?;
    match *loss {
        TransferLoss::Crt { logit_weight } => crt_loss(student, teacher, x, y, &noise, logit_weight),
        TransferLoss::Kd { temperature, ce_weight } => kd_loss(student, teacher, x, y, &noise, temperature, ce_weight),
    }
}

/// SmoothAdv's attack radius at `epoch`: min(eps, eps (epoch + 1) / warmup); warmup 0 means none.
pub fn smoothadv_epsilon(epsilon: f64, warmup_epochs: usize, epoch: usize) -> f64 {
    epsilon * warmup_factor(warmup_epochs, epoch)
}

/// SmoothMix's mixup weight at `epoch`: min(1, (epoch + 1) / warmup); warmup 0 means none.
pub fn smoothmix_warmup(warmup_epochs: usize, epoch: usize) -> f64 {
    warmup_factor(warmup_epochs, epoch)
}

/// Whether MACER's robustness term is on at `epoch` (off for the first `deferred_epochs`).
pub fn macer_robust(deferred_epochs: usize, epoch: usize) -> bool {
    epoch >= deferred_epochs
}

fn warmup_factor(warmup_epochs: usize, epoch: usize) -> f64 {
    if warmup_epochs == 0 {
        1.0
    } else {
        ((epoch + 1) as f64 / warmup_epochs as f64).min(1.0)
    }
}

/// n noise draws per image: [B, n, C, H, W].
fn copies_noise(rng: &mut StdRng, x: &Tensor, n: usize, sigma: f64) -> Result<Tensor> {
    let mut shape = x.dims().to_vec();
    shape.insert(1, n);
    noise::gaussian(rng, shape, sigma, x.device())
}

/// SmoothMix's per-image mixing coefficients, U[0, 1/2).
fn mixing_coefficients(rng: &mut StdRng, x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    let lam: Vec<f32> = (0..b).map(|_| rng.random::<f32>() / 2.0).collect();
    Tensor::from_vec(lam, b, x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(smoothadv_epsilon(0.5, 10, 0), 0.05);
        assert_eq!(smoothadv_epsilon(0.5, 10, 9), 0.5);
        assert_eq!(smoothadv_epsilon(0.5, 10, 30), 0.5);
        assert_eq!(smoothadv_epsilon(0.5, 0, 0), 0.5);
        assert_eq!(smoothmix_warmup(4, 1), 0.5);
        assert_eq!(smoothmix_warmup(0, 0), 1.0);
        assert!(!macer_robust(2, 1));
        assert!(macer_robust(2, 2));
        assert!(macer_robust(0, 0));
    }
}
