//! Student losses against a frozen teacher on the same noisy inputs: CRT logit matching
//! (Vaishnavi et al. 2022) and Hinton knowledge distillation.

use candle_core::{Result, Tensor};

use super::common::{cross_entropy, kl_rows, log_softmax, softmax};
use crate::models::Model;

/// Student logits (train mode) and teacher logits (eval mode, detached) on x + noise.
fn logits_pair(student: &Model, teacher: &Model, x: &Tensor, noise: &Tensor) -> Result<(Tensor, Tensor)> {
    let inputs = (x + noise)?;
    let z_t = teacher.forward_t(&inputs, false)?.detach();
    Ok((student.forward_t(&inputs, true)?, z_t))
}

/// logit_weight * (1/B) sum_b ||z_s,b - z_t,b||_2 + (1 - logit_weight) * (1/B) sum_b CE(z_s,b, y_b);
/// the distance is the plain (unsquared) Euclidean norm over the logits. A term whose weight is
/// zero is not computed.
pub fn crt_loss(
    student: &Model,
    teacher: &Model,
    x: &Tensor,
    y: &Tensor,
    noise: &Tensor,
    logit_weight: f64,
) -> Result<Tensor> {
    let (z_s, z_t) = logits_pair(student, teacher, x, noise)?;
    let mut loss = Tensor::zeros((), z_s.dtype(), z_s.device())?;
    if logit_weight != 0.0 {
        let distance = (&z_s - &z_t)?.sqr()?.sum(1)?.sqrt()?.mean_all()?;
        loss = (loss + distance.affine(logit_weight, 0.0)?)?;
    }
    if logit_weight != 1.0 {
        loss = (loss + cross_entropy(&z_s, y)?.affine(1.0 - logit_weight, 0.0)?)?;
    }
    Ok(loss)
}

/// T^2 (1/B) sum_b KL(softmax(z_t,b / T) || softmax(z_s,b / T)) + ce_weight (1/B) sum_b CE(z_s,b, y_b)
/// ("batchmean"); the cross-entropy is not computed when ce_weight is zero.
pub fn kd_loss(
    student: &Model,
    teacher: &Model,
    x: &Tensor,
    y: &Tensor,
    noise: &Tensor,
    temperature: f64,
    ce_weight: f64,
) -> Result<Tensor> {
    let (z_s, z_t) = logits_pair(student, teacher, x, noise)?;
    let inv_t = 1.0 / temperature;
    let p_t = softmax(&z_t.affine(inv_t, 0.0)?)?;
    let log_q = log_softmax(&z_s.affine(inv_t, 0.0)?)?;
    let mut loss = kl_rows(&p_t, &log_q)?.mean_all()?.affine(temperature * temperature, 0.0)?;
    if ce_weight != 0.0 {
        loss = (loss + cross_entropy(&z_s, y)?.affine(ce_weight, 0.0)?)?;
    }
    Ok(loss)
}
