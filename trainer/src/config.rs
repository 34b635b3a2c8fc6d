//! The run configuration: one typed value from the launch form (or `--config run.json`, or CLI flags)
//! to the trainer and back into the server's run record. This module is the only definition of it.
//!
//! Parameter names are kept apart on purpose: the certification significance is `alpha`, the CRT loss
//! weight is `logit_weight`, SmoothMix's attack step size is `step_size`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a run does; the `kind` tag is also the server's run kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunConfig {
    Train(TrainConfig),
    Transfer(TransferConfig),
    Certify(CertifyConfig),
    Predict(PredictConfig),
}

impl RunConfig {
    pub fn kind(&self) -> RunKind {
        match self {
            RunConfig::Train(_) => RunKind::Train,
            RunConfig::Transfer(_) => RunKind::Transfer,
            RunConfig::Certify(_) => RunKind::Certify,
            RunConfig::Predict(_) => RunKind::Predict,
        }
    }

    /// Checks every value a user can get wrong; the error names the field and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            RunConfig::Train(c) => c.validate(),
            RunConfig::Transfer(c) => c.validate(),
            RunConfig::Certify(c) => validate_smoothing(&c.model, &c.smoothing),
            RunConfig::Predict(c) => validate_smoothing(&c.model, &c.smoothing),
        }
    }

    /// Where the run writes its outputs.
    pub fn out_dir(&self) -> &PathBuf {
        match self {
            RunConfig::Train(c) => &c.out_dir,
            RunConfig::Transfer(c) => &c.out_dir,
            RunConfig::Certify(c) => &c.out_dir,
            RunConfig::Predict(c) => &c.out_dir,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Train,
    Transfer,
    Certify,
    Predict,
    /// Not a trainer run: a client logging through the server's MLflow-compatible API. No
    /// config, never launched; the trainer never sees this kind.
    External,
}

impl RunKind {
    pub const ALL: [RunKind; 5] =
        [RunKind::Train, RunKind::Transfer, RunKind::Certify, RunKind::Predict, RunKind::External];
    /// The kinds a trainer runs (what `POST /api/v1/runs` accepts).
    pub const TRAINER: [RunKind; 4] = [RunKind::Train, RunKind::Transfer, RunKind::Certify, RunKind::Predict];
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Train => "train",
            RunKind::Transfer => "transfer",
            RunKind::Certify => "certify",
            RunKind::Predict => "predict",
            RunKind::External => "external",
        }
    }

    /// Whether a run of this kind trains a model: it writes a checkpoint, and it can be the
    /// parent (teacher or model) of a transfer, certify or predict run. The one statement of
    /// this rule; the server exposes it on each run as `makes_model`.
    pub fn makes_model(self) -> bool {
        matches!(self, RunKind::Train | RunKind::Transfer)
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown run kind '{s}'; expected one of {}", names(&RunKind::ALL.map(RunKind::as_str)))
        })
    }
}

/// A validation failure: which field, and what was wrong or what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dataset {
    #[serde(rename = "mnist")]
    Mnist,
    #[serde(rename = "fashion-mnist")]
    FashionMnist,
    #[serde(rename = "cifar10")]
    Cifar10,
}

impl Dataset {
    pub const ALL: [Dataset; 3] = [Dataset::Mnist, Dataset::FashionMnist, Dataset::Cifar10];
    pub fn as_str(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Cifar10 => "cifar10",
        }
    }
    /// (channels, height, width)
    pub fn image_shape(self) -> (usize, usize, usize) {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => (1, 28, 28),
            Dataset::Cifar10 => (3, 32, 32),
        }
    }
    pub fn classes(self) -> usize {
        10
    }
    /// Values in one input image (C x H x W).
    pub fn input_len(self) -> usize {
        let (c, h, w) = self.image_shape();
        c * h * w
    }
    /// Images in the training split (the largest `data.train_subset`).
    pub fn train_len(self) -> usize {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => 60_000,
            Dataset::Cifar10 => 50_000,
        }
    }
    /// Images in the test split (the largest `data.test_subset` and `smoothing.max`).
    pub fn test_len(self) -> usize {
        TEST_IMAGES
    }
    /// The reference learning rate: 0.01 for the MNIST family, 0.1 for CIFAR-10.
    pub fn default_lr(self) -> f64 {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => 0.01,
            Dataset::Cifar10 => 0.1,
        }
    }
}

impl std::str::FromStr for Dataset {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dataset::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| {
            ConfigError::new(
                "dataset",
                format!("unknown dataset '{s}'; expected one of {}", names(&Dataset::ALL.map(Dataset::as_str))),
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Linear,
    Mlp,
    Lenet,
    Resnet20,
    Resnet56,
    Resnet110,
    Vit,
}

impl Arch {
    pub const ALL: [Arch; 7] =
        [Arch::Linear, Arch::Mlp, Arch::Lenet, Arch::Resnet20, Arch::Resnet56, Arch::Resnet110, Arch::Vit];
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Linear => "linear",
            Arch::Mlp => "mlp",
            Arch::Lenet => "lenet",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet56 => "resnet56",
            Arch::Resnet110 => "resnet110",
            Arch::Vit => "vit",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            ConfigError::new(
                "arch",
                format!("unknown arch '{s}'; expected one of {}", names(&Arch::ALL.map(Arch::as_str))),
            )
        })
    }
}

