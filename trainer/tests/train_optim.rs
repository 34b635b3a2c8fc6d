//! The optimizer and the learning-rate schedule against hand-computed values.

use candle_core::{Device, Tensor, Var};
use crt_trainer::config::Schedule;
use crt_trainer::train::optim::{lr_at, AdamW, AdamWParams, Sgd};

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec1::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6, "got {got:?}, want {want:?}");
    }
}

/// loss = sum(c * w): the gradient is c, so every quantity can be worked out by hand.
/// lr 0.1, momentum 0.9, weight decay 0.01, w0 = [1, -2], c = [0.5, 3]:
///   step 1: g = c + 0.01 w0 = [0.51, 2.98];  buf = g;  w1 = w0 - 0.1 buf = [0.949, -2.298]
///   step 2: g = c + 0.01 w1 = [0.50949, 2.97702];  buf = 0.9 [0.51, 2.98] + g = [0.96849, 5.65902]
///           w2 = w1 - 0.1 buf = [0.852151, -2.863902]
#[test]
fn sgd_momentum_weight_decay_matches_two_hand_computed_steps() {
    let dev = Device::Cpu;
    let w = Var::from_vec(vec![1f32, -2.0], 2, &dev).unwrap();
    let frozen = Var::from_vec(vec![7f32], 1, &dev).unwrap();
    let c = Tensor::from_vec(vec![0.5f32, 3.0], 2, &dev).unwrap();
    let mut sgd = Sgd::new(vec![("frozen".into(), frozen.clone()), ("w".into(), w.clone())], 0.1, 0.9, 0.01);

    let step = |sgd: &mut Sgd| {
        let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
        sgd.step(&loss.backward().unwrap()).unwrap();
    };
    step(&mut sgd);
    assert_close(&values(w.as_tensor()), &[0.949, -2.298]);
    step(&mut sgd);
    assert_close(&values(w.as_tensor()), &[0.852151, -2.863902]);

    let buffers = sgd.momentum_buffers();
    assert_eq!(buffers.len(), 1, "only the variable with a gradient has a buffer");
    assert_eq!(buffers[0].0, "w");
    assert_close(&values(&buffers[0].1), &[0.96849, 5.65902]);
    assert_eq!(values(frozen.as_tensor()), [7.0], "a variable without a gradient is left alone");
}

#[test]
fn zero_momentum_and_decay_is_plain_sgd() {
    let dev = Device::Cpu;
    let w = Var::from_vec(vec![1f32, -2.0], 2, &dev).unwrap();
    let mut sgd = Sgd::new(vec![("w".into(), w.clone())], 0.5, 0.0, 0.0);
    for _ in 0..2 {
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap(); // gradient 2w
        sgd.step(&loss.backward().unwrap()).unwrap();
    }
    // w <- w - 0.5 * 2w = 0 after the first step, and stays there.
    assert_close(&values(w.as_tensor()), &[0.0, 0.0]);
}

#[test]
fn momentum_buffers_are_restored_by_name_and_shape() {
    let dev = Device::Cpu;
    let w = Var::from_vec(vec![1f32, -2.0], 2, &dev).unwrap();
    let mut sgd = Sgd::new(vec![("w".into(), w.clone())], 0.1, 0.9, 0.0);
    let buf = Tensor::from_vec(vec![1f32, 1.0], 2, &dev).unwrap();
    sgd.set_momentum_buffer("w", buf).unwrap();
    assert!(sgd.set_momentum_buffer("nope", Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap()).is_err());
    assert!(sgd.set_momentum_buffer("w", Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap()).is_err());
    // With a restored buffer of ones and gradient c: buf = 0.9 + c, w = w - 0.1 buf.
    let c = Tensor::from_vec(vec![0.5f32, 3.0], 2, &dev).unwrap();
    let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
    sgd.step(&loss.backward().unwrap()).unwrap();
    assert_close(&values(w.as_tensor()), &[1.0 - 0.14, -2.0 - 0.39]);
}

const ADAMW: AdamWParams = AdamWParams { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };

