//! Training-mode batch normalization (+ ReLU) and the residual add + ReLU against candle_nn's
//! BatchNorm and candle's ops: outputs, gradients and the running-statistics update.

mod kernels_common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder, VarMap};
use crt_trainer::kernels;
use kernels_common::{assert_close, random, rng, var, weighted_sum};

// Relative per-tensor tolerances (max |ours - candle| <= rtol * max |candle|), each about three
// times the worst ratio measured (x86-64, this crate's kernels vs candle_nn's BatchNorm on candle
// 0.11 ops); 0 where the two compute the same operations in the same order.
/// Training BatchNorm: output, running statistics, dweight, dbias, and dx wherever a channel has
/// more than two values: worst 1.4e-7.
const RTOL_BN: f32 = 5e-7;
/// dx with two values per channel ([2, C, 1, 1]): the exact input gradient then vanishes up to
/// the eps in the variance (the reference's max |dx| is 2e-5, itself rounding-sized cancellation),
/// so the ratio is large although the absolute error is 3.4e-8: worst 1.8e-3.
const RTOL_BN_DX_TWO_VALUES: f32 = 5e-3;
/// Eval-mode BatchNorm (a scale and a shift): worst 0 (exact); a few ulps allowed.
const RTOL_EVAL: f32 = 1e-7;
/// Fused convolution + BatchNorm (+ add + ReLU) in training mode, every output, statistic and
/// gradient: worst 5.1e-7.
const RTOL_FUSED: f32 = 1.5e-6;

/// A BatchNorm whose parameters and running statistics are variables of a VarMap (as in the models),
/// with a given weight, bias and running statistics.
fn batch_norm(c: usize, weight: &Tensor, bias: &Tensor, mean: &Tensor, var: &Tensor) -> (VarMap, BatchNorm) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = candle_nn::batch_norm(c, BatchNormConfig::default(), vb).unwrap();
    for (name, value) in [("weight", weight), ("bias", bias), ("running_mean", mean), ("running_var", var)] {
        varmap.data().lock().unwrap()[name].set(value).unwrap();
    }
    (varmap, bn)
}

fn stat(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name].as_tensor().copy().unwrap()
}

fn param(varmap: &VarMap, name: &str) -> Var {
    varmap.data().lock().unwrap()[name].clone()
}

#[test]
fn training_batch_norm_matches_candle_nn() {
    let mut r = rng(5);
    for (dims, relu, rtol_dx) in
        [([4, 3, 5, 6], false, RTOL_BN), ([8, 16, 4, 4], true, RTOL_BN), ([2, 5, 1, 1], true, RTOL_BN_DX_TWO_VALUES)]
    {
        let c = dims[1];
        let (w, b, m) = (random(&mut r, &[c]), random(&mut r, &[c]), random(&mut r, &[c]));
        let v = (random(&mut r, &[c]).abs().unwrap() + 0.5).unwrap();
        let (ours_map, ours_bn) = batch_norm(c, &w, &b, &m, &v);
        let (ref_map, ref_bn) = batch_norm(c, &w, &b, &m, &v);
        // Not centred, so that the mean matters.
        let x = Var::from_tensor(&random(&mut r, &dims).affine(3.0, 0.7).unwrap()).unwrap();

        let ours = kernels::batch_norm(x.as_tensor(), &ours_bn, true, relu).unwrap();
        let want = x.as_tensor().apply_t(&ref_bn, true).unwrap();
        let want = if relu { want.relu().unwrap() } else { want };
        let what = format!("{dims:?} relu {relu}");
        assert_close(&ours, &want, RTOL_BN, &format!("forward {what}"));
        for name in ["running_mean", "running_var"] {
            assert_close(&stat(&ours_map, name), &stat(&ref_map, name), RTOL_BN, &format!("{name} {what}"));
        }
        assert!(
            stat(&ours_map, "running_mean").to_vec1::<f32>().unwrap() != m.to_vec1::<f32>().unwrap(),
            "{what}: not updated"
        );

        let weights = random(&mut r, &dims);
        let got = weighted_sum(&ours, &weights).backward().unwrap();
        let exp = weighted_sum(&want, &weights).backward().unwrap();
        assert_close(got.get(x.as_tensor()).unwrap(), exp.get(x.as_tensor()).unwrap(), rtol_dx, &format!("dx {what}"));
        for name in ["weight", "bias"] {
            let (pv, rv) = (param(&ours_map, name), param(&ref_map, name));
            assert_close(
                got.get(pv.as_tensor()).unwrap(),
                exp.get(rv.as_tensor()).unwrap(),
                RTOL_BN,
                &format!("d{name} {what}"),
            );
        }
        // The running statistics are not trained.
        assert!(got.get(param(&ours_map, "running_mean").as_tensor()).is_none());
    }
}

