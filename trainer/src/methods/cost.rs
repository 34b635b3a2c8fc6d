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

/// A robust method at the settings a published cost ratio refers to.
#[derive(Debug, Clone)]
pub struct ReferenceSetting {
    pub method: Method,
    /// Where the parameters come from.
    pub source: &'static str,
    /// The CRT paper's Table 1 ratio to standard training, where it gives one.
    pub paper_ratio: Option<f64>,
}

/// The robust methods of the CRT paper's Table 1 at the settings of the reference codes' CIFAR-10
/// training commands for sigma = 0.25 (the noise level is `sigma`; docs/methods.md).
pub fn reference_settings(sigma: f64) -> Vec<ReferenceSetting> {
    vec![
        ReferenceSetting {
            // Its best CIFAR-10 sigma = 0.25 model: each image costs m * (T + 1) passes.
            method: Method::SmoothAdv { sigma, m: 8, steps: 10, epsilon: 1.0, warmup_epochs: 10 },
            source: "Hadisalman/smoothing-adversarial train_pgd.py: PGD, T = 10, m = 8, eps = 255/255, warmup 10",
            paper_ratio: Some(46.2),
        },
        ReferenceSetting {
            method: Method::Macer { sigma, k: 16, lambda: 12.0, beta: 16.0, gamma: 8.0, deferred_epochs: 0 },
            source: "RuntianZ/macer: num_noise_vec k = 16, lbd = 12, beta = 16, margin gamma = 8",
            paper_ratio: Some(20.9),
        },
        ReferenceSetting {
            method: Method::SmoothMix { sigma, m: 2, steps: 4, step_size: 1.0, eta: 5.0, warmup_epochs: 10 },
            source: "jh-jeong/smoothmix train_smoothmix.py: m = 2, T = 4, alpha = 1.0, eta = 5",
            paper_ratio: Some(5.0),
        },
        ReferenceSetting {
            method: Method::Consistency { sigma, m: 2, lambda: 20.0, eta: 0.5 },
            source: "jh-jeong/smoothing-consistency train_consistency.py: m = 2, lbd = 20, eta = 0.5",
            paper_ratio: None,
        },
    ]
}

/// One row of the Table 1 measurement: a method's step cost relative to standard training of the
/// same architecture on the same batch.
#[derive(Debug, Clone)]
pub struct RelativeCost {
    pub label: String,
    pub seconds_per_step: f64,
    /// seconds_per_step / standard training's: the cost of one epoch relative to a standard
    /// epoch (the same batches, so the same number of steps).
    pub relative: f64,
    pub paper_ratio: Option<f64>,
}

/// Standard training, Gaussian augmentation, each method of `settings`, and CRT transfer from a
/// `teacher` architecture onto `arch`, each timed over `steps` steps after one warm-up step.
pub fn table1_costs(
    arch: Arch,
    teacher: Arch,
    dataset: Dataset,
    batch: usize,
    steps: usize,
    settings: &[ReferenceSetting],
    device: &Device,
) -> anyhow::Result<Vec<RelativeCost>> {
    let model = Model::new(arch, dataset, device, 0)?;
    let teacher_model = Model::new(teacher, dataset, device, 1)?;
    let (x, y) = random_batch(dataset, batch, device)?;
    let sigma = settings.iter().find_map(|s| s.method.sigma()).unwrap_or(0.25);
    let mut rows: Vec<(String, f64, Option<f64>)> = Vec::new();
    let plain = [Method::Standard, Method::Gaussian { sigma }];
    for method in plain.iter().chain(settings.iter().map(|s| &s.method)) {
        let step = |rng: &mut StdRng| training_loss(method, &model, &x, &y, usize::MAX / 2, rng);
        let paper = settings.iter().find(|s| &s.method == method).and_then(|s| s.paper_ratio);
        rows.push((method.name().to_string(), time_steps(steps, step)?, paper));
    }
    let crt = TransferLoss::default();
    let step = |rng: &mut StdRng| transfer_loss(&crt, &model, &teacher_model, &x, &y, sigma, rng);
    rows.push((format!("crt (teacher {})", teacher.as_str()), time_steps(steps, step)?, None));
    let standard = rows[0].1;
    Ok(rows
        .into_iter()
        .map(|(label, s, paper_ratio)| RelativeCost { label, seconds_per_step: s, relative: s / standard, paper_ratio })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_settings_pass_validation_and_differ_from_the_defaults_where_documented() {
        let settings = reference_settings(0.25);
        for s in &settings {
            s.method.validate("method").unwrap();
            assert_eq!(s.method.sigma(), Some(0.25));
        }
        let smoothadv = &settings[0].method;
        assert!(matches!(smoothadv, Method::SmoothAdv { m: 8, steps: 10, .. }), "{smoothadv:?}");
        assert_ne!(smoothadv, &Method::with_defaults("smoothadv", 0.25).unwrap());
    }
}
