//! MACER (Zhai et al. 2020), as in the official code: a classification term on the averaged softmax
//! of k noisy copies plus a hinge on the certified-radius margin of correctly classified samples.

use candle_core::{Result, Tensor};

use super::common::{copies_logits, labels_vec, phi_inv, phi_inv_value, pick, softmax, top2};
use crate::models::Model;

/// MACER's weights. `lambda = 0` switches the robustness term off (and skips computing it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MacerParams {
    pub sigma: f64,
    pub lambda: f64,
    pub beta: f64,
    pub gamma: f64,
}

/// The loss and the per-sample decisions behind it.
pub struct MacerOutput {
    pub loss: Tensor,
    /// argmax_c q_{b,c} = y_b (q: the beta-softmax average).
    pub correct: Vec<bool>,
    /// The set S: correct, xi finite and |xi| <= gamma.
    pub kept: Vec<bool>,
    /// xi_b = PhiInv(pA_b) - PhiInv(pB_b) for every sample (may be infinite).
    pub xi: Vec<f64>,
}

/// loss = (CL + lambda RL) / B with
/// CL = sum_b -log(p_bar_{b,y_b} + 1e-10), p_bar = mean_j softmax(z_{b,j}), z = f(x_b + noise_{b,j});
/// RL = (sigma / 2) sum_{b in S} (PhiInv(pB_b) - PhiInv(pA_b) + gamma), pA, pB the two largest
/// entries of q_b = mean_j softmax(beta z_{b,j}). The gradient reaches pA and pB through the
/// top-2 indices; S itself is a constant. Train mode; noise [B, k, C, H, W].
pub fn macer_loss(model: &Model, x: &Tensor, y: &Tensor, noise: &Tensor, params: &MacerParams) -> Result<MacerOutput> {
    let batch = x.dim(0)?;
    let logits = copies_logits(model, x, noise, true)?;
    let p_bar = softmax(&logits)?.mean(1)?;
    let cl = pick(&p_bar, y)?.affine(1.0, 1e-10)?.log()?.neg()?.sum_all()?;
    if params.lambda == 0.0 {
        let loss = cl.affine(1.0 / batch as f64, 0.0)?;
        return Ok(MacerOutput {
            loss,
            correct: vec![false; batch],
            kept: vec![false; batch],
            xi: vec![f64::NAN; batch],
        });
    }
    let q = softmax(&logits.affine(params.beta, 0.0)?)?.mean(1)?;
    let decisions = Decisions::new(&q, y, params.gamma)?;
    let rl = robustness_term(&q, &decisions, params)?;
    let loss = (cl + rl.affine(params.lambda, 0.0)?)?.affine(1.0 / batch as f64, 0.0)?;
    Ok(MacerOutput { loss, correct: decisions.correct, kept: decisions.kept, xi: decisions.xi })
}

/// The discrete choices of the robustness term, made on the host from the values of q.
struct Decisions {
    top: Vec<(usize, usize)>,
    correct: Vec<bool>,
    kept: Vec<bool>,
    xi: Vec<f64>,
}

impl Decisions {
    fn new(q: &Tensor, y: &Tensor, gamma: f64) -> Result<Self> {
        let rows = q.to_vec2::<f32>()?;
        let labels = labels_vec(y)?;
        let top: Vec<(usize, usize)> = rows.iter().map(|r| top2(r)).collect();
        let xi: Vec<f64> =
            rows.iter().zip(&top).map(|(r, &(a, b))| phi_inv_value(r[a]) - phi_inv_value(r[b])).collect();
        let correct: Vec<bool> = top.iter().zip(&labels).map(|(&(a, _), &l)| a == l).collect();
        let kept = correct.iter().zip(&xi).map(|(&c, &v)| c && v.is_finite() && v.abs() <= gamma).collect();
        Ok(Decisions { top, correct, kept, xi })
    }
}

/// RL over the kept samples only (the others may have infinite quantiles, which must not enter
/// the graph even multiplied by zero).
fn robustness_term(q: &Tensor, d: &Decisions, params: &MacerParams) -> Result<Tensor> {
    let kept: Vec<u32> = (0..d.kept.len()).filter(|&b| d.kept[b]).map(|b| b as u32).collect();
    if kept.is_empty() {
        return Tensor::zeros((), q.dtype(), q.device());
    }
    let pairs: Vec<u32> = kept.iter().flat_map(|&b| [d.top[b as usize].0 as u32, d.top[b as usize].1 as u32]).collect();
    let rows = q.index_select(&Tensor::new(kept.as_slice(), q.device())?, 0)?;
    let top = rows.gather(&Tensor::from_vec(pairs, (kept.len(), 2), q.device())?, 1)?;
    let quantiles = phi_inv(&top)?;
    let (qa, qb) = (quantiles.narrow(1, 0, 1)?, quantiles.narrow(1, 1, 1)?);
    let hinge = (qb - qa)?.affine(1.0, params.gamma)?;
    hinge.sum_all()?.affine(params.sigma / 2.0, 0.0)
}
