//! The convolution kernel against candle's reference ops: forward values and the gradients of
//! the input, the kernel and the bias, for every stride and padding the models use and a few more.
//! These check the im2col + gemm path (Winograd off, process-wide for this test binary); the
//! Winograd path, on by default, is checked against the same references in kernels_winograd.rs.

mod kernels_common;

use candle_core::{Tensor, Var};
use candle_nn::{BatchNorm, VarBuilder, VarMap};
use crt_trainer::kernels;
use kernels_common::{assert_close, random, rng, var, weighted_sum};

// Relative per-tensor tolerances (max |ours - candle| <= rtol * max |candle|), each about three
// times the worst ratio measured (x86-64, this crate's kernels vs candle 0.11 ops).
/// Convolution forward and input / kernel / bias gradients, every case: worst 9.9e-7.
const RTOL_CONV: f32 = 3e-6;
/// Fused convolution + ReLU + max-pooling, forward and gradients: worst 9.1e-7.
const RTOL_POOL: f32 = 3e-6;
/// Folded eval BatchNorm, the layer helpers, an untracked input's kernel gradient: worst 3.0e-7.
const RTOL_SMALL: f32 = 1e-6;

/// (input [N, C, H, W], kernel [O, C, K, K], stride, padding)
pub const CASES: [([usize; 4], [usize; 4], usize, usize); 13] = [
    ([3, 1, 28, 28], [20, 1, 5, 5], 1, 0),   // LeNet conv1
    ([2, 16, 8, 8], [16, 16, 3, 3], 1, 1),   // ResNet block conv (input gradient as a conv)
    ([2, 32, 16, 16], [32, 32, 3, 3], 1, 1), // ResNet stage-2 block conv (Winograd when on)
    ([2, 32, 7, 5], [40, 32, 3, 3], 1, 1),   // Winograd's partial tiles at odd edges (when on)
    ([2, 3, 7, 9], [4, 3, 5, 5], 1, 2),      // 5x5 'same', non-square
    ([3, 20, 12, 12], [50, 20, 5, 5], 1, 0), // LeNet conv2
    ([2, 3, 32, 32], [16, 3, 3, 3], 1, 1),   // ResNet stem
    ([2, 16, 16, 16], [32, 16, 3, 3], 2, 1), // ResNet stage change
    ([2, 16, 16, 16], [32, 16, 1, 1], 2, 0), // ResNet downsample
    ([2, 8, 9, 7], [6, 8, 1, 1], 1, 0),      // pointwise, odd sizes
    ([2, 4, 9, 7], [5, 4, 3, 3], 2, 0),      // stride 2 without padding, odd sizes
    ([2, 4, 40, 40], [6, 4, 3, 3], 2, 1),    // stride 2, several blocks of output rows (6, 6, 6, 2)
    // Padding wider than the stride (square: candle's reference backward mishandles H != W here).
    ([1, 2, 7, 7], [3, 2, 3, 3], 3, 2),
];

fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: usize, pad: usize, relu: bool) -> Tensor {
    let y = x.conv2d(w, pad, stride, 1, 1).unwrap();
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap(),
        None => y,
    };
    if relu {
        y.relu().unwrap()
    } else {
        y
    }
}

#[test]
fn forward_and_all_gradients_match_candle() {
    kernels::set_winograd(false);
    let mut r = rng(1);
    for (xd, wd, stride, pad) in CASES {
        for (with_bias, relu) in [(false, false), (true, true), (true, false), (false, true)] {
            let what = format!("{xd:?} * {wd:?} stride {stride} pad {pad} bias {with_bias} relu {relu}");
            let (x, w) = (var(&mut r, &xd), var(&mut r, &wd));
            let b = with_bias.then(|| var(&mut r, &[wd[0]]));
            let bt = b.as_ref().map(|b| b.as_tensor());
            let ours = kernels::conv2d(x.as_tensor(), w.as_tensor(), bt, stride, pad, relu).unwrap();
            let want = reference(x.as_tensor(), w.as_tensor(), bt, stride, pad, relu);
            assert_close(&ours, &want, RTOL_CONV, &format!("forward {what}"));

            let weights = random(&mut r, want.dims());
            let got = weighted_sum(&ours, &weights).backward().unwrap();
            let exp = weighted_sum(&want, &weights).backward().unwrap();
            let grad = |g: &candle_core::backprop::GradStore, v: &Var| g.get(v.as_tensor()).unwrap().clone();
            assert_close(&grad(&got, &x), &grad(&exp, &x), RTOL_CONV, &format!("input gradient {what}"));
            assert_close(&grad(&got, &w), &grad(&exp, &w), RTOL_CONV, &format!("kernel gradient {what}"));
            if let Some(b) = &b {
                assert_close(&grad(&got, b), &grad(&exp, b), RTOL_CONV, &format!("bias gradient {what}"));
            }
        }
    }
}

/// Images are not variables: their gradient is neither needed nor produced.
#[test]
fn untracked_inputs_get_no_gradient() {
    let mut r = rng(2);
    let x = random(&mut r, &[2, 3, 8, 8]);
    let w = var(&mut r, &[4, 3, 3, 3]);
    let y = kernels::conv2d(&x, w.as_tensor(), None, 1, 1, true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none());
    let want = reference(&x, w.as_tensor(), None, 1, 1, true).sum_all().unwrap().backward().unwrap();
    assert_close(grads.get(w.as_tensor()).unwrap(), want.get(w.as_tensor()).unwrap(), RTOL_SMALL, "kernel gradient");
}

