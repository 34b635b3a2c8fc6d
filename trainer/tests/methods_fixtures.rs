//! Every training loss against the independent PyTorch fixtures (tests/data/fixtures, documented in
//! the reference README): the loss, every parameter gradient, the attacks' iterates and the
//! discrete decisions, within the README's tolerances. Hyperparameters come from each file's
//! `fixture` metadata.

mod fixtures_common;

use candle_core::{Device, Tensor};
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::methods::{
    consistency_loss, crt_loss, gaussian_loss, kd_loss, macer_loss, smoothadv_attack, smoothadv_loss, smoothmix_attack,
    smoothmix_loss, Attack, MacerParams,
};
use crt_trainer::models::Model;
use fixtures_common::{fixture_dir, max_abs_diff, to_f64, Fixture};

const PARAMS: [&str; 8] =
    ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];

/// A LeNet method file (`<method>.safetensors`).
fn load(method: &str) -> Fixture {
    Fixture::read(method, method)
}

/// The model whose gradients the file stores (the teacher for methods 1-5, the student for 6-7).
fn trained_model(fx: &Fixture) -> Model {
    lenet(fx.info["params_of"].as_str().expect("params_of"))
}

fn lenet(which: &str) -> Model {
    let path = fixture_dir().join(format!("lenet_{which}.safetensors"));
    Model::load_weights(Arch::Lenet, Dataset::Mnist, &path, &Device::Cpu).expect("fixture weights")
}

/// README: |L - L_ref| <= 1e-4 |L_ref|.
fn assert_loss(what: &str, got: &Tensor, want: f64) {
    let got = f64::from(got.to_scalar::<f32>().unwrap());
    assert!((got - want).abs() <= 1e-4 * want.abs(), "{what}: loss {got} vs reference {want}");
}

/// README: per gradient tensor, max |g - g_ref| <= 1e-3 max |g_ref|; every parameter must get one.
fn assert_grads(fx: &Fixture, model: &Model, loss: &Tensor) {
    let grads = loss.backward().unwrap();
    let vars = model.trainable_vars();
    assert_eq!(vars.len(), PARAMS.len());
    for (name, var) in vars {
        let want = fx.t(&format!("grad.{name}"));
        let got = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", fx.name));
        let scale = to_f64(want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(got, want);
        assert!(scale > 0.0, "{}: reference gradient of {name} is zero", fx.name);
        assert!(diff <= 1e-3 * scale, "{}: grad.{name} off by {diff:e} (scale {scale:e})", fx.name);
    }
}

/// README: attack iterates within 1e-5 absolute.
fn assert_images(what: &str, got: &Tensor, want: &Tensor) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= 1e-5, "{what}: max difference {diff:e}");
}

/// README: debug floats within about 1e-5 of the tensor's max abs.
fn assert_close_rel(what: &str, got: &[f64], want: &Tensor) {
    let want = to_f64(want);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(diff <= 1e-5 * scale, "{what}: {got:?} vs {want:?}");
}

fn assert_attack(fx: &Fixture, attack: &Attack) {
    assert_images(&format!("{} x_adv", fx.name), &attack.x_adv, fx.t("x_adv"));
    assert_images(&format!("{} x_adv_step1", fx.name), &attack.iterates[0], fx.t("dbg.x_adv_step1"));
    let objectives: Vec<f64> = attack.objectives.iter().map(|&v| f64::from(v)).collect();
    assert_close_rel(&format!("{} attack objective", fx.name), &objectives, fx.t("dbg.attack_objective"));
}

#[test]
fn gaussian_matches_reference() {
    let fx = load("gaussian");
    let model = trained_model(&fx);
    let noisy = (fx.t("x") + fx.t("noise")).unwrap();
    let logits = model.forward_t(&noisy, true).unwrap();
    assert_close_rel("gaussian logits", &to_f64(&logits), fx.t("dbg.logits"));
    let loss = gaussian_loss(&model, fx.t("x"), fx.t("y"), fx.t("noise")).unwrap();
    assert_loss("gaussian", &loss, fx.scalar("loss"));
    assert_grads(&fx, &model, &loss);
}

fn smoothadv_attack_of(fx: &Fixture, model: &Model) -> Attack {
    assert_eq!(fx.t("noise").dim(1).unwrap(), fx.hp_usize("m"));
    smoothadv_attack(model, fx.t("x"), fx.t("y"), fx.t("noise"), fx.hp("eps"), fx.hp_usize("steps")).unwrap()
}

#[test]
fn smoothadv_loss_at_stored_adversarial_point() {
    let fx = load("smoothadv");
    let model = trained_model(&fx);
    let loss = smoothadv_loss(&model, fx.t("x_adv"), fx.t("y"), fx.t("noise")).unwrap();
    assert_loss("smoothadv", &loss, fx.scalar("loss"));
    assert_grads(&fx, &model, &loss);
}

