//! The CIFAR ResNet-20 (BatchNorm, input normalization layer) against the independent PyTorch
//! fixtures `tests/data/fixtures/resnet20_*.safetensors` (documented in the reference README,
//! section "ResNet-20 with BatchNorm"): the forward pass in eval and train mode with the running
//! statistics after it, and the Gaussian, SmoothAdv, MACER and CRT losses with every gradient and
//! the running statistics after the step's forward, within the README's tolerances:
//!
//! * losses and scalars: |L - L_ref| <= 1e-5 |L_ref|;
//! * logits, running statistics, float debug tensors: max |t - t_ref| <= 1e-5 max(1, max |t_ref|);
//! * each gradient tensor: max |g - g_ref| <= 2e-2 max |g_ref|, and all 65 together:
//!   ||g - g_ref||_2 <= 1e-3 ||g_ref||_2;
//! * the attack's iterates within 2e-4; masks exact.
//!
//! Conventions pinned here: the noise is added in [0, 1] pixel space before the normalization
//! (mean 0.4914/0.4822/0.4465, std 0.2023/0.1994/0.2010, read from each file's metadata), attacks
//! run in eval mode, losses in train mode on the B*m copies as ONE batch (row b*m + i), BatchNorm
//! normalizes with the biased batch variance and updates running_var with the unbiased one.

mod fixtures_common;

use candle_core::{DType, Device, Tensor};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::methods::{crt_loss, gaussian_loss, macer_loss, smoothadv_attack, smoothadv_loss, MacerParams};
use crt_trainer::models::{Model, Normalization};
use fixtures_common::{fixture_dir, max_abs_diff, to_f64, Fixture};

/// Parameter tensors of a ResNet-20 (21 convolutions, 21 x 2 BatchNorm, fc weight and bias).
const PARAMETERS: usize = 65;
/// running_mean and running_var of the 21 BatchNorm layers.
const RUNNING: usize = 42;

/// A ResNet-20 method file (`resnet20_<method>.safetensors`).
fn load(method: &str) -> Fixture {
    let fx = Fixture::read(&format!("resnet20_{method}"), method);
    assert_eq!(fx.info["model"], "resnet20");
    fx
}

/// The normalization recorded in the file's metadata.
fn normalization(fx: &Fixture) -> Normalization {
    let floats = |key: &str| -> Vec<f32> {
        let values = fx.info["normalization"][key].as_array().unwrap_or_else(|| panic!("normalization.{key}"));
        values.iter().map(|v| v.as_f64().unwrap() as f32).collect()
    };
    Normalization::MeanStd { mean: floats("mean"), std: floats("std") }
}

/// The tensors of the teacher's or the student's weights file.
fn weights(which: &str) -> std::collections::HashMap<String, Tensor> {
    let path = fixture_dir().join(format!("resnet20_{which}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).expect("fixture weights")
}

/// The teacher or student weights (with BatchNorm buffers), behind the reference normalization.
fn resnet20(which: &str, normalization: &Normalization) -> Model {
    let path = fixture_dir().join(format!("resnet20_{which}.safetensors"));
    let mut model =
        Model::load_weights(Arch::Resnet20, Dataset::Cifar10, &path, &Device::Cpu).expect("fixture weights");
    model.normalization = normalization.clone();
    model
}

fn trained_model(fx: &Fixture) -> Model {
    resnet20(fx.info["params_of"].as_str().expect("params_of"), &normalization(fx))
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// |L - L_ref| <= 1e-5 |L_ref|.
fn assert_scalar(what: &str, got: f64, want: f64) {
    let rel = (got - want).abs() / want.abs();
    println!("{what}: {got} vs {want} (relative error {rel:e})");
    assert!(rel <= 1e-5, "{what}: {got} vs reference {want} (relative error {rel:e})");
}

fn assert_loss(what: &str, got: &Tensor, want: f64) {
    assert_scalar(what, f64::from(got.to_scalar::<f32>().unwrap()), want);
}

/// max |t - t_ref| <= 1e-5 max(1, max |t_ref|).
fn assert_tensor(what: &str, got: &Tensor, want: &Tensor) {
    let diff = max_abs_diff(got, want);
    let bound = 1e-5 * max_abs(&to_f64(want)).max(1.0);
    assert!(diff <= bound, "{what}: max difference {diff:e} (bound {bound:e})");
}

/// The model's 42 running statistics against `running_after.*`.
fn assert_running_stats(fx: &Fixture, model: &Model) {
    let mut checked = 0;
    for (name, var) in model.named_vars() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            assert_tensor(
                &format!("{} running_after.{name}", fx.name),
                var.as_tensor(),
                fx.t(&format!("running_after.{name}")),
            );
            checked += 1;
        }
    }
    assert_eq!(checked, RUNNING, "{}: running statistics", fx.name);
}

/// Per tensor max |g - g_ref| <= 2e-2 max |g_ref|; all together ||g - g_ref|| <= 1e-3 ||g_ref||.
fn assert_grads(fx: &Fixture, model: &Model, loss: &Tensor) {
    let grads = loss.backward().unwrap();
    let vars = model.trainable_vars();
    assert_eq!(vars.len(), PARAMETERS);
    let (mut err2, mut ref2, mut worst) = (0.0f64, 0.0f64, (0.0f64, String::new()));
    for (name, var) in vars {
        let want = fx.t(&format!("grad.{name}"));
        let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", fx.name));
        assert_eq!(got.dims(), want.dims(), "{}: grad.{name} shape", fx.name);
        let (g, w) = (to_f64(got), to_f64(want));
        let scale = max_abs(&w);
        assert!(scale > 0.0, "{}: reference gradient of {name} is zero", fx.name);
        let diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff <= 2e-2 * scale, "{}: grad.{name} off by {diff:e} (scale {scale:e})", fx.name);
        if diff / scale > worst.0 {
            worst = (diff / scale, name.clone());
        }
        err2 += g.iter().zip(&w).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        ref2 += w.iter().map(|b| b * b).sum::<f64>();
    }
    let global = (err2 / ref2).sqrt();
    println!("{}: worst gradient {:e} of its scale ({}), global L2 {global:e}", fx.name, worst.0, worst.1);
    assert!(global <= 1e-3, "{}: all gradients together off by {global:e} of their norm", fx.name);
}

