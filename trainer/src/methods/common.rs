//! Building blocks shared by the losses: noisy copies, softmax helpers, cross-entropy, KL, norms,
//! input gradients and the standard normal quantile with a gradient.

use candle_core::{DType, Result, Tensor, Var, D};

use crate::models::Model;

/// Floor inside `x log x`, so that a probability of exactly 0 contributes 0 (as `torch.xlogy`) rather
/// than NaN; below it `x log x` is under 1e-36 anyway.
const XLOGX_FLOOR: f64 = f32::MIN_POSITIVE as f64;

/// Labels as u32 (the fixtures store int64, the data pipeline u32; `gather` wants one index type).
pub fn labels_u32(y: &Tensor) -> Result<Tensor> {
    y.to_dtype(DType::U32)
}

/// The labels of B images repeated for their n noisy copies, in the copy order b * n + i.
pub fn repeat_labels(y: &Tensor, n: usize) -> Result<Tensor> {
    let b = y.dim(0)?;
    labels_u32(y)?.unsqueeze(1)?.broadcast_as((b, n))?.contiguous()?.flatten_all()
}

/// Logits of `model(base_b + noise_{b,i})` as [B, n, classes]: base [B, C, H, W], noise [B, n, C, H, W].
/// All B * n copies go through the network as one batch.
pub fn copies_logits(model: &Model, base: &Tensor, noise: &Tensor, train: bool) -> Result<Tensor> {
    let (b, n) = (noise.dim(0)?, noise.dim(1)?);
    let image = &base.dims()[1..];
    let inputs = base.unsqueeze(1)?.broadcast_add(noise)?;
    let inputs = inputs.reshape([&[b * n][..], image].concat())?;
    model.forward_t(&inputs, train)?.reshape((b, n, ()))
}

pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(logits, D::Minus1)
}

/// Softmax over the last axis as exp(log_softmax): differentiable (candle's fused
/// `softmax_last_dim` has no backward).
pub fn softmax(logits: &Tensor) -> Result<Tensor> {
    log_softmax(logits)?.exp()
}

/// Entry y_r of each row of `values` [N, C]: [N].
pub fn pick(values: &Tensor, y: &Tensor) -> Result<Tensor> {
    values.gather(&labels_u32(y)?.unsqueeze(1)?, 1)?.squeeze(1)
}

/// Per-row cross-entropy -log softmax(z)_y of logits [N, C] and labels [N]: [N].
pub fn cross_entropy_rows(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    pick(&log_softmax(logits)?, y)?.neg()
}

/// Mean cross-entropy over all rows.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    cross_entropy_rows(logits, y)?.mean_all()
}

/// Mean cross-entropy of copy logits [B, n, C] against the labels of their images [B].
pub fn copies_cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (b, n, c) = logits.dims3()?;
    cross_entropy(&logits.reshape((b * n, c))?, &repeat_labels(y, n)?)
}

/// `sum_c t_c (log t_c - log_q_c)` over the last axis, with 0 log 0 = 0; the target broadcasts
/// against log_q (a [B, 1, C] target for [B, n, C] copies). The target is not
/// detached: its gradient is log t_c + 1 - log q_c, as with `torch.xlogy(t, t) - t * log_q`.
pub fn kl_rows(target: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    let xlogx = (target * target.maximum(XLOGX_FLOOR)?.log()?)?;
    xlogx.broadcast_sub(&target.broadcast_mul(log_q)?)?.sum(D::Minus1)
}

/// -log(max(mean_i softmax(logits_{b,i})_{y_b}, 1e-20)) per image: the smoothed soft classifier's
/// negative log-likelihood that both attacks ascend. logits [B, n, C] -> [B].
pub fn smoothed_nll(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let p_bar = softmax(logits)?.mean(1)?;
    pick(&p_bar, y)?.maximum(1e-20)?.log()?.neg()
}

/// Euclidean norm of each sample of a batch [B, ...]: [B].
pub fn sample_norms(t: &Tensor) -> Result<Tensor> {
    t.flatten_from(1)?.sqr()?.sum(1)?.sqrt()
}

/// Reshapes a per-sample vector [B] so that it broadcasts over images [B, C, H, W].
pub fn per_sample(v: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; like.rank()];
    shape[0] = like.dim(0)?;
    v.reshape(shape)
}

/// The value of `objective(x')` at `x` and its gradient with respect to x'. The model's parameters
/// are candle variables too, so backward also forms their gradients; they are discarded.
pub fn input_gradient(x: &Tensor, objective: impl Fn(&Tensor) -> Result<Tensor>) -> Result<(f32, Tensor)> {
    let var = Var::from_tensor(&x.detach())?;
    let value = objective(var.as_tensor())?;
    let grads = value.backward()?;
    let grad = grads
        .get(var.as_tensor())
        .ok_or_else(|| candle_core::Error::Msg("attack objective does not depend on its input".into()))?
        .clone();
    Ok((value.to_scalar::<f32>()?, grad))
}