#[test]
fn smoothadv_attack_matches_reference_iterates() {
    let fx = load("smoothadv");
    let attack = smoothadv_attack_of(&fx, &trained_model(&fx));
    assert_attack(&fx, &attack);
    // The step-2 projection is active for every sample: the perturbation sits on the eps sphere.
    let delta = (&attack.x_adv - fx.t("x")).unwrap();
    for norm in to_f64(&delta.flatten_from(1).unwrap().sqr().unwrap().sum(1).unwrap().sqrt().unwrap()) {
        assert!((norm - fx.hp("eps")).abs() < 1e-5, "||delta|| = {norm}");
    }
}

#[test]
fn smoothadv_end_to_end() {
    let fx = load("smoothadv");
    let model = trained_model(&fx);
    let attack = smoothadv_attack_of(&fx, &model);
    let loss = smoothadv_loss(&model, &attack.x_adv, fx.t("y"), fx.t("noise")).unwrap();
    assert_loss("smoothadv end to end", &loss, fx.scalar("loss"));
    assert_grads(&fx, &model, &loss);
}

fn macer_params(fx: &Fixture, gamma: f64) -> MacerParams {
    MacerParams { sigma: fx.hp("sigma"), lambda: fx.hp("lbd"), beta: fx.hp("beta"), gamma }
}

#[test]
fn macer_matches_reference() {
    let fx = load("macer");
    let model = trained_model(&fx);
    assert_eq!(fx.t("noise").dim(1).unwrap(), fx.hp_usize("k"));
    let out = macer_loss(&model, fx.t("x"), fx.t("y"), fx.t("noise"), &macer_params(&fx, fx.hp("gamma"))).unwrap();
    assert_eq!(out.correct, fx.mask("dbg.correct"));
    assert_eq!(out.kept, fx.mask("dbg.kept"));
    assert_close_rel("macer xi", &out.xi, fx.t("dbg.xi"));
    assert_loss("macer", &out.loss, fx.scalar("loss"));
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
fn consistency_matches_reference() {
    let fx = load("consistency");
    let model = trained_model(&fx);
    assert_eq!(fx.t("noise").dim(1).unwrap(), fx.hp_usize("m"));
    let loss = consistency_loss(&model, fx.t("x"), fx.t("y"), fx.t("noise"), fx.hp("lbd"), fx.hp("eta")).unwrap();
    assert_loss("consistency", &loss, fx.scalar("loss"));
    assert_grads(&fx, &model, &loss);
}

fn smoothmix_attack_of(fx: &Fixture, model: &Model) -> Attack {
    assert_eq!(fx.t("noise").dim(1).unwrap(), fx.hp_usize("m"));
    assert_eq!(fx.hp("mix_step"), 0.0, "only mix_step = 0 is implemented");
    smoothmix_attack(model, fx.t("x"), fx.t("y"), fx.t("noise"), fx.hp("alpha"), fx.hp_usize("steps")).unwrap()
}

fn check_smoothmix_loss(fx: &Fixture, model: &Model, x_adv: &Tensor) {
    let out =
        smoothmix_loss(model, fx.t("x"), fx.t("y"), fx.t("noise"), x_adv, fx.t("lam"), fx.hp("eta"), fx.hp("warmup"))
            .unwrap();
    assert_eq!(out.correct, fx.mask("dbg.correct"));
    assert_loss("smoothmix", &out.loss, fx.scalar("loss"));
    assert_grads(fx, model, &out.loss);
}

#[test]
fn smoothmix_loss_at_stored_adversarial_point() {
    let fx = load("smoothmix");
    check_smoothmix_loss(&fx, &trained_model(&fx), fx.t("x_adv"));
}

#[test]
fn smoothmix_attack_matches_reference_iterates() {
    let fx = load("smoothmix");
    assert_attack(&fx, &smoothmix_attack_of(&fx, &trained_model(&fx)));
}

#[test]
fn smoothmix_end_to_end() {
    let fx = load("smoothmix");
    let model = trained_model(&fx);
    let attack = smoothmix_attack_of(&fx, &model);
    check_smoothmix_loss(&fx, &model, &attack.x_adv);
}

#[test]
fn crt_matches_reference() {
    let fx = load("crt");
    let (student, teacher) = (trained_model(&fx), lenet("teacher"));
    let loss = crt_loss(&student, &teacher, fx.t("x"), fx.t("y"), fx.t("noise"), fx.hp("alpha")).unwrap();
    assert_loss("crt", &loss, fx.scalar("loss"));
    assert_grads(&fx, &student, &loss);
    // The frozen teacher gets no gradient.
    let grads = loss.backward().unwrap();
    assert!(teacher.trainable_vars().iter().all(|(_, v)| grads.get(v.as_tensor()).is_none()));
}

#[test]
fn kd_matches_reference() {
    let fx = load("kd");
    let (student, teacher) = (trained_model(&fx), lenet("teacher"));
    let (t, w) = (fx.hp("temperature"), fx.hp("ce_weight"));
    let loss = kd_loss(&student, &teacher, fx.t("x"), fx.t("y"), fx.t("noise"), t, w).unwrap();
    assert_loss("kd", &loss, fx.scalar("loss"));
    assert_grads(&fx, &student, &loss);
}