#[test]
fn forward_eval_train_and_running_statistics() {
    let fx = load("forward");
    let norm = normalization(&fx);
    // The stored constants are the metadata's, and the reference ones.
    assert_tensor("norm.mean", &Tensor::new(&[0.4914f32, 0.4822, 0.4465], &Device::Cpu).unwrap(), fx.t("norm.mean"));
    assert_tensor("norm.std", &Tensor::new(&[0.2023f32, 0.1994, 0.2010], &Device::Cpu).unwrap(), fx.t("norm.std"));
    let model = resnet20("teacher", &norm);
    assert_tensor("dbg.x_norm", &norm.apply(fx.t("x")).unwrap(), fx.t("dbg.x_norm"));

    let eval = model.forward_t(fx.t("x"), false).unwrap();
    assert_tensor("logits_eval", &eval, fx.t("logits_eval"));
    // Eval mode leaves the buffers as loaded.
    let teacher = weights("teacher");
    for (name, var) in model.named_vars() {
        if name.ends_with("running_var") {
            assert_eq!(max_abs_diff(var.as_tensor(), &teacher[&name]), 0.0, "{name} changed in eval mode");
        }
    }

    let train = model.forward_t(fx.t("x"), true).unwrap();
    assert_tensor("logits_train", &train, fx.t("logits_train"));
    assert_running_stats(&fx, &model);
    println!(
        "forward: eval {:e}, train {:e}",
        max_abs_diff(&eval, fx.t("logits_eval")),
        max_abs_diff(&train, fx.t("logits_train"))
    );
}

#[test]
fn gaussian_matches_reference() {
    let fx = load("gaussian");
    let model = trained_model(&fx);
    let loss = gaussian_loss(&model, fx.t("x"), fx.t("y"), fx.t("noise")).unwrap();
    assert_loss("gaussian", &loss, fx.scalar("loss"));
    assert_running_stats(&fx, &model);
    assert_grads(&fx, &model, &loss);
}

#[test]
fn gaussian_logits_in_train_mode() {
    let fx = load("gaussian");
    let model = trained_model(&fx);
    let noisy = (fx.t("x") + fx.t("noise")).unwrap();
    assert_tensor("gaussian dbg.logits", &model.forward_t(&noisy, true).unwrap(), fx.t("dbg.logits"));
}

fn smoothadv_attack_of(fx: &Fixture, model: &Model) -> crt_trainer::methods::Attack {
    assert_eq!(fx.t("noise").dim(1).unwrap(), fx.hp("m") as usize);
    smoothadv_attack(model, fx.t("x"), fx.t("y"), fx.t("noise"), fx.hp("eps"), fx.hp("steps") as usize).unwrap()
}

#[test]
fn smoothadv_loss_at_stored_adversarial_point() {
    let fx = load("smoothadv");
    let model = trained_model(&fx);
    let loss = smoothadv_loss(&model, fx.t("x_adv"), fx.t("y"), fx.t("noise")).unwrap();
    assert_loss("smoothadv", &loss, fx.scalar("loss"));
    assert_running_stats(&fx, &model);
    assert_grads(&fx, &model, &loss);
}