impl Arch {
    /// Bytes of memory per input value (C x H x W) that one image takes in a certification forward
    /// pass of this architecture: the activations the pass keeps, plus the noisy input buffers.
    /// Measured on the CPU (peak RSS growth per image at batch 64 to 1024, `forward_t(x, false)`),
    /// plus about 30 % margin. A ResNet's first stage has 16 channels whatever the input has, so
    /// its factor per input value is about 3x larger on the one-channel MNIST family; the ViT's
    /// tokens are 64 wide whatever the input has (49 of them on 28x28, 64 on 32x32), likewise.
    pub fn activation_factor(self, dataset: Dataset) -> u64 {
        let mnist_family = matches!(dataset, Dataset::Mnist | Dataset::FashionMnist);
        match (self, mnist_family) {
            (Arch::Linear, _) => 24,
            (Arch::Mlp, true) => 40,
            (Arch::Mlp, false) => 28,
            (Arch::Lenet, _) => 64,
            (Arch::Resnet20, true) => 1_536,
            (Arch::Resnet20, false) => 544,
            (Arch::Resnet56, true) => 4_160,
            (Arch::Resnet56, false) => 1_408,
            (Arch::Resnet110, true) => 8_064,
            (Arch::Resnet110, false) => 2_688,
            (Arch::Vit, true) => 1_280,
            (Arch::Vit, false) => 448,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds: every size a config chooses has an upper bound, checked by `validate` here (so the
// server and the trainer check the same ones) and listed in docs/api.md, "Limits".
// ---------------------------------------------------------------------------------------------

/// The most training epochs (`optim.epochs`, and every epoch count: schedule steps and milestones,
/// warm-up and deferred epochs). The references train 90 to 200.
pub const MAX_EPOCHS: usize = 1_000;
/// The largest training batch (`optim.batch_size`). The references use 64 to 400.
pub const MAX_BATCH_SIZE: usize = 4_096;
/// The most noise draws per image in a training step (`method.m`, `method.k`).
pub const MAX_NOISE_DRAWS: usize = 64;
/// The most attack steps per training step (`method.steps`).
pub const MAX_ATTACK_STEPS: usize = 100;
/// The most learning-rate milestones (`optim.schedule.milestones`).
pub const MAX_MILESTONES: usize = 100;
/// The largest base learning rate (`optim.lr`, and the lr of a resume); far beyond any useful one
/// (0.1 is CIFAR-10's reference), low enough to be a number every store keeps exactly.
pub const MAX_LR: f64 = 1_000.0;
/// Images in the test split of every dataset: the largest `smoothing.skip` and `smoothing.max`.
pub const TEST_IMAGES: usize = 10_000;
/// The memory a certification batch may take (`smoothing.batch` x input values x the
/// architecture's [`Arch::activation_factor`]): 8 GiB, so that the default batch (1000) fits the
/// largest model (ResNet-110) on every dataset, while a LeNet on MNIST may take ~170,000.
pub const MAX_BATCH_BYTES: u64 = 8 << 30;
/// Noisy copies are drawn in groups of this many: a certification batch is rounded up to it.
pub const CERT_BATCH_GRANULE: usize = 16;

/// Bytes a certification batch of `batch` noisy copies takes with `arch` on `dataset` (the batch
/// rounded up to [`CERT_BATCH_GRANULE`], as the sampler does).
pub fn cert_batch_bytes(batch: usize, arch: Arch, dataset: Dataset) -> u64 {
    let rounded = batch.saturating_add(CERT_BATCH_GRANULE - 1) / CERT_BATCH_GRANULE * CERT_BATCH_GRANULE;
    (rounded as u64).saturating_mul(dataset.input_len() as u64).saturating_mul(arch.activation_factor(dataset))
}

/// The largest `smoothing.batch` whose memory is within [`MAX_BATCH_BYTES`] (a multiple of 16).
pub fn max_cert_batch(arch: Arch, dataset: Dataset) -> usize {
    let per_copy = dataset.input_len() as u64 * arch.activation_factor(dataset);
    let max = (MAX_BATCH_BYTES / per_copy) as usize;
    max / CERT_BATCH_GRANULE * CERT_BATCH_GRANULE
}

/// The largest `smoothing.batch` of any architecture and dataset: the bound where the model is
/// not known yet (a model directory is read only when the run starts; the trainer then checks
/// [`max_cert_batch`] of the model it loaded).
pub fn max_cert_batch_any() -> usize {
    Arch::ALL.iter().flat_map(|a| Dataset::ALL.map(|d| max_cert_batch(*a, d))).max().unwrap_or(0)
}

/// `value <= max`, else an error naming the bound; `why` (may be empty) follows it.
fn check_at_most(field: &str, value: usize, max: usize, why: &str) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::new(field, format!("must be at most {max} (got {value}){why}")));
    }
    Ok(())
}

fn names(list: &[&str]) -> String {
    list.join(", ")
}

/// Where the data comes from and how much of it is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: Dataset,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Use only the first N training images (quick runs, tests).
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Use only the first N test images for the per-epoch evaluation.
    #[serde(default)]
    pub test_subset: Option<usize>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// The training method: each variant carries its own parameters, with the references' defaults.
/// `sigma` is the Gaussian noise level in [0, 1] pixel space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Method {
    /// Plain cross-entropy on clean inputs.
    Standard,
    /// Cross-entropy on x + N(0, sigma^2 I), one draw per image per step (Cohen et al. 2019).
    Gaussian { sigma: f64 },
    /// PGD on the smoothed soft classifier (Salman et al. 2019).
    #[serde(rename = "smoothadv")]
    SmoothAdv {
        sigma: f64,
        #[serde(default = "d_m4")]
        m: usize,
        #[serde(default = "d_steps2")]
        steps: usize,
        #[serde(default = "d_eps")]
        epsilon: f64,
        #[serde(default = "d_warmup10")]
        warmup_epochs: usize,
    },
    /// MACER (Zhai et al. 2020).
    Macer {
        sigma: f64,
        #[serde(default = "d_k16")]
        k: usize,
        #[serde(default = "d_lambda12")]
        lambda: f64,
        #[serde(default = "d_beta16")]
        beta: f64,
        #[serde(default = "d_gamma8")]
        gamma: f64,
        #[serde(default)]
        deferred_epochs: usize,
    },
    /// Consistency regularization (Jeong & Shin 2020).
    Consistency {
        sigma: f64,
        #[serde(default = "d_m2")]
        m: usize,
        #[serde(default = "d_lambda10")]
        lambda: f64,
        #[serde(default = "d_eta05")]
        eta: f64,
    },
    /// SmoothMix (Jeong et al. 2021).
    #[serde(rename = "smoothmix")]
    SmoothMix {
        sigma: f64,
        #[serde(default = "d_m2")]
        m: usize,
        #[serde(default = "d_steps2")]
        steps: usize,
        #[serde(default = "d_step_size")]
        step_size: f64,
        #[serde(default = "d_eta5")]
        eta: f64,
        #[serde(default = "d_warmup10")]
        warmup_epochs: usize,
    },
}

