//! Reproducibility on real MNIST images: the same seed gives the same weights, another seed other
//! weights, and an interrupted run continued with `resume` ends bit-identical to an uninterrupted one
//! (after a finished epoch, and after a stop in the middle of an epoch).

mod train_common;

use std::cell::Cell;
use std::path::Path;

use crt_trainer::cli::run::Outcome;
use crt_trainer::config::{Arch, Method, Optimizer, TrainConfig};
use crt_trainer::models::Model;
use crt_trainer::report::Reporter;
use crt_trainer::stop::StopFlag;
use crt_trainer::train::{self, checkpoint, Job, Objective, StepInput, StepLoss};
use train_common::{quiet_context, small_config, tensor_bits};

fn weights(dir: &Path) -> std::collections::HashMap<String, Vec<u64>> {
    tensor_bits(&dir.join("model.safetensors"))
}

fn assert_finished(outcome: Outcome) {
    assert!(matches!(outcome, Outcome::Finished { .. }), "the run should finish");
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: u64| {
        let out = tmp.path().join(name);
        let mut cfg = small_config(Arch::Lenet, Method::Gaussian { sigma: 0.25 }, &out, seed);
        cfg.optim.epochs = 1;
        assert_finished(train_common::train(&cfg));
        weights(&out)
    };
    let a = run("a", 3);
    let b = run("b", 3);
    let c = run("c", 4);
    assert_eq!(a.len(), 8, "LeNet has 8 tensors");
    assert_eq!(a, b, "same seed, same weights");
    assert_ne!(a, c, "another seed, other weights");
}

/// 2 epochs in one go == 1 epoch, then `resume` with 2 epochs; for LeNet (momentum buffers), a
/// ResNet (BatchNorm running statistics too) and LeNet with AdamW (its moments and step count: a
/// lost step count would change the bias correction, so the weights would differ).
#[test]
fn two_epochs_equal_one_epoch_plus_resume() {
    let tmp = tempfile::tempdir().unwrap();
    for (arch, subset, optimizer) in [
        (Arch::Lenet, 256, Optimizer::Sgd),
        (Arch::Resnet20, 64, Optimizer::Sgd),
        (Arch::Lenet, 256, Optimizer::adamw()),
    ] {
        let method = Method::Gaussian { sigma: 0.5 };
        let full_dir = tmp.path().join(format!("{arch:?}-{}-full", optimizer.is_sgd()));
        let mut full = small_config(arch, method.clone(), &full_dir, 11);
        full.optim.optimizer = optimizer;
        if !optimizer.is_sgd() {
            full.optim.lr = Some(1e-3);
        }
        full.data.train_subset = Some(subset);
        full.optim.batch_size = 32;
        full.data.test_subset = Some(32);
        assert_finished(train_common::train(&full));

        let split_dir = tmp.path().join(format!("{arch:?}-{}-split", optimizer.is_sgd()));
        let mut first = TrainConfig { out_dir: split_dir.clone(), ..full.clone() };
        first.optim.epochs = 1;
        assert_finished(train_common::train(&first));
        assert_ne!(weights(&split_dir), weights(&full_dir), "{arch:?}: one epoch differs from two");
        let second = TrainConfig { resume: true, ..first.clone() };
        let second = TrainConfig { optim: full.optim.clone(), ..second };
        assert_eq!(checkpoint::peek_step(&split_dir), Some((subset / 32) as u64));
        assert_finished(train_common::train(&second));

        assert_eq!(weights(&split_dir), weights(&full_dir), "{arch:?}: 1 + resumed 1 epochs == 2 epochs");
        let meta = crt_trainer::models::ModelMeta::read(&split_dir.join("model.json")).unwrap();
        assert_eq!(meta.epochs, 2);
        assert!(meta.final_metrics.contains_key("test/acc") && meta.final_metrics.contains_key("test/noisy_acc"));
    }
}

