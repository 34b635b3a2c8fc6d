//! The ViT's LayerNorm, softmax, GELU, linear and attention kernels against candle's own ops: outputs and
//! every gradient.

mod kernels_common;

use candle_core::Var;
use candle_core::{Tensor, D};
use crt_trainer::kernels;
use kernels_common::{assert_close, random, rng, var, weighted_sum};

// Relative per-tensor tolerances (max |ours - candle| <= rtol * max |candle|), a few times the
// worst ratio measured (x86-64; the two sum in different orders).
const RTOL: f32 = 2e-6;
/// The linear layer's weight and bias gradients, sums over up to 1000 rows in blocks: worst 1.2e-6.
const RTOL_SUMS: f32 = 5e-6;
/// The fused transformer block against candle's ops layer by layer (eight layers of differently
/// ordered sums): worst 3.3e-6.
const RTOL_BLOCK: f32 = 1e-5;

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

#[test]
fn gelu_matches_candle_gelu_erf() {
    let mut r = rng(5);
    let x = candle_core::Var::from_tensor(&random(&mut r, &[70, 300]).affine(4.0, 0.0).unwrap()).unwrap();
    let weights = random(&mut r, &[70, 300]);
    let ours = kernels::gelu_erf(&x).unwrap();
    let want = x.gelu_erf().unwrap();
    assert_close(&ours, &want, RTOL, "gelu output");
    let g_ours = weighted_sum(&ours, &weights).backward().unwrap();
    let g_want = weighted_sum(&want, &weights).backward().unwrap();
    assert_close(g_ours.get(&x).unwrap(), g_want.get(&x).unwrap(), RTOL, "gelu dx");
}

#[test]
fn linear_matches_candle_matmul_and_broadcast_add() {
    let mut r = rng(6);
    // One block of rows and several (the kernel splits rows into blocks of 256).
    for (m, k, o) in [(5, 64, 192), (1000, 64, 128), (600, 128, 64), (3, 48, 64)] {
        let (x, w, b) = (var(&mut r, &[m, k]), var(&mut r, &[o, k]), var(&mut r, &[o]));
        let weights = random(&mut r, &[m, o]);
        let ours = kernels::linear(&x, &w, &b).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        assert_close(&ours, &want, RTOL, &format!("linear output {m}x{k}x{o}"));
        let g_ours = weighted_sum(&ours, &weights).backward().unwrap();
        let g_want = weighted_sum(&want, &weights).backward().unwrap();
        for (name, v) in [("dx", &x), ("dweight", &w), ("dbias", &b)] {
            let what = format!("linear {name} {m}x{k}x{o}");
            let rtol = if name == "dx" { RTOL } else { RTOL_SUMS };
            assert_close(g_ours.get(v).unwrap(), g_want.get(v).unwrap(), rtol, &what);
        }
    }
}

/// The twin's attention with candle's ops: reshape + permute, q kᵀ / √hd, softmax, · v, heads back.
fn attention_candle(qkv: &Tensor, n: usize, l: usize, heads: usize) -> Tensor {
    let d = qkv.dim(1).unwrap() / 3;
    let hd = d / heads;
    let qkv = qkv.reshape((n, l, 3, heads, hd)).unwrap().permute((2, 0, 3, 1, 4)).unwrap().contiguous().unwrap();
    let (q, k, v) = (qkv.get(0).unwrap(), qkv.get(1).unwrap(), qkv.get(2).unwrap());
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt())).unwrap();
    let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
    p.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((n * l, d)).unwrap()
}

#[test]
fn attention_matches_candle_ops() {
    let mut r = rng(7);
    for (n, l, d, heads) in [(3, 49, 64, 4), (2, 5, 12, 3), (1, 64, 64, 1)] {
        let qkv = candle_core::Var::from_tensor(&random(&mut r, &[n * l, 3 * d]).affine(2.0, 0.0).unwrap()).unwrap();
        let weights = random(&mut r, &[n * l, d]);
        let ours = kernels::attention(&qkv, n, l, heads).unwrap();
        let want = attention_candle(&qkv, n, l, heads);
        assert_close(&ours, &want, RTOL, &format!("attention output {n}x{l}x{d}/{heads}"));
        let g_ours = weighted_sum(&ours, &weights).backward().unwrap();
        let g_want = weighted_sum(&want, &weights).backward().unwrap();
        let what = format!("attention dqkv {n}x{l}x{d}/{heads}");
        assert_close(g_ours.get(&qkv).unwrap(), g_want.get(&qkv).unwrap(), RTOL, &what);
        // A second backward pass over the same graph recomputes the probabilities it kept once.
        let again = weighted_sum(&ours, &weights).backward().unwrap();
        assert_close(again.get(&qkv).unwrap(), g_want.get(&qkv).unwrap(), RTOL, &format!("{what}, recomputed"));
    }
}

