//! The training loop's entry points: every method's step loss on a random LeNet batch is finite,
//! reproducible from the seed, reaches every trainable variable, and follows its schedule.

use candle_core::{Device, Tensor};
use crt_trainer::config::{Arch, Dataset, Method, TransferLoss};
use crt_trainer::methods::{training_loss, transfer_loss};
use crt_trainer::models::Model;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH: usize = 6;

/// Random images in [0, 1] and labels, from a seeded RNG.
fn batch(dataset: Dataset, size: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (c, h, w) = dataset.image_shape();
    let pixels: Vec<f32> = (0..size * c * h * w).map(|_| rng.random::<f32>()).collect();
    let labels: Vec<u32> = (0..size).map(|_| rng.random_range(0..10)).collect();
    let x = Tensor::from_vec(pixels, (size, c, h, w), &Device::Cpu).unwrap();
    (x, Tensor::new(labels.as_slice(), &Device::Cpu).unwrap())
}

fn lenet(seed: u64) -> Model {
    Model::new(Arch::Lenet, Dataset::Mnist, &Device::Cpu, seed).unwrap()
}

fn loss_value(method: &Method, model: &Model, epoch: usize, seed: u64) -> f32 {
    let (x, y) = batch(Dataset::Mnist, BATCH, 3);
    let loss = training_loss(method, model, &x, &y, epoch, &mut StdRng::seed_from_u64(seed)).unwrap();
    loss.to_scalar::<f32>().unwrap()
}

/// The loss is finite and every trainable variable gets a finite, not identically zero gradient.
fn assert_trains(what: &str, model: &Model, loss: &Tensor) {
    let value = loss.to_scalar::<f32>().unwrap();
    assert!(value.is_finite() && value > 0.0, "{what}: loss {value}");
    let grads = loss.backward().unwrap();
    for (name, var) in model.trainable_vars() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{what}: non-finite gradient for {name}");
        assert!(g.iter().any(|&v| v != 0.0), "{what}: zero gradient for {name}");
    }
}

fn all_methods() -> Vec<Method> {
    let names = Method::NAMES;
    names.iter().map(|n| Method::with_defaults(n, 0.25).unwrap()).collect()
}

#[test]
fn every_method_gives_a_finite_loss_that_reaches_every_variable() {
    let model = lenet(1);
    let (x, y) = batch(Dataset::Mnist, BATCH, 3);
    for method in all_methods() {
        let loss = training_loss(&method, &model, &x, &y, 20, &mut StdRng::seed_from_u64(5)).unwrap();
        assert_trains(method.name(), &model, &loss);
    }
}

#[test]
fn losses_are_reproducible_from_the_seed_and_depend_on_it() {
    let model = lenet(2);
    for method in all_methods() {
        let a = loss_value(&method, &model, 20, 7);
        assert_eq!(a, loss_value(&method, &model, 20, 7), "{}", method.name());
        if method != Method::Standard {
            assert_ne!(a, loss_value(&method, &model, 20, 8), "{} ignores its noise", method.name());
        }
    }
}

#[test]
fn smoothadv_epsilon_warms_up_linearly() {
    let model = lenet(3);
    let adv = |epsilon, warmup_epochs| Method::SmoothAdv { sigma: 0.25, m: 2, steps: 2, epsilon, warmup_epochs };
    // Epoch 0 of a 10-epoch warm-up attacks with eps / 10; from epoch 9 on with eps.
    assert_eq!(loss_value(&adv(0.5, 10), &model, 0, 1), loss_value(&adv(0.05, 0), &model, 0, 1));
    assert_eq!(loss_value(&adv(0.5, 10), &model, 9, 1), loss_value(&adv(0.5, 0), &model, 9, 1));
    assert_ne!(loss_value(&adv(0.5, 10), &model, 0, 1), loss_value(&adv(0.5, 0), &model, 0, 1));
}