/// A checkpoint made with AdamW does not continue under SGD (nor the reverse): the run fails
/// naming the optimizer instead of mixing one's state into the other.
#[test]
fn resume_with_another_optimizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (made, resumed) in [(Optimizer::adamw(), Optimizer::Sgd), (Optimizer::Sgd, Optimizer::adamw())] {
        let dir = tmp.path().join(format!("made-{}", made.is_sgd()));
        let mut first = small_config(Arch::Lenet, Method::Gaussian { sigma: 0.25 }, &dir, 5);
        first.optim.optimizer = made;
        first.optim.epochs = 1;
        assert_finished(train_common::train(&first));
        let mut second = TrainConfig { resume: true, ..first.clone() };
        second.optim.epochs = 2;
        second.optim.optimizer = resumed;
        let reporter = Reporter::quiet();
        let err =
            train::train(&second, &quiet_context(&reporter)).err().expect("a resume with another optimizer fails");
        let msg = format!("{err:#}");
        assert!(msg.contains("optimizer"), "{msg}");
    }
}

/// Raises the stop flag once the inner objective has run `after` steps (a SIGTERM mid-epoch).
struct StopAfter {
    inner: Method,
    stop: StopFlag,
    after: usize,
    steps: Cell<usize>,
}

impl Objective for StopAfter {
    fn loss(&self, model: &Model, input: StepInput<'_>) -> anyhow::Result<StepLoss> {
        self.steps.set(self.steps.get() + 1);
        if self.steps.get() == self.after {
            self.stop.raise();
        }
        self.inner.loss(model, input)
    }
}

fn fit(cfg: &TrainConfig, objective: &dyn Objective, stop: StopFlag) -> train::Fit {
    let (train_split, test_split) = train::load_splits(&cfg.data).unwrap();
    std::fs::create_dir_all(&cfg.out_dir).unwrap();
    let model = Model::new(cfg.arch, cfg.data.dataset, &candle_core::Device::Cpu, cfg.seed).unwrap();
    let job = Job {
        model: &model,
        objective,
        train: &train_split,
        test: &test_split,
        optim: &cfg.optim,
        seed: cfg.seed,
        out_dir: &cfg.out_dir,
        resume: cfg.resume,
        eval_sigma: cfg.method.sigma(),
        augment: None,
        identity: Default::default(),
    };
    let reporter = Reporter::quiet();
    let ctx = crt_trainer::cli::run::Context { stop, ..quiet_context(&reporter) };
    let fit = train::fit(&job, &ctx).unwrap();
    model.save(&cfg.out_dir.join("model.safetensors")).unwrap();
    fit
}

#[test]
fn stop_mid_epoch_then_resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let method = Method::Gaussian { sigma: 0.25 };
    let whole = small_config(Arch::Lenet, method.clone(), &tmp.path().join("whole"), 5);
    assert!(matches!(fit(&whole, &method, StopFlag::default()), train::Fit::Finished { .. }));

    // 256 images in batches of 64: 4 steps per epoch; stop after step 6 (epoch 1, batch 2).
    let cut = TrainConfig { out_dir: tmp.path().join("cut"), ..whole.clone() };
    let stop = StopFlag::default();
    let stopper = StopAfter { inner: method.clone(), stop: stop.clone(), after: 6, steps: Cell::new(0) };
    let stopped = fit(&cut, &stopper, stop);
    let train::Fit::Stopped { checkpoint } = stopped else { panic!("the run should stop") };
    assert!(checkpoint.is_file());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cut.out_dir.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!((state["epoch"].as_u64(), state["batch"].as_u64(), state["step"].as_u64()), (Some(1), Some(2), Some(6)));

    let resumed = TrainConfig { resume: true, ..cut.clone() };
    assert!(matches!(fit(&resumed, &method, StopFlag::default()), train::Fit::Finished { .. }));
    assert_eq!(weights(&cut.out_dir), weights(&whole.out_dir), "stopped at step 6 + resumed == uninterrupted");
}

#[test]
fn resume_with_other_settings_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small_config(Arch::Linear, Method::Standard, tmp.path(), 1);
    cfg.optim.epochs = 1;
    assert_finished(train_common::train(&cfg));
    let other = TrainConfig { resume: true, seed: 2, ..cfg.clone() };
    let reporter = Reporter::quiet();
    let err = match crt_trainer::train::train(&other, &quiet_context(&reporter)) {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("resuming with another seed must fail"),
    };
    assert!(err.contains("seed = 1") && err.contains("seed = 2"), "{err}");
}
