//! Training-mode batch normalization over (N, H, W) per channel, optionally followed by a ReLU,
//! as one pass forward and two passes backward (candle_nn's BatchNorm runs about ten tensor ops
//! each way). Statistics are computed once, in f64, and shared by the forward pass, the backward
//! pass and the running-statistics update.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use wide::f32x8;

use super::storage::{par_chunks_zeroed, par_planes, slice, with_values};

const NAME: &str = "crt-batch-norm";

/// Per-channel batch statistics of x [N, C, H, W]: mean and biased variance.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Values per channel (N * H * W).
    pub count: usize,
}

/// (N, C, H * W) of a 4-D shape, or of [N, C] (one value per plane).
fn dims3(dims: &[usize]) -> Result<(usize, usize, usize)> {
    match *dims {
        [n, c] => Ok((n, c, 1)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => bail!("{NAME}: expected [N, C] or [N, C, H, W], got {dims:?}"),
    }
}

impl BatchStats {
    pub fn of(x: &Tensor) -> Result<Self> {
        with_values(x, NAME, |v| Self::of_values(x.dims(), v))
    }

    /// The statistics of values laid out as `dims` ([N, C, H, W] or [N, C]).
    pub fn of_values(dims: &[usize], v: &[f32]) -> Result<Self> {
        let (n, c, hw) = dims3(dims)?;
        let moments: Vec<PlaneMoments> = v.par_chunks(hw.max(1)).map(PlaneMoments::of).collect();
        Self::from_planes(n, c, &moments)
    }

    /// The statistics from the moments of each [N, C] plane (sample-major), combined in sample
    /// order (Chan et al.'s pairwise update, exact in real arithmetic): the result does not depend
    /// on which thread made which plane's moments.
    pub fn from_planes(n: usize, c: usize, planes: &[PlaneMoments]) -> Result<Self> {
        if planes.len() != n * c || n == 0 {
            bail!("{NAME}: {} plane moments for {n} samples of {c} channels", planes.len())
        }
        let hw = planes[0].count;
        let (mut mean, mut var) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for ch in 0..c {
            let channel = || (0..n).map(|s| &planes[s * c + ch]);
            let m = channel().map(|p| p.mean).sum::<f64>() / n as f64;
            let m2: f64 = channel().map(|p| p.m2 + p.count as f64 * (p.mean - m) * (p.mean - m)).sum();
            mean.push(m);
            var.push((m2 / (n * hw) as f64).max(0.0));
        }
        Ok(BatchStats { mean, var, count: n * hw })
    }
}

/// One plane's mean and sum of squared deviations from it.
#[derive(Debug, Clone, Copy)]
pub struct PlaneMoments {
    count: usize,
    mean: f64,
    m2: f64,
}

impl PlaneMoments {
    /// Sums shifted by the plane's first value (close to its mean), so that Σd² - (Σd)²/n does not
    /// cancel catastrophically; f32 lanes within the plane, f64 from there on.
    pub fn of(plane: &[f32]) -> Self {
        let shift = plane.first().copied().unwrap_or(0.0);
        let (s1, s2) = lane_sums(plane, shift);
        let count = plane.len().max(1) as f64;
        let mean_d = s1 as f64 / count;
        PlaneMoments { count: plane.len(), mean: shift as f64 + mean_d, m2: (s2 as f64 - s1 as f64 * mean_d).max(0.0) }
    }
}

/// y = (x - mean) / sqrt(var + eps) * weight + bias, then max(y, 0) when `relu`.
#[derive(Debug, Clone)]
pub struct BatchNormTrain {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl BatchNormTrain {
    pub fn new(stats: &BatchStats, eps: f64, relu: bool) -> Self {
        BatchNormTrain {
            mean: stats.mean.iter().map(|&m| m as f32).collect(),
            inv_std: stats.var.iter().map(|&v| (1.0 / (v + eps).sqrt()) as f32).collect(),
            relu,
        }
    }

    pub(super) fn forward(&self, dims: &[usize], x: &[f32], weight: &[f32], bias: &[f32]) -> Result<Vec<f32>> {
        let (_, c, hw) = dims3(dims)?;
        if weight.len() != c || bias.len() != c || self.mean.len() != c {
            bail!("{NAME}: {c} channels, but weight, bias or statistics have another length")
        }
        let relu = self.relu;
        Ok(par_planes(x.len(), hw, |p| {
            let (scale, shift) = self.affine(p % c, weight, bias);
            x[p * hw..(p + 1) * hw].iter().map(move |&x| {
                let y = x * scale + shift;
                if relu {
                    y.max(0.0)
                } else {
                    y
                }
            })
        }))
    }

    /// relu(y + residual), y being this normalization's output without its own ReLU (which must
    /// be off): the end of a residual block, in the same pass.
    pub(super) fn forward_add_relu(
        &self,
        dims: &[usize],
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        residual: &[f32],
    ) -> Result<Vec<f32>> {
        let (_, c, hw) = dims3(dims)?;
        if self.relu || weight.len() != c || bias.len() != c || self.mean.len() != c || residual.len() != x.len() {
            bail!(
                "{NAME}: residual add of {} values to {} (channels {c}), or a ReLU before it",
                residual.len(),
                x.len()
            )
        }
        Ok(par_planes(x.len(), hw, |p| {
            let (scale, shift) = self.affine(p % c, weight, bias);
            let at = p * hw..(p + 1) * hw;
            x[at.clone()].iter().zip(&residual[at]).map(move |(&x, &r)| (x * scale + shift + r).max(0.0))
        }))
    }

    /// Channel `ch`'s forward map y = x * scale + shift (before the ReLU). One definition for the
    /// forward pass and the backward pass's ReLU mask, so that the mask is bit for bit the
    /// forward pass's.
    fn affine(&self, ch: usize, weight: &[f32], bias: &[f32]) -> (f32, f32) {
        let scale = weight[ch] * self.inv_std[ch];
        (scale, bias[ch] - self.mean[ch] * scale)
    }

    /// (dx, dweight, dbias) from x, the weight and bias, and the output's gradient.
    pub(super) fn backward(
        &self,
        dims: &[usize],
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        grad: &[f32],
    ) -> Result<[Vec<f32>; 3]> {
        let (_, c, hw) = dims3(dims)?;
        let coeffs = self.grad_coeffs(dims, x, weight, bias, grad)?;
        let (dx, _) = par_chunks_zeroed(x.len(), hw, |p, out| {
            let plane = p * hw..(p + 1) * hw;
            coeffs.write_plane(p % c, &grad[plane.clone()], &x[plane], out)
        });
        Ok([dx, coeffs.dweight, coeffs.dbias])
    }

    /// The backward pass's first pass: per channel Σ dy and Σ dy * (x - mean), dy being the
    /// gradient behind the ReLU's mask (plane sums in f32 lanes, added in f64), and from them the
    /// coefficients of dx. The mask is recomputed from x rather than read from the output: one
    /// activation-sized stream fewer in both backward passes, which are memory-bound.
    pub(super) fn grad_coeffs(
        &self,
        dims: &[usize],
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        grad: &[f32],
    ) -> Result<BnGrad> {
        let (n, c, hw) = dims3(dims)?;
        if weight.len() != c || bias.len() != c || [x.len(), grad.len()].iter().any(|&l| l != n * c * hw) {
            bail!("{NAME}: backward pass got values of the wrong length for {dims:?}")
        }
        let relu = self.relu;
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, gate) = (self.mean[ch], relu.then(|| self.affine(ch, weight, bias)));
                (0..n).fold((0f64, 0f64), |(a, b), s| {
                    let plane = (s * c + ch) * hw..(s * c + ch + 1) * hw;
                    let (d, e) = lane_grad_sums(&grad[plane.clone()], &x[plane], mean, gate);
                    (a + d as f64, b + e as f64)
                })
            })
            .collect();
        let count = (n * hw) as f64;
        let xhat_sums: Vec<f64> = sums.iter().zip(&self.inv_std).map(|(s, &i)| s.1 * i as f64).collect();
        let channels = (0..c)
            .map(|ch| {
                let i = self.inv_std[ch];
                let (scale, shift) = self.affine(ch, weight, bias);
                ChannelGrad {
                    mean: self.mean[ch],
                    scale,
                    shift,
                    mean_dy: (sums[ch].0 / count) as f32,
                    xhat_coeff: i * (xhat_sums[ch] / count) as f32,
                }
            })
            .collect();
        Ok(BnGrad {
            channels,
            relu,
            dweight: xhat_sums.iter().map(|&v| v as f32).collect(),
            dbias: sums.iter().map(|s| s.0 as f32).collect(),
        })
    }
}

