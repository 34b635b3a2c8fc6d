//! A whole pre-norm transformer block as one op each way:
//! x1 = x + proj(attention(qkv(LN1(x)))), out = x1 + fc2(GELU(fc1(LN2(x1)))).
//!
//! Run layer by layer, each of the block's eight ops was a parallel region over the whole batch with
//! its own barrier, and in candle's backward pass each of their outputs cost a zeroed gradient
//! buffer and an add (~20% of a ViT training step). Here a task takes a few samples through the
//! whole block while their activations stay in cache, and the block is one graph node: the input
//! and the block's twelve parameters concatenated into one vector (their gradient comes back as one
//! vector too, which candle splits for the concatenation's inputs).
//!
//! Tasks are fixed runs of samples, and the parameter gradients are summed task by task in task
//! order, so results do not depend on the thread count or the schedule.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul, View};
use super::lanes;
use super::storage::{slice, with_values};
use super::transformer::{attention_sample, attention_sample_backward, layer_norm_backward_rows, layer_norm_rows};

const NAME: &str = "crt-vit-block";
/// Rows (tokens) per task, rounded to whole samples: a task's activations (~2 KB per row with the
/// attention probabilities) stay in L2.
const ROWS: usize = 256;

/// The block's shape. The parameters are concatenated in [`Block::sizes`] order.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// Samples and tokens per sample.
    pub n: usize,
    pub tokens: usize,
    /// Token width and the MLP's hidden width.
    pub dim: usize,
    pub hidden: usize,
    pub heads: usize,
    pub eps: f32,
}

/// The twelve parameter slices, named.
struct Params<T> {
    norm1_w: T,
    norm1_b: T,
    qkv_w: T,
    qkv_b: T,
    proj_w: T,
    proj_b: T,
    norm2_w: T,
    norm2_b: T,
    fc1_w: T,
    fc1_b: T,
    fc2_w: T,
    fc2_b: T,
}

impl<T> Params<T> {
    fn from_sizes(sizes: [usize; 12], take: impl FnMut(usize) -> T) -> Self {
        let [norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b] =
            sizes.map(take);
        Params { norm1_w, norm1_b, qkv_w, qkv_b, proj_w, proj_b, norm2_w, norm2_b, fc1_w, fc1_b, fc2_w, fc2_b }
    }
}

impl Block {
    /// Lengths of norm1 weight and bias, qkv weight [3D, D] and bias, proj weight [D, D] and bias,
    /// norm2 weight and bias, fc1 weight [H, D] and bias, fc2 weight [D, H] and bias.
    pub fn sizes(&self) -> [usize; 12] {
        let (d, h) = (self.dim, self.hidden);
        [d, d, 3 * d * d, 3 * d, d * d, d, d, d, h * d, h, d * h, d]
    }

    fn split<'a>(&self, all: &'a [f32]) -> Params<&'a [f32]> {
        let mut rest = all;
        Params::from_sizes(self.sizes(), |len| {
            let (head, tail) = rest.split_at(len);
            rest = tail;
            head
        })
    }

    fn split_mut<'a>(&self, all: &'a mut [f32]) -> Params<&'a mut [f32]> {
        let mut rest = all;
        Params::from_sizes(self.sizes(), |len| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            head
        })
    }

    fn params_len(&self) -> usize {
        self.sizes().iter().sum()
    }

    /// Samples per task.
    fn samples_per_task(&self) -> usize {
        (ROWS / self.tokens.max(1)).max(1)
    }

    fn check(&self, x_len: usize, p_len: usize) -> Result<()> {
        let rows = self.n * self.tokens;
        if rows == 0 || self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            bail!("{NAME}: {} samples of {} tokens, width {} in {} heads", self.n, self.tokens, self.dim, self.heads)
        }
        if x_len != rows * self.dim || p_len != self.params_len() {
            bail!(
                "{NAME}: expected {} input values and {} parameters, got {x_len} and {p_len}",
                rows * self.dim,
                self.params_len()
            )
        }
        Ok(())
    }
}

/// What one task's forward pass keeps for the backward pass (its rows only).
#[derive(Default)]
struct Saved {
    ln1: Vec<f32>,
    qkv: Vec<f32>,
    probs: Vec<f32>,
    attn: Vec<f32>,
    x1: Vec<f32>,
    ln2: Vec<f32>,
    /// fc1's pre-activations and Φ of them (GELU(z) = z Φ(z)).
    pre: Vec<f32>,
    cdf: Vec<f32>,
    act: Vec<f32>,
}

