//! Training-mode batch normalization over (N, H, W) per channel, optionally followed by a ReLU,
//! as one pass forward and two passes backward (candle_nn's BatchNorm runs about ten tensor ops
//! each way). Statistics are computed once, in f64, and shared by the forward pass, the backward
//! pass and the running-statistics update.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{par_planes, slice, with_values};

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
        {
            // One pass with shifted sums (shift = the channel's first value, close to its mean),
            // so that E[d²] - E[d]² does not cancel catastrophically.
            let per_channel: Vec<(f64, f64)> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let shift = v[ch * hw];
                    let (s1, s2) = (0..n).fold((0f64, 0f64), |(s1, s2), s| {
                        let (a, b) = lane_sums(&v[(s * c + ch) * hw..][..hw], shift);
                        (s1 + a as f64, s2 + b as f64)
                    });
                    let count = (n * hw) as f64;
                    let mean_d = s1 / count;
                    (shift as f64 + mean_d, (s2 / count - mean_d * mean_d).max(0.0))
                })
                .collect();
            let (mean, var) = per_channel.into_iter().unzip();
            Ok(BatchStats { mean, var, count: n * hw })
        }
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
            let ch = p % c;
            let scale = weight[ch] * self.inv_std[ch];
            let shift = bias[ch] - self.mean[ch] * scale;
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

    /// (dx, dweight, dbias) from x, the weight, the output (for the ReLU mask) and its gradient.
    pub(super) fn backward(
        &self,
        dims: &[usize],
        x: &[f32],
        weight: &[f32],
        res: &[f32],
        grad: &[f32],
    ) -> Result<[Vec<f32>; 3]> {
        let (_, c, hw) = dims3(dims)?;
        let coeffs = self.grad_coeffs(dims, x, weight, res, grad)?;
        let dx = par_planes(x.len(), hw, |p| {
            let plane = p * hw..(p + 1) * hw;
            coeffs.plane_values(p % c, &grad[plane.clone()], &res[plane.clone()], &x[plane])
        });
        Ok([dx, coeffs.dweight, coeffs.dbias])
    }

    /// The backward pass's first pass: per channel Σ dy and Σ dy * (x - mean), dy being the
    /// gradient behind the ReLU's mask (plane sums in f32 lanes, added in f64), and from them the
    /// coefficients of dx.
    pub(super) fn grad_coeffs(
        &self,
        dims: &[usize],
        x: &[f32],
        weight: &[f32],
        res: &[f32],
        grad: &[f32],
    ) -> Result<BnGrad> {
        let (n, c, hw) = dims3(dims)?;
        if weight.len() != c || [x.len(), res.len(), grad.len()].iter().any(|&l| l != n * c * hw) {
            bail!("{NAME}: backward pass got values of the wrong length for {dims:?}")
        }
        let relu = self.relu;
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mean = self.mean[ch];
                (0..n).fold((0f64, 0f64), |(a, b), s| {
                    let plane = (s * c + ch) * hw..(s * c + ch + 1) * hw;
                    let (d, e) = lane_grad_sums(&grad[plane.clone()], &res[plane.clone()], &x[plane], mean, relu);
                    (a + d as f64, b + e as f64)
                })
            })
            .collect();
        let count = (n * hw) as f64;
        let xhat_sums: Vec<f64> = sums.iter().zip(&self.inv_std).map(|(s, &i)| s.1 * i as f64).collect();
        let channels = (0..c)
            .map(|ch| {
                let i = self.inv_std[ch];
                ChannelGrad {
                    mean: self.mean[ch],
                    scale: weight[ch] * i,
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

/// What the backward pass needs per channel: dx = scale * (dy - mean_dy - (x - mean) * xhat_coeff).
#[derive(Debug, Clone, Copy)]
struct ChannelGrad {
    mean: f32,
    scale: f32,
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
    /// gradient, output (for the ReLU's mask) and input.
    pub fn write_sample(&self, s: usize, grad: &[f32], res: &[f32], x: &[f32], out: &mut [f32]) {
        let c = self.channels.len();
        let pixels = out.len() / c.max(1);
        for (ch, d) in out.chunks_exact_mut(pixels).enumerate() {
            let at = (s * c + ch) * pixels..(s * c + ch + 1) * pixels;
            let values = self.plane_values(ch, &grad[at.clone()], &res[at.clone()], &x[at]);
            d.iter_mut().zip(values).for_each(|(d, v)| *d = v);
        }
    }

    /// dx over one plane of channel `ch`, from the output gradient, the output (for the ReLU's
    /// mask) and the input.
    fn plane_values<'a>(
        &self,
        ch: usize,
        grad: &'a [f32],
        res: &'a [f32],
        x: &'a [f32],
    ) -> impl Iterator<Item = f32> + 'a {
        let (k, relu) = (self.channels[ch], self.relu);
        grad.iter().zip(res).zip(x).map(move |((&g, &r), &x)| {
            let d = if relu && r <= 0.0 { 0.0 } else { g };
            k.scale * (d - k.mean_dy - (x - k.mean) * k.xhat_coeff)
        })
    }
}

/// Lanes for the reductions: independent partial sums that the compiler can keep in one vector.
const LANES: usize = 8;

/// (Σ (v - shift), Σ (v - shift)²) over a slice, in `LANES` partial sums.
fn lane_sums(values: &[f32], shift: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let chunks = values.chunks_exact(LANES);
    let tail =
        chunks.remainder().iter().fold((0f32, 0f32), |(s, q), &v| (s + (v - shift), q + (v - shift) * (v - shift)));
    for chunk in chunks {
        for ((a, b), &v) in a.iter_mut().zip(b.iter_mut()).zip(chunk) {
            let d = v - shift;
            *a += d;
            *b += d * d;
        }
    }
    (a.iter().sum::<f32>() + tail.0, b.iter().sum::<f32>() + tail.1)
}

/// (Σ dy, Σ dy * (x - mean)) over one plane, dy = grad masked where the ReLU's output is 0.
fn lane_grad_sums(grad: &[f32], res: &[f32], x: &[f32], mean: f32, relu: bool) -> (f32, f32) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let dy = |g: f32, r: f32| if relu && r <= 0.0 { 0.0 } else { g };
    let (gc, rc, xc) = (grad.chunks_exact(LANES), res.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail =
        gc.remainder().iter().zip(rc.remainder()).zip(xc.remainder()).fold((0f32, 0f32), |(s, t), ((&g, &r), &x)| {
            let d = dy(g, r);
            (s + d, t + d * (x - mean))
        });
    for ((gc, rc), xc) in gc.zip(rc).zip(xc) {
        for i in 0..LANES {
            let d = dy(gc[i], rc[i]);
            a[i] += d;
            b[i] += d * (xc[i] - mean);
        }
    }
    (a.iter().sum::<f32>() + tail.0, b.iter().sum::<f32>() + tail.1)
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
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = with_values(x, NAME, |xv| {
            with_values(weight, NAME, |wv| {
                with_values(res, NAME, |rv| with_values(grad, NAME, |gv| self.backward(x.dims(), xv, wv, rv, gv)))
            })
        })?;
        let dx = x.track_op().then(|| Tensor::from_vec(dx, x.shape(), x.device())).transpose()?;
        let dw = weight.track_op().then(|| Tensor::from_vec(dw, weight.shape(), weight.device())).transpose()?;
        let db = bias.track_op().then(|| Tensor::from_vec(db, bias.shape(), bias.device())).transpose()?;
        Ok((dx, dw, db))
    }
}