/// Index of the largest entry of each row of [N, C] (first one on ties).
pub fn argmax_rows(values: &Tensor) -> Result<Vec<usize>> {
    Ok(values.to_dtype(DType::F32)?.to_vec2::<f32>()?.iter().map(|row| top2(row).0).collect())
}

/// Indices of the largest and second-largest entries of a row (first one on ties).
pub fn top2(row: &[f32]) -> (usize, usize) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    (order[0], order.get(1).copied().unwrap_or(order[0]))
}

/// Labels as host integers.
pub fn labels_vec(y: &Tensor) -> Result<Vec<usize>> {
    Ok(labels_u32(y)?.to_vec1::<u32>()?.into_iter().map(|v| v as usize).collect())
}

/// A 0/1 f32 tensor [N] from host flags.
pub fn mask_tensor(flags: &[bool], like: &Tensor) -> Result<Tensor> {
    let data: Vec<f32> = flags.iter().map(|&f| f32::from(u8::from(f))).collect();
    Tensor::from_vec(data, flags.len(), like.device())
}

/// PhiInv(p) = sqrt(2) erfinv(2p - 1), the standard normal quantile, evaluated as PyTorch does on
/// float32 input: 2p - 1 is rounded to f32 first, so p within 2^-25 of 0 (or p = 1) gives an
/// infinite quantile exactly where the reference does.
pub fn phi_inv_value(p: f32) -> f64 {
    std::f64::consts::SQRT_2 * statrs::function::erf::erf_inv(f64::from(2.0 * p - 1.0))
}

/// PhiInv applied elementwise, differentiable. candle has no erfinv op, so the value is computed
/// on the host with statrs and the gradient is attached by the identity
/// `v + (p - detach(p)) * detach(1 / phi(v))`: the second term is exactly zero in value and has
/// derivative dPhiInv/dp = 1 / phi(PhiInv(p)) = sqrt(2 pi) exp(v^2 / 2). Every entry must give a
/// finite quantile (the callers drop the others first).
pub fn phi_inv(p: &Tensor) -> Result<Tensor> {
    let shape = p.shape().clone();
    let probs = p.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let values: Vec<f64> = probs.iter().map(|&q| phi_inv_value(q)).collect();
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        candle_core::bail!("PhiInv({}) is not finite; such samples must be filtered out", probs[bad]);
    }
    let slopes: Vec<f32> =
        values.iter().map(|v| ((2.0 * std::f64::consts::PI).sqrt() * (v * v / 2.0).exp()) as f32).collect();
    let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let value = Tensor::from_vec(values, &shape, p.device())?.to_dtype(p.dtype())?;
    let slope = Tensor::from_vec(slopes, &shape, p.device())?.to_dtype(p.dtype())?;
    let zero_with_grad = (p - p.detach())?;
    value + zero_with_grad.mul(&slope)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn phi_inv_matches_known_quantiles_and_slope() {
        assert!((phi_inv_value(0.975) - 1.959_964).abs() < 1e-5);
        assert!(phi_inv_value(0.5).abs() < 1e-12);
        assert_eq!(phi_inv_value(1.0), f64::INFINITY);
        assert_eq!(phi_inv_value(0.0), f64::NEG_INFINITY);
        let p = Var::from_vec(vec![0.1f32, 0.5, 0.9], 3, &Device::Cpu).unwrap();
        let q = phi_inv(p.as_tensor()).unwrap();
        let got = q.to_vec1::<f32>().unwrap();
        assert!((got[0] + 1.281_551_6).abs() < 1e-5 && (got[2] - 1.281_551_6).abs() < 1e-5);
        let grad = q.sum_all().unwrap().backward().unwrap();
        let g = grad.get(p.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // 1 / phi(1.281552) = sqrt(2 pi) exp(1.281552^2 / 2) = 5.69805; 1 / phi(0) = sqrt(2 pi).
        assert!((g[0] - 5.698_05).abs() < 1e-3 && (g[1] - 2.506_628).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn phi_inv_refuses_saturated_probabilities() {
        let p = Tensor::new(&[0.3f32, 1.0], &Device::Cpu).unwrap();
        let err = phi_inv(&p).unwrap_err().to_string();
        assert!(err.contains("not finite"), "{err}");
    }

    #[test]
    fn kl_of_equal_distributions_is_zero_and_handles_zero_entries() {
        let t = Tensor::new(&[[0.0f32, 0.25, 0.75]], &Device::Cpu).unwrap();
        let log_q = t.maximum(1e-30).unwrap().log().unwrap();
        let kl = kl_rows(&t, &log_q).unwrap().to_vec1::<f32>().unwrap();
        assert!(kl[0].abs() < 1e-6, "{kl:?}");
    }

    #[test]
    fn top2_orders_and_breaks_ties_by_index() {
        assert_eq!(top2(&[0.1, 0.7, 0.2]), (1, 2));
        assert_eq!(top2(&[0.5, 0.5, 0.0]), (0, 1));
    }
}
