//! The timed work, built from the trainer's own parts so that the numbers are the product's:
//! a Gaussian-augmentation training step (`methods::training_loss` + `train::optim::Sgd`) and a
//! certification batch (`certify::sampler::NoiseSampler`).

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Case, Mode};
use crate::certify::sampler::NoiseSampler;
use crate::config::Method;
use crate::methods::training_loss;
use crate::models::Model;
use crate::train::optim::Sgd;

/// The noise level of both workloads (the PyTorch script's 0.25).
pub const SIGMA: f64 = 0.25;
/// The PyTorch script's optimizer: lr 0.01, momentum 0.9, weight decay 1e-4.
const LR: f64 = 0.01;
const MOMENTUM: f64 = 0.9;
const WEIGHT_DECAY: f64 = 1e-4;

/// One SGD step on a fixed batch: noise draw + forward + cross-entropy + backward + update.
pub struct TrainStep {
    model: Model,
    x: Tensor,
    y: Tensor,
    sgd: Sgd,
    rng: StdRng,
}

impl TrainStep {
    pub fn new(case: &Case, device: &Device, seed: u64) -> anyhow::Result<Self> {
        let dataset = case.dataset();
        let model = Model::new(case.arch, dataset, device, seed)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let (c, h, w) = dataset.image_shape();
        let pixels: Vec<f32> = (0..case.batch * c * h * w).map(|_| rng.random::<f32>()).collect();
        let x = Tensor::from_vec(pixels, (case.batch, c, h, w), device)?;
        let labels: Vec<u32> = (0..case.batch).map(|_| rng.random_range(0..dataset.classes() as u32)).collect();
        let y = Tensor::from_vec(labels, case.batch, device)?;
        let sgd = Sgd::new(model.trainable_vars(), LR, MOMENTUM, WEIGHT_DECAY);
        Ok(TrainStep { model, x, y, sgd, rng })
    }

    pub fn run(&mut self) -> anyhow::Result<()> {
        // The noise is drawn inside, from the seeded generator, as in training.
        let method = Method::Gaussian { sigma: SIGMA };
        let loss = training_loss(&method, &self.model, &self.x, &self.y, 0, &mut self.rng)?;
        self.sgd.step(&loss.backward()?)?;
        Ok(())
    }
}

/// One certification batch: `batch` noisy copies of one image + forward + argmax + class counts.
pub struct CertifyStep {
    model: Model,
    image: Vec<f32>,
    batch: usize,
    rng: StdRng,
}

impl CertifyStep {
    pub fn new(case: &Case, device: &Device, seed: u64) -> anyhow::Result<Self> {
        let dataset = case.dataset();
        let model = Model::new(case.arch, dataset, device, seed)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let (c, h, w) = dataset.image_shape();
        let image = (0..c * h * w).map(|_| rng.random::<f32>()).collect();
        Ok(CertifyStep { model, image, batch: case.batch, rng })
    }

    /// Median seconds of one batch; the sampler (and its buffers) lives across batches, as in a
    /// certification run.
    pub fn time(&mut self, runs: usize) -> anyhow::Result<f64> {
        let mut sampler = NoiseSampler::new(&self.model, SIGMA, self.batch);
        let (image, batch, rng) = (&self.image, self.batch, &mut self.rng);
        super::median_time(runs, || {
            let counts = sampler.counts(image, batch, rng)?;
            anyhow::ensure!(counts.iter().sum::<u64>() == batch as u64, "class counts do not add up to the batch");
            Ok(())
        })
    }
}

/// Median seconds of one call of the case's workload.
pub fn measure(case: &Case, device: &Device, runs: usize) -> anyhow::Result<f64> {
    match case.mode {
        Mode::Train => {
            let mut step = TrainStep::new(case, device, 0)?;
            super::median_time(runs, || step.run())
        }
        Mode::Certify => CertifyStep::new(case, device, 0)?.time(runs),
    }
}