impl Saved {
    /// Every buffer at its length for `rows` rows. Contents are left over from earlier use: the
    /// forward pass overwrites all of each buffer before anything reads it.
    fn size(&mut self, rows: usize, probs: usize, d: usize, h: usize) {
        let lens =
            [(&mut self.ln1, d), (&mut self.qkv, 3 * d), (&mut self.attn, d), (&mut self.x1, d), (&mut self.ln2, d)];
        for (v, width) in lens.into_iter().chain([(&mut self.pre, h), (&mut self.cdf, h), (&mut self.act, h)]) {
            v.resize(rows * width, 0.0);
        }
        self.probs.resize(probs, 0.0);
    }
}

/// Buffers of finished passes, for later ones: allocating and zeroing ~1 MB per task was ~5% of a
/// training step. At most as many as were in flight at once come back (one per task of every block
/// of a step); a cap keeps a stray use from growing it without end.
static POOL: Mutex<Vec<Saved>> = Mutex::new(Vec::new());
const POOL_CAP: usize = 1024;

fn recycle(saved: impl IntoIterator<Item = Saved>) {
    let mut pool = POOL.lock().expect("block buffer pool");
    for s in saved {
        if pool.len() < POOL_CAP {
            pool.push(s);
        }
    }
}

/// The backward pass's per-task temporaries, one set per thread (each is overwritten before it is read).
#[derive(Default)]
struct Scratch {
    dz: Vec<f32>,
    dln: Vec<f32>,
    dx1: Vec<f32>,
    da: Vec<f32>,
    dqkv: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The op; with `tracked` the forward pass keeps its activations for the backward pass.
pub struct VitBlock {
    pub shape: Block,
    pub tracked: bool,
    saved: Mutex<Option<Vec<Saved>>>,
}

impl VitBlock {
    pub fn new(shape: Block, tracked: bool) -> Self {
        VitBlock { shape, tracked, saved: Mutex::new(None) }
    }
}

/// y = x · wᵀ + b (+ `residual` when given) for rows of x; w is [O, K] row-major.
fn affine(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], residual: Option<&[f32]>) {
    let (o, k) = (b.len(), w.len() / b.len());
    match residual {
        Some(r) => y.chunks_mut(o).zip(r.chunks(o)).for_each(|(y, r)| {
            y.iter_mut().zip(r).zip(b).for_each(|((y, r), b)| *y = r + b);
        }),
        None => y.chunks_mut(o).for_each(|row| row.copy_from_slice(b)),
    }
    matmul(y, View::row_major(x, x.len() / k, k), View::row_major(w, o, k).t(), true);
}

/// A linear layer's backward pass on rows: dx = g · w (skipped when `dx` is None), dw = gᵀ · x,
/// db = Σ g, with w [O, K].
fn affine_backward(dx: Option<&mut [f32]>, dw: &mut [f32], db: &mut [f32], x: &[f32], w: &[f32], g: &[f32]) {
    let (o, k) = (db.len(), w.len() / db.len());
    let rows = g.len() / o;
    let gv = View::row_major(g, rows, o);
    if let Some(dx) = dx {
        matmul(dx, gv, View::row_major(w, o, k), false);
    }
    matmul(dw, gv.t(), View::row_major(x, rows, k), false);
    db.fill(0.0);
    for row in g.chunks(o) {
        db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
    }
}

impl Block {
    /// One task's forward pass: `out` from `x` (both `samples` x tokens rows).
    fn forward_task(&self, out: &mut [f32], x: &[f32], p: &Params<&[f32]>) -> Saved {
        let (l, d, h) = (self.tokens, self.dim, self.hidden);
        let rows = x.len() / d;
        let samples = rows / l;
        let hd = d / self.heads;
        let mut s = POOL.lock().expect("block buffer pool").pop().unwrap_or_default();
        s.size(rows, samples * self.heads * l * l, d, h);
        layer_norm_rows(&mut s.ln1, x, p.norm1_w, p.norm1_b, self.eps);
        affine(&mut s.qkv, &s.ln1, p.qkv_w, p.qkv_b, None);
        let per_probs = self.heads * l * l;
        for ((a, qkv), probs) in
            s.attn.chunks_mut(l * d).zip(s.qkv.chunks(l * 3 * d)).zip(s.probs.chunks_mut(per_probs))
        {
            attention_sample(a, qkv, probs, l, d, hd);
        }
        affine(&mut s.x1, &s.attn, p.proj_w, p.proj_b, Some(x));
        layer_norm_rows(&mut s.ln2, &s.x1, p.norm2_w, p.norm2_b, self.eps);
        affine(&mut s.pre, &s.ln2, p.fc1_w, p.fc1_b, None);
        lanes::gelu(&s.pre, &mut s.cdf, &mut s.act);
        affine(out, &s.act, p.fc2_w, p.fc2_b, Some(&s.x1));
        s
    }