/// What the backward pass needs per channel: dx = scale * (dy - mean_dy - (x - mean) * xhat_coeff),
/// where dy is the output gradient, masked where x * scale + shift (the forward pass) was <= 0.
#[derive(Debug, Clone, Copy)]
struct ChannelGrad {
    mean: f32,
    scale: f32,
    shift: f32,
    mean_dy: f32,
    xhat_coeff: f32,
}

/// The result of the backward pass's first pass: dx per element, and the parameter gradients.
pub struct BnGrad {
    channels: Vec<ChannelGrad>,
    relu: bool,
    pub dweight: Vec<f32>,
    pub dbias: Vec<f32>,
}

impl BnGrad {
    /// dx of sample `s`, all channels, into `out` [C, H, W], from the whole batch's output
    /// gradient and input.
    pub fn write_sample(&self, s: usize, grad: &[f32], x: &[f32], out: &mut [f32]) {
        let c = self.channels.len();
        let pixels = out.len() / c.max(1);
        for (ch, d) in out.chunks_exact_mut(pixels).enumerate() {
            let at = (s * c + ch) * pixels..(s * c + ch + 1) * pixels;
            self.write_plane(ch, &grad[at.clone()], &x[at], d);
        }
    }

    /// dx over one plane of channel `ch` into `out`, from the output gradient and the input.
    fn write_plane(&self, ch: usize, grad: &[f32], x: &[f32], out: &mut [f32]) {
        let k = self.channels[ch];
        let value = |g: f32, x: f32| {
            let d = if self.relu && !passes(x, k.scale, k.shift) { 0.0 } else { g };
            k.scale * (d - k.mean_dy - (x - k.mean) * k.xhat_coeff)
        };
        let (oc, gc, xc) = (out.chunks_exact_mut(LANES), grad.chunks_exact(LANES), x.chunks_exact(LANES));
        for ((o, &g), &x) in oc.into_remainder().iter_mut().zip(gc.remainder()).zip(xc.remainder()) {
            *o = value(g, x);
        }
        let v = |f: f32| f32x8::splat(f);
        let (scale, shift, mean, mean_dy, xhat) = (v(k.scale), v(k.shift), v(k.mean), v(k.mean_dy), v(k.xhat_coeff));
        for ((o, gc), xc) in out.chunks_exact_mut(LANES).zip(gc).zip(xc) {
            let (g, x) = (load(gc), load(xc));
            let d = if self.relu { g & (x * scale + shift).simd_gt(f32x8::ZERO) } else { g };
            o.copy_from_slice(&(scale * (d - mean_dy - (x - mean) * xhat)).to_array());
        }
    }
}

