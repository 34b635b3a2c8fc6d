//! A ViT student trained by CRT transfer, end to end on a tiny real task: a LeNet teacher trained
//! with Gaussian augmentation (sigma = 0.25) on real MNIST training images, then a `vit` student
//! trained from scratch with the CRT loss (logit weight 1) on the same images.
//!
//! * The student's CRT loss on held-out noisy inputs (fixed noise) falls below 0.75 of its start.
//! * The student is certified by CERTIFY (Cohen et al.) as a smoothed classifier: at least 6 of 20
//!   test images get a correct prediction with a positive radius.
//!
//! The student uses candle_nn's AdamW (lr 3e-3, 320 steps of 32): with the trainer's SGD (lr
//! 0.05-0.5, momentum 0.9, up to 384 steps) the ViT only learned the teacher's mean logits in this
//! budget (held-out loss 0.92-1.01 of its start), as ViTs are known to train poorly with SGD.
//! Measured (these seeds, 2 busy cores, dev profile): loss 13.95 -> 8.02 (0.57 of start), 12/20
//! certified correct (mean radius 0.30), 38 s in all; 19 s on the same cores when idle.
//! Data: `CRT_DATA_DIR`, default `<repo>/target/crt-data`; MNIST is fetched there on first use.

mod train_common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use crt_trainer::certify::smoothed::{SmoothedClassifier, Smoothing};
use crt_trainer::config::{Arch, CertifyMode, Dataset};
use crt_trainer::data::{self, Split};
use crt_trainer::methods::{crt_loss, gaussian_loss};
use crt_trainer::models::Model;
use crt_trainer::noise;
use crt_trainer::train::optim::Sgd;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

const SIGMA: f64 = 0.25;

/// SGD (momentum 0.9) for `steps` batches of `batch` of the first `images` training images, one
/// noise draw (sigma 0.25) per image per step.
#[allow(clippy::too_many_arguments)]
fn fit(
    model: &Model,
    train: &Split,
    images: usize,
    batch: usize,
    steps: usize,
    lr: f64,
    seed: u64,
    loss: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
) {
    let mut opt = Opt::new(model, lr);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..images).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    for batch in order.chunks(batch).cycle().take(steps) {
        let (x, y) = train.gather(batch, &Device::Cpu).unwrap();
        let noise = noise::gaussian(&mut rng, x.shape(), SIGMA, x.device()).unwrap();
        opt.step(&loss(&x, &y, &noise).backward().unwrap());
    }
}

/// SGD with momentum (the trainer's) for the LeNet teacher; AdamW (candle_nn's) for the ViT.
enum Opt {
    Sgd(Sgd),
    Adam(candle_nn::AdamW),
}

impl Opt {
    fn new(model: &Model, lr: f64) -> Self {
        if model.arch == Arch::Vit {
            let vars = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
            let params = candle_nn::ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() };
            Opt::Adam(<candle_nn::AdamW as candle_nn::Optimizer>::new(vars, params).unwrap())
        } else {
            Opt::Sgd(Sgd::new(model.trainable_vars(), lr, 0.9, 0.0))
        }
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) {
        match self {
            Opt::Sgd(o) => o.step(grads).unwrap(),
            Opt::Adam(o) => candle_nn::Optimizer::step(o, grads).unwrap(),
        }
    }
}

fn scalar(t: &Tensor) -> f64 {
    f64::from(t.to_scalar::<f32>().unwrap())
}

#[test]
fn a_vit_student_learns_from_a_lenet_teacher_by_crt_and_is_certified() {
    let start = Instant::now();
    let dir = train_common::mnist_dir();
    let train = data::load(Dataset::Mnist, &dir, true).unwrap();
    let test = data::load(Dataset::Mnist, &dir, false).unwrap();

    let teacher = Model::new(Arch::Lenet, Dataset::Mnist, &Device::Cpu, 2).unwrap();
    fit(&teacher, &train, 4096, 64, 128, 0.05, 22, |x, y, n| gaussian_loss(&teacher, x, y, n).unwrap());
    let teacher_s = start.elapsed().as_secs_f64();

    // Held-out noisy inputs: 256 test images with one fixed noise draw.
    let held_out: Vec<usize> = (0..256).collect();
    let (hx, hy) = test.gather(&held_out, &Device::Cpu).unwrap();
    let hn = noise::gaussian(&mut StdRng::seed_from_u64(99), hx.shape(), SIGMA, hx.device()).unwrap();

    let student = Model::new(Arch::Vit, Dataset::Mnist, &Device::Cpu, 5).unwrap();
    let held_out_loss = |m: &Model| scalar(&crt_loss(m, &teacher, &hx, &hy, &hn, 1.0).unwrap());
    let before = held_out_loss(&student);
    fit(&student, &train, 4096, 32, 320, 3e-3, 12, |x, y, n| crt_loss(&student, &teacher, x, y, n, 1.0).unwrap());
    let after = held_out_loss(&student);
    let student_s = start.elapsed().as_secs_f64() - teacher_s;

    // CERTIFY on 20 test images (n0 = 16, n = 128, alpha = 0.001).
    let params =
        Smoothing { sigma: SIGMA, n0: 16, n: 128, alpha: 0.001, batch: 128, seed: 7, mode: CertifyMode::Fixed };
    let mut smoothed = SmoothedClassifier::new(&student, params);
    let mut certified = 0;
    let mut radii = Vec::new();
    for i in 0..20 {
        let idx = i * 37;
        let c = smoothed.certify(idx as u64, test.image(idx)).unwrap();
        if c.predict == i64::from(test.label(idx)) && c.radius > 0.0 {
            certified += 1;
            radii.push(c.radius);
        }
    }
    let mean_radius = radii.iter().sum::<f64>() / radii.len().max(1) as f64;
    eprintln!(
        "held-out CRT loss {before:.3} -> {after:.3} ({:.2} of start); certified correct {certified}/20, \
         mean radius {mean_radius:.3}; teacher {teacher_s:.1} s, student {student_s:.1} s, total {:.1} s",
        after / before,
        start.elapsed().as_secs_f64()
    );
    assert!(after < 0.75 * before, "CRT loss {before} -> {after}");
    assert!(certified >= 6, "only {certified} of 20 images certified correctly");
}