#[test]
fn eval_batch_norm_uses_the_running_statistics() {
    let mut r = rng(6);
    let c = 4;
    let (w, b, m) = (random(&mut r, &[c]), random(&mut r, &[c]), random(&mut r, &[c]));
    let v = (random(&mut r, &[c]).abs().unwrap() + 0.5).unwrap();
    let (map, bn) = batch_norm(c, &w, &b, &m, &v);
    let x = random(&mut r, &[3, c, 4, 4]);
    let ours = kernels::batch_norm(&x, &bn, false, true).unwrap();
    assert_close(&ours, &x.apply_t(&bn, false).unwrap().relu().unwrap(), RTOL_EVAL, "eval");
    assert_close(&stat(&map, "running_mean"), &m, 0.0, "running mean untouched in eval");
}

#[test]
fn add_relu_matches_add_then_relu() {
    let mut r = rng(7);
    let (a, b) = (var(&mut r, &[3, 4, 5, 5]), var(&mut r, &[3, 4, 5, 5]));
    let ours = kernels::add_relu(a.as_tensor(), b.as_tensor()).unwrap();
    let want = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
    assert_close(&ours, &want, 0.0, "forward");
    let weights = random(&mut r, &[3, 4, 5, 5]);
    let got = weighted_sum(&ours, &weights).backward().unwrap();
    let exp = weighted_sum(&want, &weights).backward().unwrap();
    for v in [&a, &b] {
        assert_close(got.get(v.as_tensor()).unwrap(), exp.get(v.as_tensor()).unwrap(), 0.0, "gradient");
    }
    let err = kernels::add_relu(a.as_tensor(), &random(&mut r, &[3, 4, 5, 4])).unwrap_err().to_string();
    assert!(err.contains("shapes differ"), "{err}");
}

/// The fused convolution + training BatchNorm (+ ReLU) against candle's conv2d and candle_nn's
/// BatchNorm: output, running statistics, and the gradients of x, the kernel, gamma and beta.
#[test]
fn fused_conv_batch_norm_matches_conv_then_candle_nn() {
    let mut r = rng(8);
    for (x_dims, cout, k, stride, pad, relu) in
        [([4, 3, 9, 9], 5, 3, 1, 1, true), ([3, 4, 8, 8], 6, 3, 2, 1, false), ([2, 4, 6, 6], 8, 1, 2, 0, true)]
    {
        let cin = x_dims[1];
        let (w, b, m) = (random(&mut r, &[cout]), random(&mut r, &[cout]), random(&mut r, &[cout]));
        let v = (random(&mut r, &[cout]).abs().unwrap() + 0.5).unwrap();
        let (ours_map, ours_bn) = batch_norm(cout, &w, &b, &m, &v);
        let (ref_map, ref_bn) = batch_norm(cout, &w, &b, &m, &v);
        let kernel = var(&mut r, &[cout, cin, k, k]);
        let conv = candle_nn::Conv2d::new(
            kernel.as_tensor().clone(),
            None,
            candle_nn::Conv2dConfig { padding: pad, stride, ..Default::default() },
        );
        let x = Var::from_tensor(&random(&mut r, &x_dims).affine(2.0, 0.3).unwrap()).unwrap();

        let ours = kernels::conv_bn(x.as_tensor(), &conv, &ours_bn, true, relu).unwrap();
        let want = x.as_tensor().conv2d(kernel.as_tensor(), pad, stride, 1, 1).unwrap().apply_t(&ref_bn, true).unwrap();
        let want = if relu { want.relu().unwrap() } else { want };
        let what = format!("{x_dims:?} -> {cout} k{k} s{stride} p{pad} relu {relu}");
        let inputs = [(x.as_tensor(), "dx"), (kernel.as_tensor(), "dkernel")];
        assert_same_training(&mut r, (&ours, &ours_map), (&want, &ref_map), &inputs, &what);
    }
}