fn d_m4() -> usize {
    4
}
fn d_m2() -> usize {
    2
}
fn d_k16() -> usize {
    16
}
fn d_steps2() -> usize {
    2
}
fn d_eps() -> f64 {
    0.5
}
fn d_warmup10() -> usize {
    10
}
fn d_lambda12() -> f64 {
    12.0
}
fn d_beta16() -> f64 {
    16.0
}
fn d_gamma8() -> f64 {
    8.0
}
fn d_lambda10() -> f64 {
    10.0
}
fn d_eta05() -> f64 {
    0.5
}
fn d_eta5() -> f64 {
    5.0
}
fn d_step_size() -> f64 {
    0.5
}

impl Method {
    pub const NAMES: [&'static str; 6] = ["standard", "gaussian", "smoothadv", "macer", "consistency", "smoothmix"];

    pub fn name(&self) -> &'static str {
        match self {
            Method::Standard => "standard",
            Method::Gaussian { .. } => "gaussian",
            Method::SmoothAdv { .. } => "smoothadv",
            Method::Macer { .. } => "macer",
            Method::Consistency { .. } => "consistency",
            Method::SmoothMix { .. } => "smoothmix",
        }
    }

    /// The training noise level, where the method has one.
    pub fn sigma(&self) -> Option<f64> {
        match self {
            Method::Standard => None,
            Method::Gaussian { sigma }
            | Method::SmoothAdv { sigma, .. }
            | Method::Macer { sigma, .. }
            | Method::Consistency { sigma, .. }
            | Method::SmoothMix { sigma, .. } => Some(*sigma),
        }
    }

    /// The method with the references' defaults for everything but sigma.
    pub fn with_defaults(name: &str, sigma: f64) -> Result<Method, ConfigError> {
        let value = serde_json::json!({ "name": name, "sigma": sigma });
        let value = if name == "standard" { serde_json::json!({ "name": name }) } else { value };
        serde_json::from_value(value).map_err(|_| {
            ConfigError::new(
                "method.name",
                format!("unknown method '{name}'; expected one of {}", names(&Method::NAMES)),
            )
        })
    }

    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if let Some(s) = self.sigma() {
            check_sigma(&format!("{field}.sigma"), s)?;
        }
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(ConfigError::new(format!("{field}.{name}"), "must be at least 1"))
            } else {
                Ok(())
            }
        };
        // Noise draws and attack steps multiply a step's work and memory; epochs bound the warm-ups.
        let draws = |name: &str, v: usize| {
            positive(name, v)?;
            check_at_most(&format!("{field}.{name}"), v, MAX_NOISE_DRAWS, "")
        };
        let steps_ok = |v: usize| {
            positive("steps", v)?;
            check_at_most(&format!("{field}.steps"), v, MAX_ATTACK_STEPS, "")
        };
        let epochs_ok = |name: &str, v: usize| check_at_most(&format!("{field}.{name}"), v, MAX_EPOCHS, "");
        match self {
            Method::SmoothAdv { m, steps, epsilon, warmup_epochs, .. } => {
                draws("m", *m)?;
                steps_ok(*steps)?;
                epochs_ok("warmup_epochs", *warmup_epochs)?;
                check_nonneg(&format!("{field}.epsilon"), *epsilon)
            }
            Method::Macer { k, beta, gamma, lambda, deferred_epochs, .. } => {
                draws("k", *k)?;
                epochs_ok("deferred_epochs", *deferred_epochs)?;
                check_positive(&format!("{field}.beta"), *beta)?;
                check_positive(&format!("{field}.gamma"), *gamma)?;
                check_nonneg(&format!("{field}.lambda"), *lambda)
            }
            Method::Consistency { m, lambda, eta, .. } => {
                draws("m", *m)?;
                check_nonneg(&format!("{field}.lambda"), *lambda)?;
                check_nonneg(&format!("{field}.eta"), *eta)
            }
            Method::SmoothMix { m, steps, step_size, eta, warmup_epochs, .. } => {
                draws("m", *m)?;
                steps_ok(*steps)?;
                epochs_ok("warmup_epochs", *warmup_epochs)?;
                check_positive(&format!("{field}.step_size"), *step_size)?;
                check_nonneg(&format!("{field}.eta"), *eta)
            }
            Method::Standard | Method::Gaussian { .. } => Ok(()),
        }
    }
}

fn check_sigma(field: &str, sigma: f64) -> Result<(), ConfigError> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(ConfigError::new(field, format!("must be a finite number > 0 (got {sigma})")));
    }
    Ok(())
}

fn check_positive(field: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(ConfigError::new(field, format!("must be a finite number > 0 (got {v})")));
    }
    Ok(())
}

/// A finite number >= 0 (a weight decay, a loss weight). Also the study's check of `arch_optim`.
pub fn check_nonneg(field: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(ConfigError::new(field, format!("must be a finite number >= 0 (got {v})")));
    }
    Ok(())
}

/// Learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Constant,
    /// lr * gamma every `every_epochs` epochs.
    Step {
        every_epochs: usize,
        gamma: f64,
    },
    /// lr * gamma at each listed epoch.
    MultiStep {
        milestones: Vec<usize>,
        gamma: f64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Step { every_epochs: 30, gamma: 0.1 }
    }
}

impl Schedule {
    /// The learning-rate factor in force during `epoch` (0-based).
    pub fn factor(&self, epoch: usize) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Step { every_epochs, gamma } => gamma.powi((epoch / (*every_epochs).max(1)) as i32),
            Schedule::MultiStep { milestones, gamma } => {
                gamma.powi(milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
        }
    }
}

/// SGD with momentum and weight decay (PyTorch's form), batches, epochs and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// None: the dataset's reference value (0.01 MNIST family, 0.1 CIFAR-10); filled in by `resolve`.
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default)]
    pub schedule: Schedule,
    /// The update rule; SGD (with `momentum`) unless named. Left out of the JSON when SGD, so
    /// configs written before there was a choice read and compare as they did.
    #[serde(default, skip_serializing_if = "Optimizer::is_sgd")]
    pub optimizer: Optimizer,
}

