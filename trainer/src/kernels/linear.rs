//! A fully connected layer on [M, K] rows, y = x · wᵀ + b, as one op each way: the bias is written
//! before the product accumulates onto it, and the backward pass makes dx, dw and db from one read
//! of the output gradient per block of rows. candle runs matmul, a broadcast add and (backward)
//! a transpose, two matmuls and a sum, each a parallel region with its own barrier: with the ViT's
//! narrow layers (64-192 wide) those dominated a training step.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, View};
use super::storage::{slice, with_values};
use super::transformer::{gelu_slope, gelu_value};

const NAME: &str = "crt-linear";
/// Rows per parallel task.
const ROWS: usize = 256;

/// With `gelu`, the layer's output goes through GELU in the same pass (the MLP's fc1: one graph
/// node, one output and one gradient buffer fewer); the pre-activations are kept for the backward
/// pass when a gradient will be asked for (`tracked`), recomputed otherwise.
#[derive(Default)]
pub struct Linear {
    pub gelu: bool,
    pub tracked: bool,
    pub saved: std::sync::Mutex<Option<Vec<f32>>>,
}

/// x · wᵀ + b into `y` (rows of O), block by block in parallel.
fn affine(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], k: usize, o: usize) {
    let wt = View::row_major(w, o, k).t();
    y.par_chunks_mut(ROWS * o).zip(x.par_chunks(ROWS * k)).for_each(|(y, x)| {
        y.chunks_mut(o).for_each(|row| row.copy_from_slice(b));
        matmul(y, View::row_major(x, x.len() / k, k), wt, true);
    });
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        NAME
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
        let (x, w, b) = (slice(s1, l1, NAME)?, slice(s2, l2, NAME)?, slice(s3, l3, NAME)?);
        let (&[m, k], &[o, k2], &[o2]) = (l1.dims(), l2.dims(), l3.dims()) else {
            bail!("{NAME}: expected x [M, K], w [O, K], b [O], got {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims())
        };
        if k != k2 || o != o2 {
            bail!("{NAME}: x {:?}, w {:?} and b {:?} do not fit", l1.dims(), l2.dims(), l3.dims())
        }
        let mut y = vec![0f32; m * o];
        affine(&mut y, x, w, b, k, o);
        if self.gelu {
            let act: Vec<f32> = y.par_iter().with_min_len(1 << 14).map(|&v| gelu_value(v)).collect();
            if self.tracked {
                *self.saved.lock().expect("linear pre-activations") = Some(y);
            }
            y = act;
        }
        Ok((CpuStorage::F32(y), Shape::from((m, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let o = w.dim(0)?;
        let (dx, dw, db) = with_values(x, NAME, |xv| {
            with_values(w, NAME, |wv| {
                with_values(grad, NAME, |g| {
                    // Through GELU first: the gradient with respect to the pre-activations.
                    let through_gelu: Vec<f32>;
                    let g = if self.gelu {
                        let saved = self.saved.lock().expect("linear pre-activations").take();
                        let pre = match saved.filter(|p| p.len() == m * o) {
                            Some(pre) => pre,
                            None => with_values(b, NAME, |bv| {
                                let mut pre = vec![0f32; m * o];
                                affine(&mut pre, xv, wv, bv, k, o);
                                Ok(pre)
                            })?,
                        };
                        through_gelu =
                            pre.par_iter().zip(g).with_min_len(1 << 14).map(|(&p, &g)| g * gelu_slope(p)).collect();
                        &through_gelu[..]
                    } else {
                        g
                    };
                    let mut dx = vec![0f32; m * k];
                    let w = View::row_major(wv, o, k);
                    // dx = g · w per block; dw = Σ gᵀ · x and db = Σ g per block, summed in block order.
                    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
                        .par_chunks_mut(ROWS * k)
                        .zip(xv.par_chunks(ROWS * k).zip(g.par_chunks(ROWS * o)))
                        .map(|(dx, (x, g))| {
                            let rows = x.len() / k;
                            let gv = View::row_major(g, rows, o);
                            matmul(dx, gv, w, false);
                            let mut dw = vec![0f32; o * k];
                            matmul(&mut dw, gv.t(), View::row_major(x, rows, k), false);
                            let mut db = vec![0f32; o];
                            for row in g.chunks(o) {
                                db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
                            }
                            (dw, db)
                        })
                        .collect();
                    let (mut dw, mut db) = (vec![0f32; o * k], vec![0f32; o]);
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
            Some(Tensor::from_vec(dx, (m, k), dev)?),
            Some(Tensor::from_vec(dw, (o, k), dev)?),
            Some(Tensor::from_vec(db, o, dev)?),
        ))
    }
}