#[test]
fn linear_with_gelu_matches_candle_ops() {
    let mut r = rng(8);
    for (m, k, o) in [(600, 64, 128), (7, 16, 32)] {
        let (x, w, b) = (var(&mut r, &[m, k]), var(&mut r, &[o, k]), var(&mut r, &[o]));
        let weights = random(&mut r, &[m, o]);
        let ours = kernels::linear_gelu(&x, &w, &b).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap().gelu_erf().unwrap();
        assert_close(&ours, &want, RTOL, &format!("linear + gelu output {m}x{k}x{o}"));
        let g_want = weighted_sum(&want, &weights).backward().unwrap();
        // The first backward pass uses the kept pre-activations, the second recomputes them.
        for pass in ["kept", "recomputed"] {
            let g_ours = weighted_sum(&ours, &weights).backward().unwrap();
            for (name, v) in [("dx", &x), ("dweight", &w), ("dbias", &b)] {
                let what = format!("linear + gelu {name} {m}x{k}x{o} ({pass})");
                let rtol = if name == "dx" { RTOL } else { RTOL_SUMS };
                assert_close(g_ours.get(v).unwrap(), g_want.get(v).unwrap(), rtol, &what);
            }
        }
    }
}

/// A pre-norm transformer block with candle's ops (the layer-by-layer reference of the fused block).
fn block_candle(x: &Tensor, p: &[Var], n: usize, l: usize, heads: usize) -> Tensor {
    let lin = |x: &Tensor, w: &Var, b: &Var| x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap();
    let h = layer_norm_candle(x, &p[0], &p[1], 1e-5);
    let a = attention_candle(&lin(&h, &p[2], &p[3]), n, l, heads);
    let x1 = (x + lin(&a, &p[4], &p[5])).unwrap();
    let h = lin(&layer_norm_candle(&x1, &p[6], &p[7], 1e-5), &p[8], &p[9]).gelu_erf().unwrap();
    (x1 + lin(&h, &p[10], &p[11])).unwrap()
}

#[test]
fn transformer_block_matches_candle_ops() {
    let mut r = rng(9);
    // The ViT's MNIST shape (49 tokens: softmax rows with a partial vector), more samples than
    // one task takes (several tasks, gradient sums across them), and a width that is not a multiple
    // of 8 (LayerNorm's scalar path) with 3 heads.
    for (n, l, d, hidden, heads, keep) in
        [(3, 49, 64, 128, 4, true), (9, 64, 64, 128, 4, true), (40, 7, 12, 20, 3, true), (9, 64, 64, 128, 4, false)]
    {
        let what = format!("block {n}x{l}x{d} hidden {hidden} heads {heads} keep {keep}");
        let x = candle_core::Var::from_tensor(&random(&mut r, &[n * l, d]).affine(2.0, 0.3).unwrap()).unwrap();
        let shapes = [
            vec![d],
            vec![d],
            vec![3 * d, d],
            vec![3 * d],
            vec![d, d],
            vec![d],
            vec![d],
            vec![d],
            vec![hidden, d],
            vec![hidden],
            vec![d, hidden],
            vec![d],
        ];
        let p: Vec<Var> = shapes.iter().map(|s| var(&mut r, s)).collect();
        let params = kernels::BlockParams {
            norm1: (&p[0], &p[1]),
            qkv: (&p[2], &p[3]),
            proj: (&p[4], &p[5]),
            norm2: (&p[6], &p[7]),
            fc1: (&p[8], &p[9]),
            fc2: (&p[10], &p[11]),
        };
        let ours = kernels::transformer_block(&x, &params, (n, l, heads), 1e-5, keep).unwrap();
        let want = block_candle(&x, &p, n, l, heads);
        assert_close(&ours, &want, RTOL_BLOCK, &format!("{what} output"));
        let weights = random(&mut r, &[n * l, d]);
        let g_want = weighted_sum(&want, &weights).backward().unwrap();
        // The first backward pass uses the kept activations (when kept), the second recomputes them.
        for pass in ["first", "second"] {
            let g_ours = weighted_sum(&ours, &weights).backward().unwrap();
            let names = ["norm1.w", "norm1.b", "qkv.w", "qkv.b", "proj.w", "proj.b"]
                .into_iter()
                .chain(["norm2.w", "norm2.b", "fc1.w", "fc1.b", "fc2.w", "fc2.b"]);
            for (name, v) in std::iter::once(("dx", &x)).chain(names.zip(&p)) {
                let (g, w) = (g_ours.get(v).unwrap(), g_want.get(v).unwrap());
                assert_close(g, w, RTOL_BLOCK, &format!("{what} {name} ({pass} pass)"));
            }
        }
    }
}