/// How the weights are updated (`optim.optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// SGD with `optim.momentum` and `optim.weight_decay` in PyTorch's form: the reference codes'
    /// choice for LeNet and ResNets.
    #[default]
    Sgd,
    /// AdamW (Loshchilov & Hutter 2019) in PyTorch's form, with `optim.weight_decay` decoupled:
    /// what Vision Transformers are trained with (with SGD a small ViT barely learns in short runs).
    /// `optim.momentum` does not apply.
    #[serde(rename = "adamw")]
    AdamW {
        #[serde(default = "d_beta1")]
        beta1: f64,
        #[serde(default = "d_beta2")]
        beta2: f64,
        #[serde(default = "d_adam_eps")]
        eps: f64,
    },
}

fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_adam_eps() -> f64 {
    1e-8
}

impl Optimizer {
    pub fn is_sgd(&self) -> bool {
        matches!(self, Optimizer::Sgd)
    }

    /// AdamW with PyTorch's default betas and epsilon.
    pub fn adamw() -> Self {
        Optimizer::AdamW { beta1: d_beta1(), beta2: d_beta2(), eps: d_adam_eps() }
    }

    /// Checks the parameters; errors name `field` (the optimizer's place in the request) and the
    /// parameter, e.g. `optim.optimizer.beta1`.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let Optimizer::AdamW { beta1, beta2, eps } = *self else { return Ok(()) };
        for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(ConfigError::new(format!("{field}.{name}"), format!("must be in [0, 1) (got {beta})")));
            }
        }
        if !(eps.is_finite() && eps > 0.0 && eps <= 1.0) {
            return Err(ConfigError::new(format!("{field}.eps"), format!("must be a number in (0, 1] (got {eps})")));
        }
        Ok(())
    }
}

fn d_epochs() -> usize {
    90
}
fn d_batch() -> usize {
    256
}
fn d_momentum() -> f64 {
    0.9
}
fn d_wd() -> f64 {
    1e-4
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            epochs: d_epochs(),
            batch_size: d_batch(),
            lr: None,
            momentum: d_momentum(),
            weight_decay: d_wd(),
            schedule: Schedule::default(),
            optimizer: Optimizer::Sgd,
        }
    }
}

impl OptimConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.epochs == 0 {
            return Err(ConfigError::new("optim.epochs", "must be at least 1"));
        }
        check_at_most("optim.epochs", self.epochs, MAX_EPOCHS, "")?;
        if self.batch_size == 0 {
            return Err(ConfigError::new("optim.batch_size", "must be at least 1"));
        }
        check_at_most("optim.batch_size", self.batch_size, MAX_BATCH_SIZE, "")?;
        if let Some(lr) = self.lr {
            check_lr("optim.lr", lr)?;
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(ConfigError::new("optim.momentum", format!("must be in [0, 1) (got {})", self.momentum)));
        }
        check_nonneg("optim.weight_decay", self.weight_decay)?;
        self.optimizer.validate("optim.optimizer")?;
        match &self.schedule {
            Schedule::Step { every_epochs: 0, .. } => {
                Err(ConfigError::new("optim.schedule.every_epochs", "must be at least 1"))
            }
            Schedule::Step { every_epochs, gamma } => {
                check_at_most("optim.schedule.every_epochs", *every_epochs, MAX_EPOCHS, "")?;
                check_positive("optim.schedule.gamma", *gamma)
            }
            Schedule::MultiStep { milestones, gamma } => {
                if milestones.len() > MAX_MILESTONES {
                    return Err(ConfigError::new(
                        "optim.schedule.milestones",
                        format!("must list at most {MAX_MILESTONES} epochs (got {})", milestones.len()),
                    ));
                }
                for (i, m) in milestones.iter().enumerate() {
                    check_at_most(&format!("optim.schedule.milestones[{i}]"), *m, MAX_EPOCHS, "")?;
                }
                check_positive("optim.schedule.gamma", *gamma)
            }
            Schedule::Constant => Ok(()),
        }
    }
}

/// A base learning rate: a finite number in (0, [`MAX_LR`]]. Also the check of a resume's new lr.
pub fn check_lr(field: &str, lr: f64) -> Result<(), ConfigError> {
    if !(lr.is_finite() && lr > 0.0 && lr <= MAX_LR) {
        return Err(ConfigError::new(field, format!("must be a finite number > 0 and at most {MAX_LR} (got {lr})")));
    }
    Ok(())
}

fn d_seed() -> u64 {
    0
}
fn d_out_dir() -> PathBuf {
    PathBuf::from("out")
}

/// `crt-trainer train`: a model trained from scratch with one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub arch: Arch,
    pub method: Method,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default = "d_seed")]
    pub seed: u64,
    #[serde(default = "d_out_dir")]
    pub out_dir: PathBuf,
    /// Continue from `out_dir/checkpoint.safetensors` if it exists.
    #[serde(default)]
    pub resume: bool,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.method.validate("method")?;
        self.optim.validate()?;
        validate_subsets(&self.data)
    }

    /// Fills every default that depends on another field (the learning rate on the dataset).
    pub fn resolve(mut self) -> Self {
        self.optim.lr.get_or_insert(self.data.dataset.default_lr());
        self
    }
}

fn validate_subsets(data: &DataConfig) -> Result<(), ConfigError> {
    let ds = data.dataset;
    if let Some(n) = data.train_subset {
        if n == 0 {
            return Err(ConfigError::new("data.train_subset", "must be at least 1 when given"));
        }
        let why = format!(": the {} training split has {} images", ds.as_str(), ds.train_len());
        check_at_most("data.train_subset", n, ds.train_len(), &why)?;
    }
    if let Some(n) = data.test_subset {
        if n == 0 {
            return Err(ConfigError::new("data.test_subset", "must be at least 1 when given"));
        }
        let why = format!(": the {} test split has {} images", ds.as_str(), ds.test_len());
        check_at_most("data.test_subset", n, ds.test_len(), &why)?;
    }
    Ok(())
}

