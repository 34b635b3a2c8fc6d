//! SmoothMix (Jeong et al. 2021), official code with mix_step = 0: an unbounded L2 attack on the
//! smoothed soft classifier, then mixup between x and the adversarial point with a soft target.

use candle_core::{Result, Tensor};

use super::common::{
    argmax_rows, copies_cross_entropy, copies_logits, input_gradient, kl_rows, labels_vec, log_softmax, mask_tensor,
    per_sample, sample_norms, smoothed_nll, softmax,
};
use super::smoothadv::Attack;
use crate::models::Model;

/// T steps from x' = x (model in eval mode): x'_b = clamp(x'_b + step_size g_b / (||g_b|| + 1e-8), 0, 1)
/// with g the gradient of sum_b -log(max(mean_i softmax(f(x'_b + noise_{b,i}))_{y_b}, 1e-20)).
pub fn smoothmix_attack(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    noise: &Tensor,
    step_size: f64,
    steps: usize,
) -> Result<Attack> {
    let mut adv = x.detach();
    let (mut iterates, mut objectives) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
    for _ in 0..steps {
        let (objective, grad) =
            input_gradient(&adv, |xa| smoothed_nll(&copies_logits(model, xa, noise, false)?, y)?.sum_all())?;
        let norms = sample_norms(&grad)?.affine(1.0, 1e-8)?;
        let step = grad.broadcast_div(&per_sample(&norms, &grad)?)?.affine(step_size, 0.0)?;
        adv = (adv + step)?.clamp(0f32, 1f32)?;
        iterates.push(adv.clone());
        objectives.push(objective);
    }
    Ok(Attack { x_adv: adv, iterates, objectives })
}

/// The loss and which samples entered the mixup term.
pub struct SmoothMixOutput {
    pub loss: Tensor,
    /// argmax_c p_bar_{b,c} = y_b.
    pub correct: Vec<bool>,
}

/// loss = (1/(B m)) sum CE(z_{b,i}, y_b) + eta w (1/(B m)) sum_{b,i} c_b KL(t_b || softmax(u_{b,i}))
/// with z = f(x + noise), p_bar = mean_i softmax(z) (not detached), x_mix = (1 - lam) x + lam x_adv,
/// t = (1 - lam) p_bar + lam / C (not detached), u = f(x_mix + noise) with the same draws, and
/// c_b = 1[argmax p_bar_b = y_b]. Train mode; x_adv and lam [B] are constants; w is the warm-up factor.
#[allow(clippy::too_many_arguments)]
pub fn smoothmix_loss(
    model: &Model,
    x: &Tensor,
    y: &Tensor,
    noise: &Tensor,
    x_adv: &Tensor,
    lam: &Tensor,
    eta: f64,
    w: f64,
) -> Result<SmoothMixOutput> {
    let logits_clean = copies_logits(model, x, noise, true)?;
    let ce = copies_cross_entropy(&logits_clean, y)?;
    let p_bar = softmax(&logits_clean)?.mean(1)?;
    let classes = p_bar.dim(1)?;
    let lam = lam.detach();
    let keep = lam.affine(-1.0, 1.0)?;
    let x_mix = (x.broadcast_mul(&per_sample(&keep, x)?)? + x_adv.detach().broadcast_mul(&per_sample(&lam, x)?)?)?;
    let uniform_share = lam.affine(1.0 / classes as f64, 0.0)?.unsqueeze(1)?;
    let target = p_bar.broadcast_mul(&keep.unsqueeze(1)?)?.broadcast_add(&uniform_share)?;
    let logits_mix = copies_logits(model, &x_mix, noise, true)?;
    let kl = kl_rows(&target.unsqueeze(1)?, &log_softmax(&logits_mix)?)?;
    let labels = labels_vec(y)?;
    let correct: Vec<bool> = argmax_rows(&p_bar)?.iter().zip(&labels).map(|(a, l)| a == l).collect();
    let mix = kl.broadcast_mul(&mask_tensor(&correct, &kl)?.unsqueeze(1)?)?.mean_all()?;
    let loss = (ce + mix.affine(eta * w, 0.0)?)?;
    Ok(SmoothMixOutput { loss, correct })
}
