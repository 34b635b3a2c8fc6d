//! Consistency regularization (Jeong & Shin 2020), the official "default" form.

use candle_core::{Result, Tensor};

use super::common::{copies_cross_entropy, copies_logits, kl_rows, log_softmax};
use crate::models::Model;

/// Floor inside the entropy's log, as in the official code.
const ENTROPY_FLOOR: f64 = 1e-20;

/// loss = (1/(B m)) sum_{b,i} CE(z_{b,i}, y_b)
///      + (1/B) sum_b [lambda (1/m) sum_i KL(p_bar_b || p_{b,i}) + eta H(p_bar_b)]
/// with z_{b,i} = f(x_b + noise_{b,i}), p = softmax(z), p_bar_b = (1/m) sum_i p_{b,i} (not detached).
/// Train mode; noise [B, m, C, H, W].
pub fn consistency_loss(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    noise: &Tensor,
    lambda: f64,
    eta: f64,
) -> Result<Tensor> {
    let logits = copies_logits(model, x, noise, true)?;
    let ce = copies_cross_entropy(&logits, y)?;
    let log_p = log_softmax(&logits)?;
    let p_bar = log_p.exp()?.mean(1)?;
    let kl = kl_rows(&p_bar.unsqueeze(1)?, &log_p)?.mean(1)?;
    let entropy = (&p_bar * p_bar.maximum(ENTROPY_FLOOR)?.log()?)?.sum(1)?.neg()?;
    let regularizer = (kl.affine(lambda, 0.0)? + entropy.affine(eta, 0.0)?)?.mean_all()?;
    ce + regularizer
}