/// Lanes for the reductions: independent partial sums in one vector.
const LANES: usize = 8;

/// One vector from a chunk of exactly `LANES` values.
fn load(chunk: &[f32]) -> f32x8 {
    f32x8::from(<[f32; LANES]>::try_from(chunk).expect("a chunk of LANES values"))
}

/// (Σ (v - shift), Σ (v - shift)²) over a slice, in `LANES` partial sums.
fn lane_sums(values: &[f32], shift: f32) -> (f32, f32) {
    let chunks = values.chunks_exact(LANES);
    let tail =
        chunks.remainder().iter().fold((0f32, 0f32), |(s, q), &v| (s + (v - shift), q + (v - shift) * (v - shift)));
    let (mut a, mut b, shift) = (f32x8::ZERO, f32x8::ZERO, f32x8::splat(shift));
    for chunk in chunks {
        let d = load(chunk) - shift;
        a += d;
        b += d * d;
    }
    (a.reduce_add() + tail.0, b.reduce_add() + tail.1)
}

/// Whether the ReLU after the forward map x * scale + shift let x through (the same expression as
/// the forward pass, so the same bits; a NaN, which the forward's `max` turned into 0, does not).
fn passes(x: f32, scale: f32, shift: f32) -> bool {
    x * scale + shift > 0.0
}

