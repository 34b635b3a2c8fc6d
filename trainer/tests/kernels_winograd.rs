//! Winograd's convolutions (F(2x2, 3x3) on planes under 16 pixels, F(4x4, 3x3) from 16 up; on by
//! default, `kernels::set_winograd`) against candle's ops and against the im2col path: outputs and
//! every gradient, for a convolution alone and for ResNet-20 (whose fused convolution + BatchNorm
//! ops share the per-sample routines). The switch is process-wide, so these run in a test binary
//! of their own and in one test function.

mod kernels_common;

use candle_core::{Device, Tensor};
use crt_trainer::config::{Arch, Dataset, Method};
use crt_trainer::kernels;
use crt_trainer::methods::training_loss;
use crt_trainer::models::Model;
use kernels_common::{assert_close, random, rng, var, weighted_sum};
use rand::Rng;

// Relative per-tensor tolerances, about three times the worst ratio measured (x86-64; printed with
// --nocapture).
/// A convolution through F(2x2, 3x3) against candle's ops, output and gradients: worst 8.2e-7.
const RTOL_CONV_F2: f32 = 2.5e-6;
/// Through F(4x4, 3x3), whose transforms' larger coefficients round more: worst 5.0e-6.
const RTOL_CONV_F4: f32 = 1.5e-5;
/// ResNet-20's logits with Winograd against im2col: worst 1.8e-6.
const RTOL_LOGITS: f32 = 6e-6;
/// ResNet-20's parameter gradients with Winograd against im2col: worst 1.3e-5 (layer3.1.conv2.weight).
const RTOL_RESNET_GRADS: f32 = 4e-5;

/// (input [N, C, H, W], kernel [O, C, 3, 3]): ResNet-20's three stages' convolutions, and partial
/// tiles at odd edges of both tile sizes; stride 1, padding 1.
const CASES: [([usize; 4], [usize; 4]); 5] = [
    ([2, 16, 32, 32], [16, 16, 3, 3]),
    ([2, 32, 16, 16], [32, 32, 3, 3]),
    ([2, 64, 8, 8], [64, 64, 3, 3]),
    ([2, 32, 7, 5], [40, 32, 3, 3]),
    ([2, 16, 17, 19], [24, 16, 3, 3]),
];

fn conv_matches_candle(what: &str) {
    let mut r = rng(11);
    for (xd, wd) in CASES {
        let what = format!("{what} {xd:?} * {wd:?}");
        let rtol = if xd[2].min(xd[3]) >= 16 { RTOL_CONV_F4 } else { RTOL_CONV_F2 };
        let (x, w, b) = (var(&mut r, &xd), var(&mut r, &wd), var(&mut r, &[wd[0]]));
        let ours = kernels::conv2d(&x, &w, Some(&b), 1, 1, true).unwrap();
        let want = x.conv2d(&w, 1, 1, 1, 1).unwrap().broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
        let want = want.relu().unwrap();
        assert_close(&ours, &want, rtol, &format!("forward {what}"));
        let weights = random(&mut r, want.dims());
        let got = weighted_sum(&ours, &weights).backward().unwrap();
        let exp = weighted_sum(&want, &weights).backward().unwrap();
        for (name, v) in [("input", &x), ("kernel", &w), ("bias", &b)] {
            assert_close(got.get(v).unwrap(), exp.get(v).unwrap(), rtol, &format!("{name} gradient {what}"));
        }
    }
}

/// ResNet-20's train-mode logits and the gradients of one Gaussian-training loss, by variable name.
fn resnet20() -> (Tensor, Vec<(String, Tensor)>) {
    let model = Model::new(Arch::Resnet20, Dataset::Cifar10, &Device::Cpu, 3).unwrap();
    let mut r = rng(9);
    let pixels: Vec<f32> = (0..4 * 3 * 32 * 32).map(|_| r.random::<f32>()).collect();
    let x = Tensor::from_vec(pixels, (4, 3, 32, 32), &Device::Cpu).unwrap();
    let y = Tensor::from_vec(vec![1u32, 7, 3, 0], 4, &Device::Cpu).unwrap();
    let logits = model.forward_t(&x, true).unwrap();
    let loss = training_loss(&Method::Gaussian { sigma: 0.25 }, &model, &x, &y, 0, &mut rng(10)).unwrap();
    let grads = loss.backward().unwrap();
    let named = model.trainable_vars().into_iter().map(|(n, v)| (n, grads.get(&v).unwrap().clone())).collect();
    (logits, named)
}

#[test]
fn winograd_convolutions_match_candle_and_im2col() {
    kernels::set_winograd(true);
    conv_matches_candle("winograd");
    let (w_logits, w_grads) = resnet20();
    kernels::set_winograd(false);
    let (i_logits, i_grads) = resnet20();
    assert_close(&w_logits, &i_logits, RTOL_LOGITS, "resnet20 logits, winograd vs im2col");
    // The two paths really differ (the switch took effect): not bit-identical.
    let (a, b) = (
        w_logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        i_logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert_ne!(a, b, "Winograd and im2col gave bit-identical logits: the switch did nothing");
    for ((name, a), (_, b)) in w_grads.iter().zip(&i_grads) {
        assert_close(a, b, RTOL_RESNET_GRADS, &format!("resnet20 gradient of {name}, winograd vs im2col"));
    }
}