#[test]
fn smoothadv_attack_in_eval_mode_matches_reference_iterates() {
    let fx = load("smoothadv");
    let model = trained_model(&fx);
    let attack = smoothadv_attack_of(&fx, &model);
    let step1 = max_abs_diff(&attack.iterates[0], fx.t("dbg.x_adv_step1"));
    let step2 = max_abs_diff(&attack.x_adv, fx.t("x_adv"));
    println!("smoothadv attack: step 1 {step1:e}, step 2 {step2:e}");
    assert!(step1 <= 2e-4 && step2 <= 2e-4, "attack iterates off by {step1:e}, {step2:e}");
    let want = to_f64(fx.t("dbg.attack_objective"));
    for (got, want) in attack.objectives.iter().zip(&want) {
        assert_scalar("smoothadv attack objective", f64::from(*got), *want);
    }
    // The attack runs in eval mode: the buffers are untouched, so they still equal the file's.
    let teacher = weights("teacher");
    for (name, var) in model.named_vars() {
        if name.ends_with("running_mean") {
            assert_eq!(max_abs_diff(var.as_tensor(), &teacher[&name]), 0.0, "{name} changed by the attack");
        }
    }
}

#[test]
fn smoothadv_end_to_end() {
    let fx = load("smoothadv");
    let model = trained_model(&fx);
    let attack = smoothadv_attack_of(&fx, &model);
    let loss = smoothadv_loss(&model, &attack.x_adv, fx.t("y"), fx.t("noise")).unwrap();
    assert_loss("smoothadv end to end", &loss, fx.scalar("loss"));
    assert_running_stats(&fx, &model);
    assert_grads(&fx, &model, &loss);
}

fn macer_params(fx: &Fixture, gamma: f64) -> MacerParams {
    MacerParams { sigma: fx.hp("sigma"), lambda: fx.hp("lbd"), beta: fx.hp("beta"), gamma }
}

#[test]
fn macer_matches_reference() {
    let fx = load("macer");
    let model = trained_model(&fx);
    assert_eq!(fx.t("noise").dim(1).unwrap(), fx.hp("k") as usize);
    let out = macer_loss(&model, fx.t("x"), fx.t("y"), fx.t("noise"), &macer_params(&fx, fx.hp("gamma"))).unwrap();
    assert_eq!(out.correct, fx.mask("dbg.correct"));
    assert_eq!(out.kept, fx.mask("dbg.kept"));
    let xi = Tensor::new(out.xi.as_slice(), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    assert_tensor("macer xi", &xi, fx.t("dbg.xi"));
    assert_loss("macer", &out.loss, fx.scalar("loss"));
    assert_running_stats(&fx, &model);
    assert_grads(&fx, &model, &out.loss);
}

#[test]
fn macer_hinge_filter_with_smaller_gamma() {
    let fx = load("macer");
    let model = trained_model(&fx);
    let gamma2 = fx.scalar("aux.gamma2");
    let out = macer_loss(&model, fx.t("x"), fx.t("y"), fx.t("noise"), &macer_params(&fx, gamma2)).unwrap();
    let kept = fx.mask("aux.kept_gamma2");
    assert!(kept.iter().filter(|&&k| k).count() < fx.mask("dbg.kept").iter().filter(|&&k| k).count());
    assert_eq!(out.kept, kept);
    assert_loss("macer gamma2", &out.loss, fx.scalar("aux.loss_gamma2"));
}

#[test]
fn crt_matches_reference() {
    let fx = load("crt");
    let norm = normalization(&fx);
    let (student, teacher) = (trained_model(&fx), resnet20("teacher", &norm));
    assert_eq!(fx.info["params_of"], "student");
    let loss = crt_loss(&student, &teacher, fx.t("x"), fx.t("y"), fx.t("noise"), fx.hp("alpha")).unwrap();
    assert_loss("crt", &loss, fx.scalar("loss"));
    assert_running_stats(&fx, &student);
    assert_grads(&fx, &student, &loss);
    // The frozen teacher (eval mode) gets no gradient and keeps its buffers.
    let grads = loss.backward().unwrap();
    assert!(teacher.trainable_vars().iter().all(|(_, v)| grads.get(v.as_tensor()).is_none()));
    let file = weights("teacher");
    for (name, var) in teacher.named_vars() {
        assert_eq!(max_abs_diff(var.as_tensor(), &file[&name]), 0.0, "teacher {name} changed");
    }
    // Both networks see the same noisy input: the teacher's logits are the reference's.
    let noisy = (fx.t("x") + fx.t("noise")).unwrap();
    assert_tensor("crt teacher logits", &teacher.forward_t(&noisy, false).unwrap(), fx.t("dbg.logits_teacher"));
}
