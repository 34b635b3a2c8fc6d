//! The ViT's row-wise ops as single passes: LayerNorm over the last dimension and softmax over the
//! last dimension, each with its backward pass. Composed from candle's ops they take 8-10 tensor
//! passes each way, each one a parallel region whose barrier waits dominated a ViT training step
//! (measured ~40% of it in candle's barrier and broadcast binary maps); candle_nn's own fused
//! versions have no backward pass.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use wide::f32x8;

use super::gemm::{matmul, matmul_strided, View};
use super::lanes::{self, load8, store8, LANES};
use super::storage::{slice, with_values};

const LN: &str = "crt-layer-norm";
const SOFTMAX: &str = "crt-softmax-last-dim";
/// Rows per parallel task: whole rows, about 16k values.
fn rows_per_task(width: usize) -> usize {
    ((1 << 14) / width.max(1)).max(1)
}

/// Mean and 1 / sqrt(var + eps) of one row (biased variance, two passes in f32 as PyTorch's CPU kernel
/// accumulates; rows here are short).
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm of whole rows of `x` (width `w.len()`) into `out`.
pub(super) fn layer_norm_rows(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let d = w.len();
    if d.is_multiple_of(LANES) {
        for (o, row) in out.chunks_mut(d).zip(x.chunks(d)) {
            let (mean, rstd) = row_stats_lanes(row, eps);
            let (mean, rstd) = (f32x8::splat(mean), f32x8::splat(rstd));
            for (i, o) in o.chunks_exact_mut(LANES).enumerate() {
                let at = |s: &[f32]| load8(&s[i * LANES..]);
                store8(o, (at(row) - mean) * rstd * at(w) + at(b));
            }
        }
        return;
    }
    for (o, row) in out.chunks_mut(d).zip(x.chunks(d)) {
        let (mean, rstd) = row_stats(row, eps);
        for i in 0..d {
            o[i] = (row[i] - mean) * rstd * w[i] + b[i];
        }
    }
}

/// LayerNorm's backward pass over whole rows: the input gradient into `dx` (added to what is
/// there when `accumulate`: a residual branch's gradient), the weight and bias gradients added
/// into `dw` and `db`. `g` is the gradient of the output, `x` the forward pass's input.
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_backward_rows(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    eps: f32,
    accumulate: bool,
) {
    let d = w.len();
    if d.is_multiple_of(LANES) {
        return layer_norm_backward_lanes(dx, x, g, w, dw, db, eps, accumulate);
    }
    for ((dx, row), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
        let (mean, rstd) = row_stats(row, eps);
        // dxhat = g * w; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
        let (mut s1, mut s2) = (0f32, 0f32);
        for i in 0..d {
            let xhat = (row[i] - mean) * rstd;
            let dxhat = g[i] * w[i];
            s1 += dxhat;
            s2 += dxhat * xhat;
            dw[i] += g[i] * xhat;
            db[i] += g[i];
        }
        let (m1, m2) = (s1 / d as f32, s2 / d as f32);
        for i in 0..d {
            let xhat = (row[i] - mean) * rstd;
            let v = rstd * (g[i] * w[i] - m1 - xhat * m2);
            dx[i] = if accumulate { dx[i] + v } else { v };
        }
    }
}

/// [`layer_norm_backward_rows`] for widths that are a multiple of 8, in 8-lane vectors.
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward_lanes(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    eps: f32,
    accumulate: bool,
) {
    let d = w.len();
    for ((dx, row), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
        let (mean, rstd) = row_stats_lanes(row, eps);
        let (mean, rstd) = (f32x8::splat(mean), f32x8::splat(rstd));
        let (mut s1, mut s2) = (f32x8::ZERO, f32x8::ZERO);
        for i in (0..d).step_by(LANES) {
            let (xv, gv) = (load8(&row[i..]), load8(&g[i..]));
            let xhat = (xv - mean) * rstd;
            let dxhat = gv * load8(&w[i..]);
            s1 += dxhat;
            s2 += dxhat * xhat;
            let (dwv, dbv) = (load8(&dw[i..]) + gv * xhat, load8(&db[i..]) + gv);
            store8(&mut dw[i..], dwv);
            store8(&mut db[i..], dbv);
        }
        let (m1, m2) = (f32x8::splat(s1.reduce_add() / d as f32), f32x8::splat(s2.reduce_add() / d as f32));
        for i in (0..d).step_by(LANES) {
            let xhat = (load8(&row[i..]) - mean) * rstd;
            let v = rstd * (load8(&g[i..]) * load8(&w[i..]) - m1 - xhat * m2);
            let v = if accumulate { load8(&dx[i..]) + v } else { v };
            store8(&mut dx[i..], v);
        }
    }
}