/// How the student learns from the teacher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransferLoss {
    /// CRT: logit_weight * mean_b ||z_s - z_t||_2 + (1 - logit_weight) * CE(z_s, y).
    Crt {
        #[serde(default = "d_one")]
        logit_weight: f64,
    },
    /// Hinton distillation on noisy inputs: T^2 * KL(p_t^T || p_s^T) + ce_weight * CE.
    Kd {
        #[serde(default = "d_temp")]
        temperature: f64,
        #[serde(default)]
        ce_weight: f64,
    },
}

fn d_one() -> f64 {
    1.0
}
fn d_temp() -> f64 {
    4.0
}

impl Default for TransferLoss {
    fn default() -> Self {
        TransferLoss::Crt { logit_weight: 1.0 }
    }
}

/// `crt-trainer transfer`: a student trained from scratch by matching a frozen teacher on noisy inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    pub data: DataConfig,
    /// The teacher's output directory (model.safetensors + model.json of a finished training run).
    pub teacher: PathBuf,
    pub student_arch: Arch,
    #[serde(default)]
    pub loss: TransferLoss,
    /// Noise level; None means the teacher's.
    #[serde(default)]
    pub sigma: Option<f64>,
    /// A sigma different from the teacher's is refused unless this is set.
    #[serde(default)]
    pub allow_sigma_mismatch: bool,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default = "d_seed")]
    pub seed: u64,
    #[serde(default = "d_out_dir")]
    pub out_dir: PathBuf,
    #[serde(default)]
    pub resume: bool,
}

impl TransferConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(s) = self.sigma {
            check_sigma("sigma", s)?;
        }
        match self.loss {
            TransferLoss::Crt { logit_weight } => {
                if !(0.0..=1.0).contains(&logit_weight) {
                    return Err(ConfigError::new(
                        "loss.logit_weight",
                        format!("must be in [0, 1] (got {logit_weight})"),
                    ));
                }
            }
            TransferLoss::Kd { temperature, ce_weight } => {
                check_positive("loss.temperature", temperature)?;
                check_nonneg("loss.ce_weight", ce_weight)?;
            }
        }
        self.optim.validate()?;
        validate_subsets(&self.data)
    }

    pub fn resolve(mut self) -> Self {
        self.optim.lr.get_or_insert(self.data.dataset.default_lr());
        self
    }
}

/// Which model to certify: a trainer output directory, or bare weights trained elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSource {
    /// A directory with model.safetensors and model.json.
    Dir { path: PathBuf },
    /// A safetensors file with PyTorch state_dict names (e.g. exported from PyTorch).
    Weights { path: PathBuf, arch: Arch, dataset: Dataset },
}

/// Monte Carlo parameters of CERTIFY / PREDICT (Cohen et al. 2019).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmoothingConfig {
    /// Noise level; None means the one recorded in model.json (required for bare weights).
    #[serde(default)]
    pub sigma: Option<f64>,
    /// Samples used to pick the top class (CERTIFY only).
    #[serde(default = "d_n0")]
    pub n0: usize,
    /// Samples used to estimate its probability.
    #[serde(default = "d_n")]
    pub n: usize,
    /// Significance: the bound holds with probability at least 1 - alpha.
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Noisy copies per forward pass.
    #[serde(default = "d_cert_batch")]
    pub batch: usize,
    /// Take every `skip`-th test image, from index 0.
    #[serde(default = "d_skip")]
    pub skip: usize,
    /// Stop after this many images.
    #[serde(default)]
    pub max: Option<usize>,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Fixed-N CERTIFY (the default, what papers report), or one of the sequential modes that stop
    /// early (docs/certification.md, "Sequential certification"). Left out of the JSON when fixed.
    #[serde(default, skip_serializing_if = "CertifyMode::is_fixed")]
    pub mode: CertifyMode,
}

/// How many estimation samples CERTIFY draws for an image (`smoothing.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum CertifyMode {
    /// Exactly `n` samples and the largest radius they certify (Cohen et al.'s CERTIFY).
    #[default]
    Fixed,
    /// Decide "certified at `radius`" or "not certifiable at `radius`" as early as an anytime-valid
    /// sequential test allows; `n` is the cap.
    TargetRadius { radius: f64 },
    /// The largest radius, with sample sizes growing until more samples are not expected to raise it
    /// by more than `tolerance` (L2); `n` is the cap.
    Adaptive { tolerance: f64 },
}

/// The largest target radius accepted (in input units; far beyond anything certifiable).
pub const MAX_TARGET_RADIUS: f64 = 100.0;
/// The largest adaptive tolerance accepted (L2 units).
pub const MAX_TOLERANCE: f64 = 10.0;
/// The largest estimation sample count accepted.
pub const MAX_SAMPLES: usize = 100_000_000;

impl CertifyMode {
    pub fn is_fixed(&self) -> bool {
        matches!(self, CertifyMode::Fixed)
    }

    pub fn name(&self) -> &'static str {
        match self {
            CertifyMode::Fixed => "fixed",
            CertifyMode::TargetRadius { .. } => "target_radius",
            CertifyMode::Adaptive { .. } => "adaptive",
        }
    }

    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        match *self {
            CertifyMode::Fixed => Ok(()),
            CertifyMode::TargetRadius { radius } => {
                if !(radius > 0.0 && radius <= MAX_TARGET_RADIUS) {
                    return Err(ConfigError::new(
                        format!("{field}.radius"),
                        format!("must be in (0, {MAX_TARGET_RADIUS}] (got {radius})"),
                    ));
                }
                Ok(())
            }
            CertifyMode::Adaptive { tolerance } => {
                if !(tolerance > 0.0 && tolerance <= MAX_TOLERANCE) {
                    return Err(ConfigError::new(
                        format!("{field}.tolerance"),
                        format!("must be in (0, {MAX_TOLERANCE}] (got {tolerance})"),
                    ));
                }
                Ok(())
            }
        }
    }
}

fn d_n0() -> usize {
    100
}
fn d_n() -> usize {
    100_000
}
fn d_alpha() -> f64 {
    0.001
}
fn d_cert_batch() -> usize {
    1000
}
fn d_skip() -> usize {
    1
}