/// (Σ dy, Σ dy * (x - mean)) over one plane, dy = grad masked where the ReLU's output was 0
/// (`gate`: the forward map (scale, shift) when a ReLU followed it). Explicit vectors: with the
/// mask, LLVM compiled this loop (6% of a ResNet-20 training step) to scalar code.
fn lane_grad_sums(grad: &[f32], x: &[f32], mean: f32, gate: Option<(f32, f32)>) -> (f32, f32) {
    let dy = |g: f32, x: f32| match gate {
        Some((scale, shift)) if !passes(x, scale, shift) => 0.0,
        _ => g,
    };
    let (gc, xc) = (grad.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail = gc.remainder().iter().zip(xc.remainder()).fold((0f32, 0f32), |(s, t), (&g, &x)| {
        let d = dy(g, x);
        (s + d, t + d * (x - mean))
    });
    let (mut a, mut b, mean) = (f32x8::ZERO, f32x8::ZERO, f32x8::splat(mean));
    let gate = gate.map(|(scale, shift)| (f32x8::splat(scale), f32x8::splat(shift)));
    for (gc, xc) in gc.zip(xc) {
        let (g, x) = (load(gc), load(xc));
        // The same multiply and add as `passes`, lane by lane (no fused multiply-add).
        let d = gate.map_or(g, |(scale, shift)| g & (x * scale + shift).simd_gt(f32x8::ZERO));
        a += d;
        b += d * (x - mean);
    }
    (a.reduce_add() + tail.0, b.reduce_add() + tail.1)
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.forward(xl.dims(), slice(xs, xl, NAME)?, slice(ws, wl, NAME)?, slice(bs, bl, NAME)?)?;
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The ReLU's mask is recomputed from x (see `grad_coeffs`).
        let [dx, dw, db] = with_values(x, NAME, |xv| {
            with_values(weight, NAME, |wv| {
                with_values(bias, NAME, |bv| with_values(grad, NAME, |gv| self.backward(x.dims(), xv, wv, bv, gv)))
            })
        })?;
        let dx = x.track_op().then(|| Tensor::from_vec(dx, x.shape(), x.device())).transpose()?;
        let dw = weight.track_op().then(|| Tensor::from_vec(dw, weight.shape(), weight.device())).transpose()?;
        let db = bias.track_op().then(|| Tensor::from_vec(db, bias.shape(), bias.device())).transpose()?;
        Ok((dx, dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-pass f64 mean and biased variance of channel `ch` of [n, c, hw] values.
    fn reference(v: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> (f64, f64) {
        let vals: Vec<f64> = (0..n).flat_map(|s| &v[(s * c + ch) * hw..][..hw]).map(|&x| x as f64).collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        (mean, vals.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / vals.len() as f64)
    }

    #[test]
    fn statistics_from_plane_moments_match_two_passes_despite_a_large_offset() {
        // A large common offset (catastrophic cancellation for unshifted sums) and plane means that
        // differ between samples (the between-plane part of the variance).
        let (n, c, hw) = (5, 3, 37);
        let v: Vec<f32> = (0..n * c * hw)
            .map(|i| {
                let (s, ch) = (i / (c * hw), i / hw % c);
                1000.0 + (s * 3 + ch) as f32 * 0.25 + ((i as f32) * 0.731).sin() * 0.1
            })
            .collect();
        let stats = BatchStats::of_values(&[n, c, hw, 1], &v).unwrap();
        assert_eq!(stats.count, n * hw);
        for ch in 0..c {
            let (mean, var) = reference(&v, n, c, hw, ch);
            assert!((stats.mean[ch] - mean).abs() < 1e-9 * mean.abs(), "mean of {ch}: {} vs {mean}", stats.mean[ch]);
            assert!((stats.var[ch] - var).abs() < 1e-5 * var, "variance of {ch}: {} vs {var}", stats.var[ch]);
        }
    }

    #[test]
    fn plane_moments_of_the_wrong_count_are_refused() {
        let planes = vec![PlaneMoments::of(&[1.0, 2.0]); 5];
        let err = BatchStats::from_planes(2, 3, &planes).unwrap_err().to_string();
        assert!(err.contains("5 plane moments for 2 samples of 3 channels"), "{err}");
    }
}