/// [`row_stats`] for a row whose length is a multiple of 8 (lane-wise sums, then across lanes).
fn row_stats_lanes(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let sum = row.chunks_exact(LANES).fold(f32x8::ZERO, |s, c| s + load8(c));
    let mean = sum.reduce_add() / n;
    let m = f32x8::splat(mean);
    let sq = row.chunks_exact(LANES).fold(f32x8::ZERO, |s, c| {
        let c = load8(c) - m;
        s + c * c
    });
    (mean, 1.0 / (sq.reduce_add() / n + eps).sqrt())
}

/// (x - mean) / sqrt(var + eps) * weight + bias over the last dimension of x; weight and bias [D].
pub struct LayerNorm {
    pub eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        LN
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(s1, l1, LN)?, slice(s2, l2, LN)?, slice(s3, l3, LN)?);
        let d = *l1.dims().last().unwrap_or(&0);
        if d == 0 || w.len() != d || b.len() != d {
            bail!("{LN}: input {:?} with weight {:?} and bias {:?}", l1.dims(), l2.dims(), l3.dims())
        }
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(d) * d;
        out.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(out, x)| layer_norm_rows(out, x, w, b, self.eps));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = x.dim(candle_core::D::Minus1)?;
        let eps = self.eps;
        let (dx, dw, db) = with_values(x, LN, |xv| {
            with_values(w, LN, |wv| {
                with_values(grad, LN, |gv| {
                    let per = rows_per_task(d) * d;
                    let mut dx = vec![0f32; xv.len()];
                    // dx per row; dweight and dbias summed per task, then over tasks in task order.
                    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
                        .par_chunks_mut(per)
                        .zip(xv.par_chunks(per).zip(gv.par_chunks(per)))
                        .map(|(dx, (x, g))| {
                            let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                            layer_norm_backward_rows(dx, x, g, wv, &mut dw, &mut db, eps, false);
                            (dw, db)
                        })
                        .collect();
                    let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                    for (pw, pb) in partial {
                        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
                    }
                    Ok((dx, dw, db))
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, d, dev)?),
            Some(Tensor::from_vec(db, d, dev)?),
        ))
    }
}