#[test]
fn the_layer_helpers_follow_the_layer_configuration() {
    let mut r = rng(3);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &candle_core::Device::Cpu);
    let cfg = candle_nn::Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
    let conv = candle_nn::conv2d(4, 6, 3, cfg, vb.pp("c")).unwrap();
    let x = random(&mut r, &[2, 4, 10, 10]);
    let ours = kernels::conv_layer(&x, &conv, true).unwrap();
    let want = reference(&x, conv.weight(), conv.bias(), 2, 1, true);
    assert_close(&ours, &want, RTOL_SMALL, "conv_layer");
}

/// Eval mode folds the normalization into the convolution; it must equal conv then BatchNorm.
#[test]
fn conv_with_folded_eval_batch_norm_matches_conv_then_batch_norm() {
    let mut r = rng(4);
    let (w, gamma, beta) = (random(&mut r, &[6, 4, 3, 3]), random(&mut r, &[6]), random(&mut r, &[6]));
    let mean = random(&mut r, &[6]);
    let var = (random(&mut r, &[6]).abs().unwrap() + 0.5).unwrap();
    let bn = BatchNorm::new(6, mean, var, gamma, beta, 1e-5).unwrap();
    let conv = candle_nn::Conv2d::new(w.clone(), None, candle_nn::Conv2dConfig { padding: 1, ..Default::default() });
    let x = Var::from_tensor(&random(&mut r, &[2, 4, 8, 8])).unwrap();
    for relu in [false, true] {
        let ours = kernels::conv_bn(x.as_tensor(), &conv, &bn, false, relu).unwrap();
        let want = reference(x.as_tensor(), &w, None, 1, 1, false).apply_t(&bn, false).unwrap();
        let want = if relu { want.relu().unwrap() } else { want };
        assert_close(&ours, &want, RTOL_SMALL, &format!("folded forward relu {relu}"));
        // Input gradients through the folded convolution (attacks take them in eval mode).
        let weights = random(&mut r, want.dims());
        let got = weighted_sum(&ours, &weights).backward().unwrap();
        let exp = weighted_sum(&want, &weights).backward().unwrap();
        assert_close(
            got.get(x.as_tensor()).unwrap(),
            exp.get(x.as_tensor()).unwrap(),
            RTOL_SMALL,
            "folded input gradient",
        );
    }
}

/// At a pre-activation of exactly 0 the fused ReLU passes no gradient, as PyTorch's does
/// (candle's `relu` backward passes it). This also shows the fused kernel, not the fallback, ran.
#[test]
fn fused_relu_at_zero_passes_no_gradient() {
    let x = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let w = Var::from_tensor(&Tensor::zeros((2, 1, 3, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap())
        .unwrap();
    let y = kernels::conv2d(&x, w.as_tensor(), None, 1, 1, true).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    let dw = grads.get(w.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(dw, 0.0);
    let candle = reference(&x, w.as_tensor(), None, 1, 1, true).sum_all().unwrap().backward().unwrap();
    assert!(candle.get(w.as_tensor()).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
}

fn pool_reference(y: &Tensor, k: usize) -> Tensor {
    let (n, c, h, w) = y.dims4().unwrap();
    let y = y.narrow(2, 0, h / k * k).unwrap().narrow(3, 0, w / k * k).unwrap();
    y.reshape((n, c, h / k, k, w / k, k)).unwrap().max(5).unwrap().max(3).unwrap()
}

/// Convolution + bias + ReLU + max-pooling fused, against the four steps one after another.
#[test]
fn fused_pooling_matches_conv_relu_then_pool() {
    let mut r = rng(11);
    let cases =
        [([3, 1, 28, 28], [20, 1, 5, 5], 2), ([3, 20, 12, 12], [50, 20, 5, 5], 2), ([2, 3, 11, 10], [4, 3, 3, 3], 3)];
    for (xd, wd, k) in cases {
        for input_tracked in [false, true] {
            let what = format!("{xd:?} * {wd:?} pool {k} input tracked {input_tracked}");
            let (x, w, b) = (var(&mut r, &xd), var(&mut r, &wd), var(&mut r, &[wd[0]]));
            let xt = if input_tracked { x.as_tensor().clone() } else { x.as_tensor().detach() };
            let ours = kernels::conv2d_pool(&xt, w.as_tensor(), Some(b.as_tensor()), 1, 0, true, k).unwrap();
            let want = pool_reference(&reference(&xt, w.as_tensor(), Some(b.as_tensor()), 1, 0, true), k);
            assert_close(&ours, &want, RTOL_POOL, &format!("forward {what}"));
            let weights = random(&mut r, want.dims());
            let got = weighted_sum(&ours, &weights).backward().unwrap();
            let exp = weighted_sum(&want, &weights).backward().unwrap();
            for (name, v) in [("kernel", &w), ("bias", &b)] {
                let (g, e) = (got.get(v.as_tensor()).unwrap(), exp.get(v.as_tensor()).unwrap());
                assert_close(g, e, RTOL_POOL, &format!("{name} gradient {what}"));
            }
            if input_tracked {
                assert_close(
                    got.get(&xt).unwrap(),
                    exp.get(&xt).unwrap(),
                    RTOL_POOL,
                    &format!("input gradient {what}"),
                );
            } else {
                assert!(got.get(&xt).is_none(), "{what}");
            }
        }
    }
}
