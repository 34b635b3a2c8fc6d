//! SmoothAdv (Salman et al. 2019): L2 PGD on the smoothed soft classifier with m fixed noise draws,
//! then cross-entropy on the noisy copies of the adversarial point.

use candle_core::{Result, Tensor};

use super::common::{copies_cross_entropy, copies_logits, input_gradient, per_sample, sample_norms, smoothed_nll};
use crate::models::Model;

/// An attack's result: the final point and, for inspection, every iterate and objective value.
pub struct Attack {
    /// The last iterate (detached): the input of the training loss.
    pub x_adv: Tensor,
    /// x' after step t, for t = 1..T.
    pub iterates: Vec<Tensor>,
    /// The objective at the start of each step.
    pub objectives: Vec<f32>,
}

/// T steps of PGD from delta = 0 (model in eval mode), each:
/// delta += (2 eps / T) g / ||g||; delta = clamp(x + delta, 0, 1) - x; then, where ||delta|| > eps,
/// delta *= eps / (||delta|| + 1e-7) (the clamp precedes the projection, as in the official code).
/// The objective is mean_b -log(max(mean_i softmax(f(x'_b + noise_{b,i}))_{y_b}, 1e-20)).
/// A sample whose gradient is exactly zero takes no step (the official code substitutes an
/// unnormalized random direction; a flat objective gives no direction worth taking).
pub fn smoothadv_attack(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    noise: &Tensor,
    epsilon: f64,
    steps: usize,
) -> Result<Attack> {
    let step_size = 2.0 * epsilon / steps as f64;
    let x = x.detach();
    let mut delta = x.zeros_like()?;
    let (mut iterates, mut objectives) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for _ in 0..steps {
        let (objective, grad) = input_gradient(&(&x + &delta)?, |xa| {
            smoothed_nll(&copies_logits(model, xa, noise, false)?, y)?.mean_all()
        })?;
        let direction = grad.broadcast_div(&per_sample(&safe_norms(&grad)?, &grad)?)?;
        delta = (delta + direction.affine(step_size, 0.0)?)?;
        delta = ((&x + &delta)?.clamp(0f32, 1f32)? - &x)?;
        delta = project(&delta, epsilon)?;
        iterates.push((&x + &delta)?);
        objectives.push(objective);
    }
    Ok(Attack { x_adv: (&x + &delta)?, iterates, objectives })
}

/// Per-sample gradient norms with zeros replaced by +inf, so that a zero gradient gives a zero step.
fn safe_norms(grad: &Tensor) -> Result<Tensor> {
    let norms = sample_norms(grad)?;
    let inf = Tensor::full(f32::INFINITY, norms.shape(), norms.device())?;
    norms.eq(0f32)?.where_cond(&inf, &norms)
}

/// Scales each sample of delta with norm above eps by eps / (norm + 1e-7) (`torch.renorm`'s factor).
fn project(delta: &Tensor, epsilon: f64) -> Result<Tensor> {
    let norms = sample_norms(delta)?;
    let shrink = Tensor::full(epsilon as f32, norms.shape(), norms.device())?.div(&norms.affine(1.0, 1e-7)?)?;
    let factor = norms.gt(epsilon)?.where_cond(&shrink, &norms.ones_like()?)?;
    delta.broadcast_mul(&per_sample(&factor, delta)?)
}

/// (1/(B m)) sum_{b,i} CE(f(x_adv_b + noise_{b,i}), y_b), train mode; x_adv is a constant.
pub fn smoothadv_loss(model: &Model, x_adv: &Tensor, y: &Tensor, noise: &Tensor) -> Result<Tensor> {
    copies_cross_entropy(&copies_logits(model, &x_adv.detach(), noise, true)?, y)
}