/// Softmax over the last dimension (max-subtracted, as PyTorch's).
pub struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        SOFTMAX
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, SOFTMAX)?;
        let d = *l.dims().last().unwrap_or(&0);
        if d == 0 {
            bail!("{SOFTMAX}: empty last dimension in {:?}", l.dims())
        }
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(d) * d;
        out.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(out, x)| {
            for (o, row) in out.chunks_mut(d).zip(x.chunks(d)) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0f32;
                for (o, &v) in o.iter_mut().zip(row) {
                    *o = (v - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = res.dim(candle_core::D::Minus1)?;
        // dx = y * (g - sum(g * y)) per row.
        let dx = with_values(res, SOFTMAX, |y| {
            with_values(grad, SOFTMAX, |g| {
                let mut dx = vec![0f32; y.len()];
                let per = rows_per_task(d) * d;
                dx.par_chunks_mut(per).zip(y.par_chunks(per).zip(g.par_chunks(per))).for_each(|(dx, (y, g))| {
                    for ((dx, y), g) in dx.chunks_mut(d).zip(y.chunks(d)).zip(g.chunks(d)) {
                        let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                        for i in 0..d {
                            dx[i] = y[i] * (g[i] - dot);
                        }
                    }
                });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

const GELU: &str = "crt-gelu-erf";

/// x Φ(x) with the exact normal CDF Φ(x) = (1 + erf(x / √2)) / 2 (PyTorch's nn.GELU default);
/// the backward pass is one pass too (candle's differentiates it through about six tensor ops).
pub struct GeluErf;

/// Φ(x), the standard normal CDF.
pub(super) fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU(x) = x Φ(x).
pub fn gelu_value(x: f32) -> f32 {
    x * cdf(x)
}

/// φ(x), the standard normal density.
pub(super) fn normal_density(x: f32) -> f32 {
    let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    inv_sqrt_2pi * (-0.5 * x * x).exp()
}

/// d/dx x Φ(x) = Φ(x) + x φ(x).
pub fn gelu_slope(x: f32) -> f32 {
    cdf(x) + x * normal_density(x)
}

fn map_par(x: &[f32], f: impl Fn(usize) -> f32 + Sync + Send) -> Vec<f32> {
    let mut out = Vec::new();
    (0..x.len()).into_par_iter().with_min_len(1 << 14).map(f).collect_into_vec(&mut out);
    out
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        GELU
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, GELU)?;
        Ok((CpuStorage::F32(map_par(x, |i| gelu_value(x[i]))), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values(x, GELU, |xv| with_values(grad, GELU, |g| Ok(map_par(xv, |i| g[i] * gelu_slope(xv[i])))))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

const ATTN: &str = "crt-attention";

/// Multi-head self-attention's core on the fused qkv projection: qkv [N * L, 3 * D] (q, k, v side
/// by side, each split into `heads` heads of D / heads, the twin's reshape + permute order) ->
/// softmax(q kᵀ / √hd) v with the heads side by side again, [N * L, D]. One op instead of the
/// permute, three slices, two batched matmuls, the scaling, the softmax and the transposes back,
/// whose backward passes (zero-padded slices, each node's gradient buffer) cost more than the
/// arithmetic. When a gradient will be asked for (`tracked`), the forward pass keeps the attention
/// probabilities for the backward pass (N x heads x L x L values, 8 MB for a ViT-CIFAR batch of
/// 128; recomputing them was ~10% of a training step), else it keeps nothing.
pub struct Attention {
    pub n: usize,
    pub tokens: usize,
    pub heads: usize,
    pub tracked: bool,
    pub saved: std::sync::Mutex<Option<Vec<f32>>>,
}

/// Per-sample views of one head: rows of q, k or v of head `h` inside a sample's [L, 3D] block.
fn head_view(qkv: &[f32], l: usize, d: usize, part: usize, h: usize, hd: usize) -> View<'_> {
    View::strided(&qkv[part * d + h * hd..], l, hd, 3 * d)
}

/// P = softmax(q kᵀ · scale) of one head into `p` [L, L].
fn probabilities(p: &mut [f32], qkv: &[f32], l: usize, d: usize, h: usize, hd: usize, scale: f32) {
    let (q, k) = (head_view(qkv, l, d, 0, h, hd), head_view(qkv, l, d, 1, h, hd));
    matmul(p, q, k.t(), false);
    p.chunks_mut(l).for_each(|row| lanes::softmax_scaled(row, scale));
}

/// One sample's attention: `out` [L, D] from its `qkv` [L, 3D], the probabilities of every head
/// written to `probs` [heads, L, L].
pub(super) fn attention_sample(out: &mut [f32], qkv: &[f32], probs: &mut [f32], l: usize, d: usize, hd: usize) {
    let scale = 1.0 / (hd as f32).sqrt();
    for (h, p) in probs.chunks_mut(l * l).enumerate() {
        probabilities(p, qkv, l, d, h, hd, scale);
        let v = head_view(qkv, l, d, 2, h, hd);
        matmul_strided(&mut out[h * hd..], d, View::row_major(p, l, l), v, false);
    }
}

/// One sample's attention backward pass: `dqkv` [L, 3D] from the output gradient `g` [L, D], its
/// `qkv` and the forward pass's probabilities (recomputed when not kept).
pub(super) fn attention_sample_backward(
    dqkv: &mut [f32],
    qkv: &[f32],
    g: &[f32],
    probs: Option<&[f32]>,
    l: usize,
    d: usize,
    hd: usize,
) {
    let scale = 1.0 / (hd as f32).sqrt();
    let mut dp = vec![0f32; l * l];
    let mut scratch = Vec::new();
    for h in 0..d / hd {
        let p: &[f32] = match probs {
            Some(all) => &all[h * l * l..][..l * l],
            None => {
                scratch.resize(l * l, 0.0);
                probabilities(&mut scratch, qkv, l, d, h, hd, scale);
                &scratch
            }
        };
        let go = View::strided(&g[h * hd..], l, hd, d);
        let v = head_view(qkv, l, d, 2, h, hd);
        // dV = Pᵀ dO; dP = dO Vᵀ.
        matmul_strided(&mut dqkv[2 * d + h * hd..], 3 * d, View::row_major(p, l, l).t(), go, false);
        matmul(&mut dp, go, v.t(), false);
        // dS = P ⊙ (dP - rowsum(dP ⊙ P)) · scale (the scale of the logits).
        for (dp, p) in dp.chunks_mut(l).zip(p.chunks(l)) {
            let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
            dp.iter_mut().zip(p).for_each(|(a, b)| *a = b * (*a - dot) * scale);
        }
        let ds = View::row_major(&dp, l, l);
        let (q, k) = (head_view(qkv, l, d, 0, h, hd), head_view(qkv, l, d, 1, h, hd));
        // dQ = dS K; dK = dSᵀ Q.
        matmul_strided(&mut dqkv[h * hd..], 3 * d, ds, k, false);
        matmul_strided(&mut dqkv[d + h * hd..], 3 * d, ds.t(), q, false);
    }
}

impl Attention {
    fn dims(&self, len: usize) -> Result<(usize, usize, usize)> {
        let (n, l) = (self.n, self.tokens);
        if n * l == 0
            || self.heads == 0
            || !len.is_multiple_of(n * l * 3)
            || !(len / (n * l * 3)).is_multiple_of(self.heads)
        {
            bail!("{ATTN}: {len} values do not make [{n} x {l}, 3 x D] with D a multiple of {}", self.heads)
        }
        let d = len / (n * l * 3);
        let hd = d / self.heads;
        Ok((l, d, hd))
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        ATTN
    }

    fn cpu_fwd(&self, s: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s, layout, ATTN)?;
        let (l, d, hd) = self.dims(qkv.len())?;
        let mut out = vec![0f32; self.n * l * d];
        let per_sample = self.heads * l * l;
        // Probabilities of every sample and head when kept, else one sample's scratch per task.
        let mut kept = vec![0f32; if self.tracked { self.n * per_sample } else { 0 }];
        let run = |out: &mut [f32], qkv: &[f32], probs: &mut [f32]| attention_sample(out, qkv, probs, l, d, hd);
        let pairs = out.par_chunks_mut(l * d).zip(qkv.par_chunks(l * 3 * d));
        if self.tracked {
            pairs.zip(kept.par_chunks_mut(per_sample)).for_each(|((out, qkv), probs)| run(out, qkv, probs));
            *self.saved.lock().expect("attention probabilities") = Some(kept);
        } else {
            pairs.for_each(|(out, qkv)| run(out, qkv, &mut vec![0f32; per_sample]));
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n * l, d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dqkv = with_values(qkv, ATTN, |qkv| {
            with_values(grad, ATTN, |g| {
                let (l, d, hd) = self.dims(qkv.len())?;
                let per_sample = self.heads * l * l;
                let saved = self.saved.lock().expect("attention probabilities").take();
                let saved = saved.filter(|p| p.len() == self.n * per_sample);
                let mut dqkv = vec![0f32; qkv.len()];
                let chunks = dqkv.par_chunks_mut(l * 3 * d).zip(qkv.par_chunks(l * 3 * d).zip(g.par_chunks(l * d)));
                chunks.enumerate().for_each(|(sample, (dqkv, (qkv, g)))| {
                    let probs = saved.as_ref().map(|all| &all[sample * per_sample..][..per_sample]);
                    attention_sample_backward(dqkv, qkv, g, probs, l, d, hd);
                });
                Ok(dqkv)
            })
        })?;
        Ok(Some(Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?))
    }
}