/// The end of a residual block as one op against candle's conv2d, candle_nn's BatchNorm, an add
/// and a ReLU: output, running statistics, and the gradients of x, the kernel, the shortcut,
/// gamma and beta.
#[test]
fn fused_residual_end_matches_conv_batch_norm_add_relu() {
    let mut r = rng(9);
    for (x_dims, cout, stride) in [([4, 3, 9, 9], 5, 1), ([3, 4, 8, 8], 6, 2), ([2, 8, 4, 4], 8, 1)] {
        let cin = x_dims[1];
        let (w, b, m) = (random(&mut r, &[cout]), random(&mut r, &[cout]), random(&mut r, &[cout]));
        let v = (random(&mut r, &[cout]).abs().unwrap() + 0.5).unwrap();
        let (ours_map, ours_bn) = batch_norm(cout, &w, &b, &m, &v);
        let (ref_map, ref_bn) = batch_norm(cout, &w, &b, &m, &v);
        let kernel = var(&mut r, &[cout, cin, 3, 3]);
        let cfg = candle_nn::Conv2dConfig { padding: 1, stride, ..Default::default() };
        let conv = candle_nn::Conv2d::new(kernel.as_tensor().clone(), None, cfg);
        let x = Var::from_tensor(&random(&mut r, &x_dims).affine(2.0, 0.3).unwrap()).unwrap();
        let out_hw = (x_dims[2] - 1) / stride + 1;
        let shortcut = var(&mut r, &[x_dims[0], cout, out_hw, out_hw]);

        let ours = kernels::conv_bn_add_relu(x.as_tensor(), &conv, &ours_bn, shortcut.as_tensor(), true).unwrap();
        let normed = x.as_tensor().conv2d(kernel.as_tensor(), 1, stride, 1, 1).unwrap().apply_t(&ref_bn, true).unwrap();
        let want = (normed + shortcut.as_tensor()).unwrap().relu().unwrap();
        let what = format!("{x_dims:?} -> {cout} s{stride}");
        let inputs = [(x.as_tensor(), "dx"), (kernel.as_tensor(), "dkernel"), (shortcut.as_tensor(), "dshortcut")];
        assert_same_training(&mut r, (&ours, &ours_map), (&want, &ref_map), &inputs, &what);
    }
}

/// A fused training op's output, running statistics, and the gradients of `inputs` and of the
/// BatchNorm's weight and bias against the reference's (each output with its BatchNorm's VarMap).
fn assert_same_training(
    r: &mut rand::rngs::StdRng,
    (ours, ours_map): (&Tensor, &VarMap),
    (want, ref_map): (&Tensor, &VarMap),
    inputs: &[(&Tensor, &str)],
    what: &str,
) {
    assert_close(ours, want, RTOL_FUSED, &format!("forward {what}"));
    for name in ["running_mean", "running_var"] {
        assert_close(&stat(ours_map, name), &stat(ref_map, name), RTOL_FUSED, &format!("{name} {what}"));
    }
    let weights = random(r, want.dims());
    let got = weighted_sum(ours, &weights).backward().unwrap();
    let exp = weighted_sum(want, &weights).backward().unwrap();
    for (t, name) in inputs {
        assert_close(got.get(t).unwrap(), exp.get(t).unwrap(), RTOL_FUSED, &format!("{name} {what}"));
    }
    for name in ["weight", "bias"] {
        let (pv, rv) = (param(ours_map, name), param(ref_map, name));
        let (g, e) = (got.get(pv.as_tensor()).unwrap(), exp.get(rv.as_tensor()).unwrap());
        assert_close(g, e, RTOL_FUSED, &format!("d{name} {what}"));
    }
}

#[test]
fn fused_residual_end_refuses_a_shortcut_of_another_shape() {
    let mut r = rng(10);
    let zeros = || Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let v = (zeros() + 1.0).unwrap();
    let (_map, bn) = batch_norm(4, &v, &zeros(), &zeros(), &v);
    let kernel = var(&mut r, &[4, 3, 3, 3]);
    let conv = candle_nn::Conv2d::new(
        kernel.as_tensor().clone(),
        None,
        candle_nn::Conv2dConfig { padding: 1, ..Default::default() },
    );
    let x = random(&mut r, &[2, 3, 6, 6]);
    let err = kernels::conv_bn_add_relu(&x, &conv, &bn, &random(&mut r, &[2, 4, 5, 6]), true).unwrap_err().to_string();
    assert!(err.contains("shortcut [2, 4, 5, 6] for an output of [2, 4, 6, 6]"), "{err}");
}
