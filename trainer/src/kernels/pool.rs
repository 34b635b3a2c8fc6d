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

impl MaxPool2d {
    fn geom(&self, dims: &[usize]) -> Result<PoolGeom> {
        let &[n, c, h, w] = dims else { bail!("{NAME}: expected [N, C, H, W], got {dims:?}") };
        if self.k == 0 || h < self.k || w < self.k {
            bail!("{NAME}: window {} does not fit a {h}x{w} input", self.k)
        }
        Ok(PoolGeom { planes: n * c, h, w, ho: h / self.k, wo: w / self.k })
    }

    /// The offset inside a plane of the first maximum of window (oy, ox).
    fn argmax(&self, g: &PoolGeom, plane: &[f32], oy: usize, ox: usize) -> usize {
        let mut best = (oy * self.k) * g.w + ox * self.k;
        for dy in 0..self.k {
            let row = (oy * self.k + dy) * g.w + ox * self.k;
            for i in row..row + self.k {
                // A NaN wins too, as in PyTorch.
                if plane[i] > plane[best] || plane[i].is_nan() {
                    best = i;
                }
            }
        }
        best
    }

    pub fn forward(&self, dims: &[usize], x: &[f32]) -> Result<(Vec<f32>, Shape)> {
        let g = self.geom(dims)?;
        let mut out = vec![0f32; g.planes * g.ho * g.wo];
        out.par_chunks_mut(g.ho * g.wo).zip(x.par_chunks(g.h * g.w)).for_each(|(o, plane)| {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    o[oy * g.wo + ox] = plane[self.argmax(&g, plane, oy, ox)];
                }
            }
        });
        Ok((out, Shape::from((dims[0], dims[1], g.ho, g.wo))))
    }

    pub fn backward(&self, dims: &[usize], x: &[f32], grad: &[f32]) -> Result<Vec<f32>> {
        let g = self.geom(dims)?;
        let mut dx = vec![0f32; g.planes * g.h * g.w];
        dx.par_chunks_mut(g.h * g.w).zip(x.par_chunks(g.h * g.w).zip(grad.par_chunks(g.ho * g.wo))).for_each(
            |(d, (plane, go))| {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        d[self.argmax(&g, plane, oy, ox)] += go[oy * g.wo + ox];
                    }
                }
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
