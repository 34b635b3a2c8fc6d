//! relu(a + b) in one pass (the end of a residual block); the backward pass masks the output
//! gradient once and hands the same tensor to both inputs.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::relu_mask;
use super::storage::{par_planes, slice};

const NAME: &str = "crt-add-relu";
/// Elements per parallel task: large enough to amortize scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;

pub struct AddRelu;

/// The gradient where the ReLU's output is positive, zero elsewhere (PyTorch's threshold backward).
pub fn relu_masked(grad: &[f32], res: &[f32]) -> Vec<f32> {
    // Collected rather than filled: no zeroing pass before the write.
    let mut out = Vec::new();
    grad.par_iter()
        .zip(res)
        .with_min_len(CHUNK)
        .map(|(&g, &r)| if r > 0.0 { g } else { 0.0 })
        .collect_into_vec(&mut out);
    out
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("{NAME}: shapes differ: {:?} and {:?}", l1.shape(), l2.shape())
        }
        let (a, b) = (slice(s1, l1, NAME)?, slice(s2, l2, NAME)?);
        let out = par_planes(a.len(), CHUNK, |i| {
            let part = i * CHUNK..((i + 1) * CHUNK).min(a.len());
            a[part.clone()].iter().zip(&b[part]).map(|(a, b)| (a + b).max(0.0))
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !a.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let masked = Tensor::from_vec(relu_mask(grad, res)?, res.shape(), res.device())?;
        Ok((a.track_op().then(|| masked.clone()), b.track_op().then_some(masked)))
    }
}
