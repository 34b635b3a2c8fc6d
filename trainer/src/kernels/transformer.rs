//! The ViT's row-wise ops as single passes: LayerNorm over the last dimension and softmax over the
//! last dimension, each with its backward pass. Composed from candle's ops they take 8-10 tensor
//! passes each way, each one a parallel region whose barrier waits dominated a ViT training step
//! (measured ~40% of it in candle's barrier and broadcast binary maps); candle_nn's own fused
//! versions have no backward pass.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
        out.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(out, x)| {
            for (o, row) in out.chunks_mut(d).zip(x.chunks(d)) {
                let (mean, rstd) = row_stats(row, self.eps);
                for i in 0..d {
                    o[i] = (row[i] - mean) * rstd * w[i] + b[i];
                }
            }
        });
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
                            for ((dx, row), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                                let (mean, rstd) = row_stats(row, eps);
                                // dxhat = g * w; dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
                                let (mut s1, mut s2) = (0f32, 0f32);
                                for i in 0..d {
                                    let xhat = (row[i] - mean) * rstd;
                                    let dxhat = g[i] * wv[i];
                                    s1 += dxhat;
                                    s2 += dxhat * xhat;
                                    dw[i] += g[i] * xhat;
                                    db[i] += g[i];
                                }
                                let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                                for i in 0..d {
                                    let xhat = (row[i] - mean) * rstd;
                                    dx[i] = rstd * (g[i] * wv[i] - m1 - xhat * m2);
                                }
                            }
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
