//! The reference check of the training engine: LeNet, Gaussian augmentation sigma = 0.25, one epoch
//! on the full MNIST training set (60,000 images), must reach at least 95% clean test accuracy on the
//! full test set. Runs at release speed (the dev profile optimizes crt-trainer); prints its time.

mod train_common;

use std::time::Instant;

use crt_trainer::cli::run::Outcome;
use crt_trainer::config::{Arch, Method, Schedule};

#[test]
fn lenet_gaussian_one_epoch_full_mnist_reaches_95_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = train_common::small_config(Arch::Lenet, Method::Gaussian { sigma: 0.25 }, tmp.path(), 0);
    cfg.data.train_subset = None;
    cfg.data.test_subset = None;
    cfg.optim.epochs = 1;
    cfg.optim.batch_size = 64;
    cfg.optim.schedule = Schedule::Constant;
    let start = Instant::now();
    let Outcome::Finished { summary } = train_common::train(&cfg) else { panic!("the run should finish") };
    let secs = start.elapsed().as_secs_f64();
    let (acc, noisy) = (summary["test/acc"], summary["test/noisy_acc"]);
    eprintln!("LeNet gaussian(0.25), 1 epoch full MNIST: test/acc {acc:.4}, test/noisy_acc {noisy:.4}, {secs:.1} s");
    assert!(acc >= 0.95, "clean test accuracy {acc} < 0.95");
    assert!(noisy >= 0.90, "noisy test accuracy {noisy} < 0.90");
}
