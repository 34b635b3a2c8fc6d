//! The ViT's LayerNorm and softmax kernels against compositions of candle's own ops: outputs and
//! every gradient.

mod kernels_common;

use candle_core::{Tensor, D};
use crt_trainer::kernels;
use kernels_common::{assert_close, random, rng, var, weighted_sum};

// Relative per-tensor tolerances (max |ours - candle| <= rtol * max |candle|), a few times the
// worst ratio measured (x86-64; the two sum in different orders).
const RTOL: f32 = 2e-6;

fn layer_norm_candle(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let mean = x.mean_keepdim(D::Minus1).unwrap();
    let centred = x.broadcast_sub(&mean).unwrap();
    let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let rstd = (var + eps).unwrap().sqrt().unwrap();
    centred.broadcast_div(&rstd).unwrap().broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
}

#[test]
fn layer_norm_matches_candle_ops() {
    let mut r = rng(3);
    for dims in [vec![5, 64], vec![2, 7, 64], vec![300, 10]] {
        let d = *dims.last().unwrap();
        // Not centred and not unit-scaled, so that the statistics matter.
        let x = candle_core::Var::from_tensor(&random(&mut r, &dims).affine(3.0, 0.7).unwrap()).unwrap();
        let (w, b) = (var(&mut r, &[d]), var(&mut r, &[d]));
        let weights = random(&mut r, &dims);
        let ours = kernels::layer_norm(&x, &w, &b, 1e-5).unwrap();
        let want = layer_norm_candle(&x, &w, &b, 1e-5);
        assert_close(&ours, &want, RTOL, "layer norm output");
        let g_ours = weighted_sum(&ours, &weights).backward().unwrap();
        let g_want = weighted_sum(&want, &weights).backward().unwrap();
        for (name, v) in [("dx", &x), ("dweight", &w), ("dbias", &b)] {
            assert_close(g_ours.get(v).unwrap(), g_want.get(v).unwrap(), RTOL, &format!("layer norm {name} {dims:?}"));
        }
    }
}

#[test]
fn softmax_matches_candle_ops() {
    let mut r = rng(4);
    for dims in [vec![2, 4, 49, 49], vec![3, 64], vec![1000, 7]] {
        let x = candle_core::Var::from_tensor(&random(&mut r, &dims).affine(4.0, 1.0).unwrap()).unwrap();
        let weights = random(&mut r, &dims);
        let ours = kernels::softmax_last_dim(&x).unwrap();
        let want = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        assert_close(&ours, &want, RTOL, "softmax output");
        let g_ours = weighted_sum(&ours, &weights).backward().unwrap();
        let g_want = weighted_sum(&want, &weights).backward().unwrap();
        assert_close(g_ours.get(&x).unwrap(), g_want.get(&x).unwrap(), RTOL, &format!("softmax dx {dims:?}"));
    }
}