impl Default for SmoothingConfig {
    fn default() -> Self {
        SmoothingConfig {
            sigma: None,
            n0: d_n0(),
            n: d_n(),
            alpha: d_alpha(),
            batch: d_cert_batch(),
            skip: d_skip(),
            max: None,
            seed: 0,
            mode: CertifyMode::Fixed,
        }
    }
}

impl SmoothingConfig {
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if let Some(s) = self.sigma {
            check_sigma(&format!("{field}.sigma"), s)?;
        }
        for (name, v) in [("n0", self.n0), ("n", self.n), ("batch", self.batch), ("skip", self.skip)] {
            if v == 0 {
                return Err(ConfigError::new(format!("{field}.{name}"), "must be at least 1"));
            }
        }
        if self.max == Some(0) {
            return Err(ConfigError::new(format!("{field}.max"), "must be at least 1 when given"));
        }
        if self.n > MAX_SAMPLES || self.n0 > MAX_SAMPLES {
            let name = if self.n > MAX_SAMPLES { "n" } else { "n0" };
            return Err(ConfigError::new(format!("{field}.{name}"), format!("must be at most {MAX_SAMPLES}")));
        }
        let test = format!(": every test split has {TEST_IMAGES} images");
        check_at_most(&format!("{field}.skip"), self.skip, TEST_IMAGES, &test)?;
        if let Some(max) = self.max {
            check_at_most(&format!("{field}.max"), max, TEST_IMAGES, &test)?;
        }
        // The model may not be known yet: the loosest memory bound here, the model's own in
        // `check_batch_memory` once it is.
        let any = max_cert_batch_any();
        check_at_most(
            &format!("{field}.batch"),
            self.batch,
            any,
            &format!(
                ": no model takes a larger batch within the {} GiB certification memory limit",
                MAX_BATCH_BYTES >> 30
            ),
        )?;
        self.mode.validate(&format!("{field}.mode"))?;
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(ConfigError::new(
                format!("{field}.alpha"),
                format!("must be in (0, 0.5) (got {})", self.alpha),
            ));
        }
        Ok(())
    }
}

impl SmoothingConfig {
    /// The certification batch against the memory limit for the model that runs it: `batch` x the
    /// dataset's input values x the architecture's activation factor must be within
    /// [`MAX_BATCH_BYTES`].
    pub fn check_batch_memory(&self, field: &str, arch: Arch, dataset: Dataset) -> Result<(), ConfigError> {
        let max = max_cert_batch(arch, dataset);
        if self.batch > max {
            let bytes = cert_batch_bytes(self.batch, arch, dataset);
            return Err(ConfigError::new(
                format!("{field}.batch"),
                format!(
                    "must be at most {max} for {} on {} (got {}): a batch of noisy copies needs batch x {} input values x {} bytes ({}'s activation factor) = {:.1} GiB, over the {} GiB limit of a certification batch",
                    arch.as_str(),
                    dataset.as_str(),
                    self.batch,
                    dataset.input_len(),
                    arch.activation_factor(dataset),
                    arch.as_str(),
                    bytes as f64 / (1u64 << 30) as f64,
                    MAX_BATCH_BYTES >> 30,
                ),
            ));
        }
        Ok(())
    }
}

impl ModelSource {
    /// The architecture and dataset, where the config names them (bare weights).
    pub fn arch_dataset(&self) -> Option<(Arch, Dataset)> {
        match self {
            ModelSource::Weights { arch, dataset, .. } => Some((*arch, *dataset)),
            ModelSource::Dir { .. } => None,
        }
    }
}

/// A certification's or prediction's checks: its smoothing parameters, and the batch memory when
/// the config names the model's architecture.
fn validate_smoothing(model: &ModelSource, smoothing: &SmoothingConfig) -> Result<(), ConfigError> {
    smoothing.validate("smoothing")?;
    if let Some((arch, dataset)) = model.arch_dataset() {
        smoothing.check_batch_memory("smoothing", arch, dataset)?;
    }
    Ok(())
}

/// `crt-trainer certify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyConfig {
    pub model: ModelSource,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub smoothing: SmoothingConfig,
    #[serde(default = "d_out_dir")]
    pub out_dir: PathBuf,
    /// Continue a run cut short: keep the rows already in the table of `out_dir` and process only
    /// the images not in it yet.
    #[serde(default)]
    pub resume: bool,
}

