//! A fully connected layer on [M, K] rows, y = x · wᵀ + b, as one op each way: the bias is written
//! before the product accumulates onto it, and the backward pass makes dx, dw and db from one read
//! of the output gradient per block of rows. candle runs matmul, a broadcast add and (backward)
//! a transpose, two matmuls and a sum, each a parallel region with its own barrier: with the ViT's
//! narrow layers (64-192 wide) those dominated a training step.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, View};
use super::storage::{slice, with_values};

const NAME: &str = "crt-linear";
/// Rows per parallel task.
const ROWS: usize = 256;

pub struct Linear;

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
        let wt = View::row_major(w, o, k).t();
        y.par_chunks_mut(ROWS * o).zip(x.par_chunks(ROWS * k)).for_each(|(y, x)| {
            y.chunks_mut(o).for_each(|row| row.copy_from_slice(b));
            matmul(y, View::row_major(x, x.len() / k, k), wt, true);
        });
        Ok((CpuStorage::F32(y), Shape::from((m, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let o = w.dim(0)?;
        let (dx, dw, db) = with_values(x, NAME, |xv| {
            with_values(w, NAME, |wv| {
                with_values(grad, NAME, |g| {
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
