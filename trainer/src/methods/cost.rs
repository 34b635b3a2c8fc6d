//! What one training step of each method costs, relative to Gaussian augmentation: the methods'
//! multiples of noisy copies (m, k) and attack steps (T) make them several times dearer per batch.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{training_loss, transfer_loss};
use crate::config::{Arch, Dataset, Method, TransferLoss};
use crate::models::Model;

/// One method's measured step time (loss and backward, no optimizer update).
#[derive(Debug, Clone)]
pub struct MethodCost {
    /// The method's name, or `transfer:crt` / `transfer:kd`.
    pub name: String,
    pub seconds_per_step: f64,
    /// seconds_per_step / Gaussian's.
    pub relative: f64,
}

/// Times `steps` steps (after one warm-up step) of every training method with its defaults at
/// `sigma`, then CRT and KD transfer onto a student of the same architecture, on a random batch.
pub fn method_costs(
    arch: Arch,
    dataset: Dataset,
    batch: usize,
    steps: usize,
    sigma: f64,
    device: &Device,
) -> anyhow::Result<Vec<MethodCost>> {
    let model = Model::new(arch, dataset, device, 0)?;
    let teacher = Model::new(arch, dataset, device, 1)?;
    let (x, y) = random_batch(dataset, batch, device)?;
    let mut timings: Vec<(String, f64)> = Vec::new();
    // Gaussian first: the baseline.
    let names = std::iter::once("gaussian").chain(Method::NAMES.into_iter().filter(|&n| n != "gaussian"));
    for name in names {
        let method = Method::with_defaults(name, sigma)?;
        let step = |rng: &mut StdRng| training_loss(&method, &model, &x, &y, usize::MAX / 2, rng);
        timings.push((name.to_string(), time_steps(steps, step)?));
    }
    for (name, loss) in
        [("crt", TransferLoss::default()), ("kd", TransferLoss::Kd { temperature: 4.0, ce_weight: 0.0 })]
    {
        let step = |rng: &mut StdRng| transfer_loss(&loss, &model, &teacher, &x, &y, sigma, rng);
        timings.push((format!("transfer:{name}"), time_steps(steps, step)?));
    }
    let baseline = timings[0].1;
    Ok(timings.into_iter().map(|(name, s)| MethodCost { name, seconds_per_step: s, relative: s / baseline }).collect())
}

/// Mean seconds of loss + backward over `steps` steps, after one untimed warm-up step.
fn time_steps(steps: usize, step: impl Fn(&mut StdRng) -> Result<Tensor>) -> Result<f64> {
    let mut rng = StdRng::seed_from_u64(0);
    step(&mut rng)?.backward()?;
    let start = Instant::now();
    for _ in 0..steps {
        step(&mut rng)?.backward()?;
    }
    Ok(start.elapsed().as_secs_f64() / steps.max(1) as f64)
}

fn random_batch(dataset: Dataset, batch: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut rng = StdRng::seed_from_u64(1);
    let (c, h, w) = dataset.image_shape();
    let pixels: Vec<f32> = (0..batch * c * h * w).map(|_| rng.random::<f32>()).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..dataset.classes() as u32)).collect();
    Ok((Tensor::from_vec(pixels, (batch, c, h, w), device)?, Tensor::from_vec(labels, batch, device)?))
}