    /// One task's backward pass: `dx` and the task's parameter gradients `dp` from the output
    /// gradient `g`, the task's input `x` and what its forward pass kept.
    fn backward_task(
        &self,
        dx: &mut [f32],
        dp: &mut Params<&mut [f32]>,
        x: &[f32],
        g: &[f32],
        p: &Params<&[f32]>,
        s: &Saved,
    ) {
        let (l, d, h) = (self.tokens, self.dim, self.hidden);
        let rows = x.len() / d;
        let hd = d / self.heads;
        SCRATCH.with_borrow_mut(|t| {
            for (v, width) in [(&mut t.dz, h), (&mut t.dln, d), (&mut t.dx1, d), (&mut t.da, d), (&mut t.dqkv, 3 * d)] {
                v.resize(rows * width, 0.0);
            }
            // The MLP: fc2, GELU, fc1, then LN2 with the residual's gradient.
            affine_backward(Some(&mut t.dz), dp.fc2_w, dp.fc2_b, &s.act, p.fc2_w, g);
            lanes::gelu_backward(&mut t.dz, &s.pre, &s.cdf);
            affine_backward(Some(&mut t.dln), dp.fc1_w, dp.fc1_b, &s.ln2, p.fc1_w, &t.dz);
            t.dx1.copy_from_slice(g);
            dp.norm2_w.fill(0.0);
            dp.norm2_b.fill(0.0);
            layer_norm_backward_rows(&mut t.dx1, &s.x1, &t.dln, p.norm2_w, dp.norm2_w, dp.norm2_b, self.eps, true);
            // Attention: proj, the attention core per sample, qkv, then LN1 with the residual's gradient.
            affine_backward(Some(&mut t.da), dp.proj_w, dp.proj_b, &s.attn, p.proj_w, &t.dx1);
            let per_probs = self.heads * l * l;
            let samples = t.dqkv.chunks_mut(l * 3 * d).zip(s.qkv.chunks(l * 3 * d));
            for ((dqkv, qkv), (g, probs)) in samples.zip(t.da.chunks(l * d).zip(s.probs.chunks(per_probs))) {
                attention_sample_backward(dqkv, qkv, g, Some(probs), l, d, hd);
            }
            affine_backward(Some(&mut t.dln), dp.qkv_w, dp.qkv_b, &s.ln1, p.qkv_w, &t.dqkv);
            dx.copy_from_slice(&t.dx1);
            dp.norm1_w.fill(0.0);
            dp.norm1_b.fill(0.0);
            layer_norm_backward_rows(dx, x, &t.dln, p.norm1_w, dp.norm1_w, dp.norm1_b, self.eps, true);
        })
    }
}

impl CustomOp2 for VitBlock {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, params) = (slice(s1, l1, NAME)?, slice(s2, l2, NAME)?);
        let b = self.shape;
        b.check(x.len(), params.len())?;
        let p = b.split(params);
        let per = b.samples_per_task() * b.tokens * b.dim;
        let mut out = vec![0f32; x.len()];
        let tasks = out.par_chunks_mut(per).zip(x.par_chunks(per));
        if self.tracked {
            let saved: Vec<Saved> = tasks.map(|(out, x)| b.forward_task(out, x, &p)).collect();
            *self.saved.lock().expect("block activations") = Some(saved);
        } else {
            tasks.for_each(|(out, x)| recycle([b.forward_task(out, x, &p)]));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let b = self.shape;
        let saved = self.saved.lock().expect("block activations").take();
        let (dx, dparams) = with_values(x, NAME, |xv| {
            with_values(params, NAME, |pv| {
                with_values(grad, NAME, |g| {
                    b.check(xv.len(), pv.len())?;
                    let p = b.split(pv);
                    // Without kept activations (a gradient asked of an untracked forward): redo it.
                    let saved = match saved {
                        Some(s) => s,
                        None => {
                            let per = b.samples_per_task() * b.tokens * b.dim;
                            let mut out = vec![0f32; xv.len()];
                            out.par_chunks_mut(per)
                                .zip(xv.par_chunks(per))
                                .map(|(o, x)| b.forward_task(o, x, &p))
                                .collect()
                        }
                    };
                    let per = b.samples_per_task() * b.tokens * b.dim;
                    let mut dx = vec![0f32; xv.len()];
                    let partial: Vec<Vec<f32>> = dx
                        .par_chunks_mut(per)
                        .zip(xv.par_chunks(per).zip(g.par_chunks(per)))
                        .zip(saved.par_iter())
                        .map(|((dx, (x, g)), s)| {
                            let mut dp = vec![0f32; b.params_len()];
                            b.backward_task(dx, &mut b.split_mut(&mut dp), x, g, &p, s);
                            dp
                        })
                        .collect();
                    recycle(saved);
                    let mut dp = vec![0f32; b.params_len()];
                    for part in partial {
                        dp.iter_mut().zip(part).for_each(|(a, v)| *a += v);
                    }
                    Ok((dx, dp))
                })
            })
        })?;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, x.shape(), dev)?), Some(Tensor::from_vec(dparams, params.shape(), dev)?)))
    }
}