#[test]
fn macer_robustness_term_is_deferred() {
    // While deferred the loss equals the lambda = 0 loss exactly; afterwards the robustness term
    // (active on samples the smoothed model classifies as labelled) changes it.
    let model = lenet(4);
    let macer =
        |lambda, deferred_epochs| Method::Macer { sigma: 0.25, k: 4, lambda, beta: 16.0, gamma: 8.0, deferred_epochs };
    let plain = loss_value(&macer(0.0, 0), &model, 0, 2);
    assert_eq!(loss_value(&macer(12.0, 3), &model, 2, 2), plain);
    let (x, _) = batch(Dataset::Mnist, BATCH, 3);
    // Label every image with the model's own prediction so that the robustness term is active.
    let y = model.forward_t(&x, false).unwrap().argmax(1).unwrap();
    let with_own_labels = |method: &Method, epoch| {
        training_loss(method, &model, &x, &y, epoch, &mut StdRng::seed_from_u64(2)).unwrap().to_scalar::<f32>().unwrap()
    };
    assert_ne!(with_own_labels(&macer(12.0, 3), 3), with_own_labels(&macer(0.0, 0), 3));
    assert_eq!(with_own_labels(&macer(12.0, 3), 2), with_own_labels(&macer(0.0, 0), 2));
}

#[test]
fn smoothmix_mixup_weight_warms_up() {
    let model = lenet(5);
    let (x, _) = batch(Dataset::Mnist, BATCH, 3);
    let y = model.forward_t(&x, false).unwrap().argmax(1).unwrap();
    let mix =
        |eta, warmup_epochs| Method::SmoothMix { sigma: 0.25, m: 2, steps: 1, step_size: 0.5, eta, warmup_epochs };
    let value = |method: &Method, epoch| {
        training_loss(method, &model, &x, &y, epoch, &mut StdRng::seed_from_u64(9)).unwrap().to_scalar::<f32>().unwrap()
    };
    // w = (epoch + 1) / warmup during the warm-up: eta 4 at w = 1/4 is eta 1 at w = 1.
    let warm = value(&mix(4.0, 4), 0);
    let full = value(&mix(1.0, 0), 0);
    assert!((warm - full).abs() <= 1e-6 * full.abs(), "{warm} vs {full}");
    assert_ne!(value(&mix(4.0, 0), 0), full);
}

#[test]
fn batch_norm_model_trains_with_an_attack_method() {
    let model = Model::new(Arch::Resnet20, Dataset::Cifar10, &Device::Cpu, 1).unwrap();
    let (x, y) = batch(Dataset::Cifar10, 2, 4);
    let method = Method::SmoothAdv { sigma: 0.25, m: 2, steps: 1, epsilon: 0.25, warmup_epochs: 0 };
    let loss = training_loss(&method, &model, &x, &y, 0, &mut StdRng::seed_from_u64(1)).unwrap();
    assert_trains("smoothadv on resnet20", &model, &loss);
}

#[test]
fn transfer_losses_train_the_student_only() {
    let (student, teacher) = (lenet(6), lenet(7));
    let (x, y) = batch(Dataset::Mnist, BATCH, 3);
    let losses = [
        TransferLoss::Crt { logit_weight: 1.0 },
        TransferLoss::Crt { logit_weight: 0.5 },
        TransferLoss::Kd { temperature: 4.0, ce_weight: 0.0 },
        TransferLoss::Kd { temperature: 2.0, ce_weight: 1.0 },
    ];
    for loss_kind in losses {
        let loss = transfer_loss(&loss_kind, &student, &teacher, &x, &y, 0.25, &mut StdRng::seed_from_u64(3)).unwrap();
        assert_trains(&format!("{loss_kind:?}"), &student, &loss);
        let grads = loss.backward().unwrap();
        assert!(teacher.trainable_vars().iter().all(|(_, v)| grads.get(v.as_tensor()).is_none()), "{loss_kind:?}");
    }
}