/// `crt-trainer predict` (PREDICT; `n0` is unused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictConfig {
    pub model: ModelSource,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub smoothing: SmoothingConfig,
    #[serde(default = "d_out_dir")]
    pub out_dir: PathBuf,
    /// Continue a run cut short: keep the rows already in the table of `out_dir` and process only
    /// the images not in it yet.
    #[serde(default)]
    pub resume: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_config_round_trips_with_defaults() {
        let json = r#"{"kind":"train","data":{"dataset":"mnist"},"arch":"lenet",
                       "method":{"name":"macer","sigma":0.25}}"#;
        let cfg: RunConfig = serde_json::from_str(json).unwrap();
        let RunConfig::Train(t) = &cfg else { panic!("not train") };
        assert_eq!(
            t.method,
            Method::Macer { sigma: 0.25, k: 16, lambda: 12.0, beta: 16.0, gamma: 8.0, deferred_epochs: 0 }
        );
        assert_eq!(t.optim.batch_size, 256);
        assert_eq!(t.clone().resolve().optim.lr, Some(0.01));
        let back: RunConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_values_are_rejected() {
        let bad_field =
            r#"{"kind":"train","data":{"dataset":"mnist"},"arch":"lenet","method":{"name":"standard"},"bogus":1}"#;
        assert!(serde_json::from_str::<RunConfig>(bad_field).is_err());
        let bad_arch = r#"{"kind":"train","data":{"dataset":"mnist"},"arch":"vgg","method":{"name":"standard"}}"#;
        let err = serde_json::from_str::<RunConfig>(bad_arch).unwrap_err().to_string();
        assert!(err.contains("vgg"), "{err}");
    }

    #[test]
    fn sigma_must_be_positive() {
        let cfg = RunConfig::Train(TrainConfig {
            data: DataConfig { dataset: Dataset::Mnist, data_dir: "d".into(), train_subset: None, test_subset: None },
            arch: Arch::Lenet,
            method: Method::Gaussian { sigma: 0.0 },
            optim: OptimConfig::default(),
            seed: 0,
            out_dir: "o".into(),
            resume: false,
        });
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field, "method.sigma");
    }

    #[test]
    fn optimizer_defaults_to_sgd_and_adamw_is_checked() {
        let sgd = serde_json::to_value(OptimConfig::default()).unwrap();
        assert!(sgd.get("optimizer").is_none(), "SGD configs serialize as before there was a choice: {sgd}");
        let adam: OptimConfig = serde_json::from_str(r#"{"optimizer": {"name": "adamw"}, "lr": 0.001}"#).unwrap();
        assert_eq!(adam.optimizer, Optimizer::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
        adam.validate().unwrap();
        let back: OptimConfig = serde_json::from_value(serde_json::to_value(&adam).unwrap()).unwrap();
        assert_eq!(back, adam);
        for (json, field) in [
            (r#"{"optimizer": {"name": "adamw", "beta1": 1.0}}"#, "optim.optimizer.beta1"),
            (r#"{"optimizer": {"name": "adamw", "beta2": -0.1}}"#, "optim.optimizer.beta2"),
            (r#"{"optimizer": {"name": "adamw", "eps": 0.0}}"#, "optim.optimizer.eps"),
        ] {
            let cfg: OptimConfig = serde_json::from_str(json).unwrap();
            assert_eq!(cfg.validate().unwrap_err().field, field, "{json}");
        }
        assert!(serde_json::from_str::<OptimConfig>(r#"{"optimizer": {"name": "lamb"}}"#).is_err());
    }

    #[test]
    fn schedule_factors() {
        let s = Schedule::default();
        assert_eq!(s.factor(0), 1.0);
        assert!((s.factor(30) - 0.1).abs() < 1e-12);
        let m = Schedule::MultiStep { milestones: vec![2, 4], gamma: 0.5 };
        assert_eq!([m.factor(1), m.factor(2), m.factor(5)], [1.0, 0.5, 0.25]);
    }

    #[test]
    fn certify_mode_defaults_to_fixed_and_is_checked() {
        let old: SmoothingConfig = serde_json::from_str(r#"{"n": 1000}"#).unwrap();
        assert_eq!(old.mode, CertifyMode::Fixed);
        assert!(!serde_json::to_string(&old).unwrap().contains("mode"), "fixed configs serialize as before");
        let target: SmoothingConfig =
            serde_json::from_str(r#"{"mode": {"name": "target_radius", "radius": 0.5}}"#).unwrap();
        assert_eq!(target.mode, CertifyMode::TargetRadius { radius: 0.5 });
        target.validate("smoothing").unwrap();
        let back: SmoothingConfig = serde_json::from_str(&serde_json::to_string(&target).unwrap()).unwrap();
        assert_eq!(back, target);
        let bad = SmoothingConfig { mode: CertifyMode::TargetRadius { radius: 0.0 }, ..SmoothingConfig::default() };
        assert_eq!(bad.validate("smoothing").unwrap_err().field, "smoothing.mode.radius");
        let bad = SmoothingConfig { mode: CertifyMode::Adaptive { tolerance: 11.0 }, ..SmoothingConfig::default() };
        assert_eq!(bad.validate("smoothing").unwrap_err().field, "smoothing.mode.tolerance");
        let bad = SmoothingConfig { mode: CertifyMode::Adaptive { tolerance: f64::NAN }, ..SmoothingConfig::default() };
        assert!(bad.validate("smoothing").is_err());
        let bad = SmoothingConfig { n: MAX_SAMPLES + 1, ..SmoothingConfig::default() };
        assert_eq!(bad.validate("smoothing").unwrap_err().field, "smoothing.n");
        assert!(serde_json::from_str::<SmoothingConfig>(r#"{"mode": {"name": "target_radius"}}"#).is_err());
        assert!(serde_json::from_str::<SmoothingConfig>(r#"{"mode": {"name": "sequential"}}"#).is_err());
    }

    fn train_cfg() -> TrainConfig {
        TrainConfig {
            data: DataConfig { dataset: Dataset::Mnist, data_dir: "d".into(), train_subset: None, test_subset: None },
            arch: Arch::Lenet,
            method: Method::Gaussian { sigma: 0.25 },
            optim: OptimConfig::default(),
            seed: 0,
            out_dir: "o".into(),
            resume: false,
        }
    }

    /// `edit(cfg, inside)` sets a value just inside the bound (`inside` true) or just outside it.
    fn check_bound(field: &str, edit: impl Fn(&mut TrainConfig, bool)) {
        let mut cfg = train_cfg();
        edit(&mut cfg, true);
        assert_eq!(cfg.validate(), Ok(()), "{field} just inside its bound");
        let mut cfg = train_cfg();
        edit(&mut cfg, false);
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains("at most"), "{err}");
    }

    #[test]
    fn training_sizes_are_bounded() {
        let pick = |inside: bool, max: usize| if inside { max } else { max + 1 };
        check_bound("optim.epochs", |c, i| c.optim.epochs = pick(i, MAX_EPOCHS));
        check_bound("optim.batch_size", |c, i| c.optim.batch_size = pick(i, MAX_BATCH_SIZE));
        check_bound("optim.lr", |c, i| c.optim.lr = Some(if i { MAX_LR } else { MAX_LR * 1.001 }));
        check_bound("optim.schedule.every_epochs", |c, i| {
            c.optim.schedule = Schedule::Step { every_epochs: pick(i, MAX_EPOCHS), gamma: 0.1 }
        });
        check_bound("optim.schedule.milestones", |c, i| {
            c.optim.schedule = Schedule::MultiStep { milestones: vec![1; pick(i, MAX_MILESTONES)], gamma: 0.1 }
        });
        check_bound("optim.schedule.milestones[1]", |c, i| {
            c.optim.schedule = Schedule::MultiStep { milestones: vec![1, pick(i, MAX_EPOCHS)], gamma: 0.1 }
        });
        check_bound("data.train_subset", |c, i| c.data.train_subset = Some(pick(i, 60_000)));
        check_bound("data.test_subset", |c, i| c.data.test_subset = Some(pick(i, 10_000)));
        check_bound("data.train_subset", |c, i| {
            c.data.dataset = Dataset::Cifar10;
            c.data.train_subset = Some(pick(i, 50_000));
        });
        check_bound("method.m", |c, i| {
            c.method = Method::with_defaults("smoothadv", 0.25).unwrap();
            if let Method::SmoothAdv { m, .. } = &mut c.method {
                *m = pick(i, MAX_NOISE_DRAWS);
            }
        });
        check_bound("method.k", |c, i| {
            c.method = Method::with_defaults("macer", 0.25).unwrap();
            if let Method::Macer { k, .. } = &mut c.method {
                *k = pick(i, MAX_NOISE_DRAWS);
            }
        });
        check_bound("method.steps", |c, i| {
            c.method = Method::with_defaults("smoothmix", 0.25).unwrap();
            if let Method::SmoothMix { steps, .. } = &mut c.method {
                *steps = pick(i, MAX_ATTACK_STEPS);
            }
        });
        check_bound("method.warmup_epochs", |c, i| {
            c.method = Method::with_defaults("smoothadv", 0.25).unwrap();
            if let Method::SmoothAdv { warmup_epochs, .. } = &mut c.method {
                *warmup_epochs = pick(i, MAX_EPOCHS);
            }
        });
        // The same bounds hold for a transfer (they share the optimizer and data checks).
        let transfer = TransferConfig {
            data: DataConfig { dataset: Dataset::Mnist, data_dir: "d".into(), train_subset: None, test_subset: None },
            teacher: "t".into(),
            student_arch: Arch::Lenet,
            loss: TransferLoss::default(),
            sigma: None,
            allow_sigma_mismatch: false,
            optim: OptimConfig { epochs: MAX_EPOCHS + 1, ..OptimConfig::default() },
            seed: 0,
            out_dir: "o".into(),
            resume: false,
        };
        assert_eq!(RunConfig::Transfer(transfer).validate().unwrap_err().field, "optim.epochs");
    }

    #[test]
    fn smoothing_sizes_are_bounded() {
        let check = |edit: &dyn Fn(&mut SmoothingConfig, bool), field: &str| {
            let mut s = SmoothingConfig::default();
            edit(&mut s, true);
            assert_eq!(s.validate("smoothing"), Ok(()), "{field} inside");
            let mut s = SmoothingConfig::default();
            edit(&mut s, false);
            assert_eq!(s.validate("smoothing").unwrap_err().field, field);
        };
        check(&|s, i| s.n = if i { MAX_SAMPLES } else { MAX_SAMPLES + 1 }, "smoothing.n");
        check(&|s, i| s.n0 = if i { MAX_SAMPLES } else { MAX_SAMPLES + 1 }, "smoothing.n0");
        check(&|s, i| s.skip = if i { TEST_IMAGES } else { TEST_IMAGES + 1 }, "smoothing.skip");
        check(&|s, i| s.max = Some(if i { TEST_IMAGES } else { TEST_IMAGES + 1 }), "smoothing.max");
        let any = max_cert_batch_any();
        check(&|s, i| s.batch = if i { any } else { any + 1 }, "smoothing.batch");
        // The batch that made a trainer abort (SIGABRT) before these bounds.
        let huge = SmoothingConfig { batch: 1_000_000_000, ..SmoothingConfig::default() };
        assert_eq!(huge.validate("smoothing").unwrap_err().field, "smoothing.batch");
    }

    #[test]
    fn the_certification_batch_is_bounded_by_its_memory() {
        let small = max_cert_batch(Arch::Lenet, Dataset::Mnist);
        let large = max_cert_batch(Arch::Resnet110, Dataset::Cifar10);
        // A LeNet on MNIST may take a much larger batch than a ResNet-110 on CIFAR-10.
        assert!(small > 100 * large, "lenet/mnist {small}, resnet110/cifar10 {large}");
        assert!(large >= 1000, "the default batch (1000) fits every model: {large}");
        for arch in Arch::ALL {
            for ds in Dataset::ALL {
                let max = max_cert_batch(arch, ds);
                assert_eq!(max % CERT_BATCH_GRANULE, 0);
                assert!(cert_batch_bytes(max, arch, ds) <= MAX_BATCH_BYTES, "{arch:?} {ds:?}");
                assert!(max <= max_cert_batch_any());
                let at = |batch| SmoothingConfig { batch, ..SmoothingConfig::default() };
                assert_eq!(at(max).check_batch_memory("smoothing", arch, ds), Ok(()));
                let err = at(max + 1).check_batch_memory("smoothing", arch, ds).unwrap_err();
                assert_eq!(err.field, "smoothing.batch");
                assert!(err.message.contains(&format!("at most {max}")), "{err}");
                assert!(err.message.contains("8 GiB"), "{err}");
            }
        }
        // Bare weights name their architecture, so the config check applies the model's bound.
        let certify = |arch, dataset, batch| {
            RunConfig::Certify(CertifyConfig {
                model: ModelSource::Weights { path: "w".into(), arch, dataset },
                data_dir: "d".into(),
                smoothing: SmoothingConfig { batch, sigma: Some(0.25), ..SmoothingConfig::default() },
                out_dir: "o".into(),
                resume: false,
            })
        };
        let between = large + 16;
        assert_eq!(certify(Arch::Lenet, Dataset::Mnist, between).validate(), Ok(()));
        let err = certify(Arch::Resnet110, Dataset::Cifar10, between).validate().unwrap_err();
        assert_eq!(err.field, "smoothing.batch");
        assert!(err.message.contains("resnet110 on cifar10"), "{err}");
    }

    #[test]
    fn method_defaults_by_name() {
        assert_eq!(Method::with_defaults("gaussian", 0.5).unwrap(), Method::Gaussian { sigma: 0.5 });
        assert_eq!(Method::with_defaults("nope", 0.5).unwrap_err().field, "method.name");
    }
}