/// loss = sum(c * w), so the gradient is the constant c, and with it AdamW's bias-corrected moments
/// are m^ = c and v^ = c^2: each step first decays w by (1 - lr wd) = 0.999, then moves it by
/// lr m^ / (sqrt(v^) + eps) = 0.1 sign(c) (up to eps). w0 = [1, -2], c = [0.5, -3]:
///   step 1: [0.999, -1.998] - [0.1, -0.1] = [0.899, -1.898]
///   step 2: [0.898101, -1.896102] - [0.1, -0.1] = [0.798101, -1.796102]
#[test]
fn adamw_matches_two_hand_computed_steps() {
    let dev = Device::Cpu;
    let w = Var::from_vec(vec![1f32, -2.0], 2, &dev).unwrap();
    let frozen = Var::from_vec(vec![7f32], 1, &dev).unwrap();
    let c = Tensor::from_vec(vec![0.5f32, -3.0], 2, &dev).unwrap();
    let mut adam = AdamW::new(vec![("frozen".into(), frozen.clone()), ("w".into(), w.clone())], ADAMW);
    let step = |adam: &mut AdamW| {
        let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
        adam.step(&loss.backward().unwrap()).unwrap();
    };
    let close = |got: &[f32], want: &[f32]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 2e-6, "got {got:?}, want {want:?}");
        }
    };
    step(&mut adam);
    close(&values(w.as_tensor()), &[0.899, -1.898]);
    step(&mut adam);
    close(&values(w.as_tensor()), &[0.798101, -1.796102]);
    assert_eq!(adam.steps_done(), 2);
    assert_eq!(values(frozen.as_tensor()), [7.0], "a variable without a gradient is left alone");
    let keys: Vec<String> = adam.state().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["optim.adamw.step", "optim.adamw.m.w", "optim.adamw.v.w"]);
}

/// The same updates as candle_nn's AdamW (the same rule, PyTorch's) on a gradient that changes
/// every step (loss = sum(c * w^3)), over five steps.
#[test]
fn adamw_agrees_with_candle_nn() {
    use candle_nn::Optimizer as _;
    let dev = Device::Cpu;
    let c = Tensor::from_vec(vec![0.5f32, -3.0, 1.5], 3, &dev).unwrap();
    let ours_w = Var::from_vec(vec![1f32, -2.0, 0.25], 3, &dev).unwrap();
    let theirs_w = Var::from_vec(vec![1f32, -2.0, 0.25], 3, &dev).unwrap();
    let mut ours = AdamW::new(vec![("w".into(), ours_w.clone())], ADAMW);
    let params = candle_nn::ParamsAdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let mut theirs = candle_nn::AdamW::new(vec![theirs_w.clone()], params).unwrap();
    let loss = |w: &Var| (w.as_tensor().powf(3.0).unwrap() * &c).unwrap().sum_all().unwrap();
    for step in 0..5 {
        ours.step(&loss(&ours_w).backward().unwrap()).unwrap();
        theirs.step(&loss(&theirs_w).backward().unwrap()).unwrap();
        let (a, b) = (values(ours_w.as_tensor()), values(theirs_w.as_tensor()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5, "step {step}: ours {a:?}, candle_nn {b:?}");
        }
    }
}

/// An AdamW rebuilt from another's state continues exactly as the original does.
#[test]
fn adamw_state_restores_exactly() {
    let dev = Device::Cpu;
    let c = Tensor::from_vec(vec![0.5f32, -3.0], 2, &dev).unwrap();
    let w = Var::from_vec(vec![1f32, -2.0], 2, &dev).unwrap();
    let mut a = AdamW::new(vec![("w".into(), w.clone())], ADAMW);
    let step = |adam: &mut AdamW, w: &Var| {
        let loss = (w.as_tensor().sqr().unwrap() * &c).unwrap().sum_all().unwrap();
        adam.step(&loss.backward().unwrap()).unwrap();
    };
    for _ in 0..3 {
        step(&mut a, &w);
    }
    let w2 = Var::from_tensor(w.as_tensor()).unwrap();
    let mut b = AdamW::new(vec![("w".into(), w2.clone())], ADAMW);
    for (key, t) in a.state().unwrap() {
        b.restore(&key, t).unwrap();
    }
    assert_eq!(b.steps_done(), 3);
    for _ in 0..2 {
        step(&mut a, &w);
        step(&mut b, &w2);
    }
    assert_eq!(values(w.as_tensor()), values(w2.as_tensor()), "bit-identical after the restore");
    let zeros = |n| Tensor::zeros(n, candle_core::DType::F32, &dev).unwrap();
    assert!(b.restore("optim.adamw.m.nope", zeros(2)).is_err(), "unknown variable");
    assert!(b.restore("optim.adamw.v.w", zeros(3)).is_err(), "wrong shape");
    assert!(b.restore("optim.momentum.w", zeros(2)).is_err(), "SGD state");
}

#[test]
fn learning_rate_follows_step_multistep_and_constant_schedules() {
    let step = Schedule::Step { every_epochs: 2, gamma: 0.1 };
    let got: Vec<f64> = (0..6).map(|e| lr_at(0.1, &step, e)).collect();
    let want = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "step schedule: {got:?}");
    }
    let multi = Schedule::MultiStep { milestones: vec![1, 3], gamma: 0.5 };
    let got: Vec<f64> = (0..5).map(|e| lr_at(0.2, &multi, e)).collect();
    assert_eq!(got, [0.2, 0.1, 0.1, 0.05, 0.05]);
    assert_eq!(lr_at(0.3, &Schedule::Constant, 100), 0.3);
}
