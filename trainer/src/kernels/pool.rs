//! Max-pooling with a square window equal to its stride (no padding, partial windows dropped), and
//! its backward pass, which sends each output gradient to the first maximum of its window in
//! row-major order (PyTorch's choice; candle's reference splits it among ties).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{slice, with_values};

const NAME: &str = "crt-max-pool2d";

#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    pub k: usize,
}

/// Planes (N * C), input side (h, w) and output side (ho, wo).
#[derive(Debug, Clone, Copy)]
struct PoolGeom {
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

/// Pools one plane [h, w] into `out` [h / k, w / k] and, when given, records each window's
/// first maximum as its offset in the window (dy * k + dx, below k² <= 255).
pub fn pool_plane(k: usize, h: usize, w: usize, plane: &[f32], out: &mut [f32], argmax: Option<&mut [u8]>) {
    let (ho, wo) = (h / k, w / k);
    let mut scratch;
    let argmax = match argmax {
        Some(a) => a,
        None => {
            scratch = vec![0u8; ho * wo];
            &mut scratch[..]
        }
    };
    for oy in 0..ho {
        let (o, a) = (&mut out[oy * wo..][..wo], &mut argmax[oy * wo..][..wo]);
        if k == 2 {
            pool_row2(&plane[2 * oy * w..][..2 * wo], &plane[(2 * oy + 1) * w..][..2 * wo], o, a);
            continue;
        }
        for ox in 0..wo {
            let (mut best, mut at) = (plane[oy * k * w + ox * k], 0);
            for dy in 0..k {
                let row = &plane[(oy * k + dy) * w + ox * k..][..k];
                for (dx, &v) in row.iter().enumerate() {
                    if takes(v, best) {
                        (best, at) = (v, dy * k + dx);
                    }
                }
            }
            (o[ox], a[ox]) = (best, at as u8);
        }
    }
}

/// Whether `v` replaces the current maximum: larger, or NaN (NaN propagates, as in PyTorch).
#[inline(always)]
fn takes(v: f32, best: f32) -> bool {
    v > best || v.is_nan()
}

/// 2x2 windows over two rows, written without branches (selects) so that random data does not
/// stall on mispredictions.
fn pool_row2(r0: &[f32], r1: &[f32], out: &mut [f32], argmax: &mut [u8]) {
    let windows = r0.chunks_exact(2).zip(r1.chunks_exact(2));
    for ((o, a), (top, bottom)) in out.iter_mut().zip(argmax.iter_mut()).zip(windows) {
        let (mut best, mut at) = (top[0], 0u8);
        for (v, i) in [(top[1], 1u8), (bottom[0], 2), (bottom[1], 3)] {
            let t = takes(v, best);
            best = if t { v } else { best };
            at = if t { i } else { at };
        }
        (*o, *a) = (best, at);
    }
}

/// The inverse routing: adds each pooled gradient at its window's recorded maximum, in a plane
/// [h, w] (`keep` decides per pooled value whether it passes, e.g. a ReLU's mask).
pub fn unpool_plane(
    k: usize,
    w: usize,
    grad: &[f32],
    argmax: &[u8],
    wo: usize,
    dx: &mut [f32],
    keep: impl Fn(usize) -> bool,
) {
    for (j, (&g, &a)) in grad.iter().zip(argmax).enumerate() {
        if keep(j) {
            let (oy, ox, a) = (j / wo, j % wo, a as usize);
            dx[(oy * k + a / k) * w + ox * k + a % k] += g;
        }
    }
}

impl MaxPool2d {
    fn geom(&self, dims: &[usize]) -> Result<PoolGeom> {
        let &[n, c, h, w] = dims else { bail!("{NAME}: expected [N, C, H, W], got {dims:?}") };
        if self.k == 0 || self.k > 15 || h < self.k || w < self.k {
            bail!("{NAME}: window {} does not fit a {h}x{w} input", self.k)
        }
        Ok(PoolGeom { planes: n * c, h, w, ho: h / self.k, wo: w / self.k })
    }

    pub fn forward(&self, dims: &[usize], x: &[f32]) -> Result<(Vec<f32>, Shape)> {
        let g = self.geom(dims)?;
        let mut out = vec![0f32; g.planes * g.ho * g.wo];
        out.par_chunks_mut(g.ho * g.wo).zip(x.par_chunks(g.h * g.w)).for_each(|(o, plane)| {
            pool_plane(self.k, g.h, g.w, plane, o, None);
        });
        Ok((out, Shape::from((dims[0], dims[1], g.ho, g.wo))))
    }

    pub fn backward(&self, dims: &[usize], x: &[f32], grad: &[f32]) -> Result<Vec<f32>> {
        let g = self.geom(dims)?;
        let mut dx = vec![0f32; g.planes * g.h * g.w];
        dx.par_chunks_mut(g.h * g.w).zip(x.par_chunks(g.h * g.w).zip(grad.par_chunks(g.ho * g.wo))).for_each_init(
            || (vec![0f32; g.ho * g.wo], vec![0u8; g.ho * g.wo]),
            |(pooled, argmax), (d, (plane, go))| {
                pool_plane(self.k, g.h, g.w, plane, pooled, Some(argmax));
                unpool_plane(self.k, g.w, go, argmax, g.wo, d, |_| true);
            },
        );
        Ok(dx)
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (out, shape) = self.forward(l.dims(), slice(s, l, NAME)?)?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values(x, NAME, |xv| with_values(grad, NAME, |gv| self.backward(x.dims(), xv, gv)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
