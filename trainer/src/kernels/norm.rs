//! Training-mode batch normalization over (N, H, W) per channel, optionally followed by a ReLU,
//! as one pass forward and two passes backward (candle_nn's BatchNorm runs about ten tensor ops
//! each way). Statistics are computed once, in f64, and shared by the forward pass, the backward
//! pass and the running-statistics update.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::eltwise::relu_masked;
use super::storage::{slice, with_values};

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
        let (n, c, hw) = dims3(x.dims())?;
        with_values(x, NAME, |v| {
            let per_channel: Vec<(f64, f64)> = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let planes = (0..n).map(|s| &v[(s * c + ch) * hw..][..hw]);
                    let sum: f64 = planes.clone().map(|p| lane_sum(p, |x| x) as f64).sum();
                    let mean = sum / (n * hw) as f64;
                    let m = mean as f32;
                    let sq: f64 = planes.map(|p| lane_sum(p, |x| (x - m) * (x - m)) as f64).sum();
                    (mean, sq / (n * hw) as f64)
                })
                .collect();
            let (mean, var) = per_channel.into_iter().unzip();
            Ok(BatchStats { mean, var, count: n * hw })
        })
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

    fn forward(&self, dims: &[usize], x: &[f32], weight: &[f32], bias: &[f32]) -> Result<Vec<f32>> {
        let (_, c, hw) = dims3(dims)?;
        if weight.len() != c || bias.len() != c || self.mean.len() != c {
            bail!("{NAME}: {c} channels, but weight, bias or statistics have another length")
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(p, (o, xs))| {
            let ch = p % c;
            let scale = weight[ch] * self.inv_std[ch];
            let shift = bias[ch] - self.mean[ch] * scale;
            for (o, &x) in o.iter_mut().zip(xs) {
                let y = x * scale + shift;
                *o = if self.relu { y.max(0.0) } else { y };
            }
        });
        Ok(out)
    }

    /// (dx, dweight, dbias) from x, the weight, the output (for the ReLU mask) and its gradient.
    fn backward(&self, dims: &[usize], x: &[f32], weight: &[f32], res: &[f32], grad: &[f32]) -> Result<[Vec<f32>; 3]> {
        let (n, c, hw) = dims3(dims)?;
        // dx starts as the output gradient behind the ReLU's mask.
        let mut dx = if self.relu { relu_masked(grad, res) } else { grad.to_vec() };
        // Per channel: Σ dy and Σ dy * (x - mean), plane sums in f32 lanes, added in f64.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mean = self.mean[ch];
                (0..n).fold((0f64, 0f64), |(a, b), s| {
                    let base = (s * c + ch) * hw;
                    let (d, xs) = (&dx[base..base + hw], &x[base..base + hw]);
                    (a + lane_sum(d, |v| v) as f64, b + lane_dot(d, xs, mean) as f64)
                })
            })
            .collect();
        let count = (n * hw) as f64;
        let (mean, inv_std) = (&self.mean, &self.inv_std);
        let xhat_sums: Vec<f64> = sums.iter().zip(inv_std).map(|(s, &i)| s.1 * i as f64).collect();
        dx.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(p, (d, xs))| {
            let ch = p % c;
            let (m, i) = (mean[ch], inv_std[ch]);
            let mean_dy = (sums[ch].0 / count) as f32;
            let mean_dy_xhat = (xhat_sums[ch] / count) as f32;
            let k = weight[ch] * i;
            for (d, &x) in d.iter_mut().zip(xs) {
                *d = k * (*d - mean_dy - (x - m) * i * mean_dy_xhat);
            }
        });
        let dweight = xhat_sums.iter().map(|&v| v as f32).collect();
        let dbias = sums.iter().map(|s| s.0 as f32).collect();
        Ok([dx, dweight, dbias])
    }
}

/// Lanes for the reductions: independent partial sums that the compiler can keep in one vector.
const LANES: usize = 8;

/// Σ f(v) over a slice, in `LANES` partial sums.
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ d * (x - mean) over two slices of equal length, in `LANES` partial sums.
fn lane_dot(d: &[f32], x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (dc, xc) = (d.chunks_exact(LANES), x.chunks_exact(LANES));
    let tail: f32 = dc.remainder().iter().zip(xc.remainder()).map(|(d, x)| d * (x - mean)).sum();
    for (dc, xc) in dc.zip(xc) {
        for ((a, d), x) in acc.iter_mut().zip(dc).zip(xc) {
            *a += d * (x - mean);
        }
    }
    acc.iter().sum::<f32>() + tail
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
