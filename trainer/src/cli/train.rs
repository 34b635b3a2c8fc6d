//! `crt-trainer train`: a `TrainConfig` from `--config FILE` and/or flags. Flags given together with
//! `--config` override the file's values. Also the flags `transfer` shares (data, optimizer, output).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::config::{
    Arch, ConfigError, DataConfig, Dataset, Method, OptimConfig, Optimizer, RunConfig, Schedule, TrainConfig,
};

/// `--optimizer`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adamw,
}

impl OptimizerArg {
    fn optimizer(self) -> Optimizer {
        match self {
            OptimizerArg::Sgd => Optimizer::Sgd,
            OptimizerArg::Adamw => Optimizer::adamw(),
        }
    }
}

#[derive(Args, Debug, Default)]
pub struct TrainArgs {
    /// A TrainConfig as JSON (or a RunConfig with "kind": "train"); flags given as well override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// mnist, fashion-mnist or cifar10.
    #[arg(long)]
    pub dataset: Option<Dataset>,
    /// linear, mlp, lenet, resnet20, resnet56 or resnet110.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// standard, gaussian, smoothadv, macer, consistency or smoothmix (default: gaussian when --sigma
    /// is given, else standard).
    #[arg(long)]
    pub method: Option<String>,
    /// Training noise level (pixel space [0, 1]).
    #[arg(long)]
    pub sigma: Option<f64>,
    #[command(flatten)]
    pub params: MethodArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Method parameters; each applies only to the methods that have it.
#[derive(Args, Debug, Default)]
pub struct MethodArgs {
    /// Noise draws per image (smoothadv, consistency, smoothmix).
    #[arg(long)]
    pub m: Option<usize>,
    /// Attack steps (smoothadv, smoothmix).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Attack radius (smoothadv).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Noise draws per image (macer).
    #[arg(long)]
    pub k: Option<usize>,
    /// Regularization weight (macer, consistency).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Inverse temperature (macer).
    #[arg(long)]
    pub beta: Option<f64>,
    /// Hinge threshold (macer; --gamma is the learning-rate decay).
    #[arg(long)]
    pub gamma_macer: Option<f64>,
    /// Entropy / mix weight (consistency, smoothmix).
    #[arg(long)]
    pub eta: Option<f64>,
    /// Attack step size (smoothmix).
    #[arg(long)]
    pub step_size: Option<f64>,
    /// Epochs before the attack is at full strength (smoothadv, smoothmix).
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Epochs of plain Gaussian training before the robustness term (macer).
    #[arg(long)]
    pub deferred_epochs: Option<usize>,
}

/// Data, optimizer and output flags shared by `train` and `transfer`.
#[derive(Args, Debug, Default)]
pub struct CommonArgs {
    /// Data directory (datasets are fetched into it on first use) [default: data].
    #[arg(long, env = "CRT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Train on the first N training images only.
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    pub test_subset: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate [default: 0.01 for the MNIST family, 0.1 for CIFAR-10].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Update rule: sgd (with --momentum) or adamw (PyTorch's betas 0.9, 0.999 and eps 1e-8;
    /// weight decay decoupled) [default: sgd].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// SGD's momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Multiply the learning rate by --gamma every N epochs.
    #[arg(long, conflicts_with = "milestones")]
    pub lr_step: Option<usize>,
    /// Multiply the learning rate by --gamma at each of these epochs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<usize>>,
    /// Learning-rate decay factor of the schedule [default: 0.1].
    #[arg(long)]
    pub gamma: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory [default: out].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from OUT/checkpoint.safetensors if it exists.
    #[arg(long)]
    pub resume: bool,
}

impl TrainArgs {
    /// The validated configuration these flags (and file) describe.
    pub fn into_run_config(self) -> anyhow::Result<RunConfig> {
        let mut cfg = match &self.config {
            Some(path) => read_train_config(path)?,
            None => self.config_from_flags()?,
        };
        if self.config.is_some() {
            if let Some(d) = self.dataset {
                cfg.data.dataset = d;
            }
            if let Some(a) = self.arch {
                cfg.arch = a;
            }
            if let Some(name) = &self.method {
                cfg.method = method_named(name, self.sigma.or(cfg.method.sigma()))?;
            }
        }
        if let Some(sigma) = self.sigma {
            cfg.method = override_param(&cfg.method, "--sigma", "sigma", sigma.into())?;
        }
        cfg.method = self.params.apply(cfg.method)?;
        self.common.apply(&mut cfg.data, &mut cfg.optim, &mut cfg.seed, &mut cfg.out_dir, &mut cfg.resume)?;
        cfg.validate().map_err(flag_error)?;
        Ok(RunConfig::Train(cfg))
    }

    fn config_from_flags(&self) -> anyhow::Result<TrainConfig> {
        let dataset = self.dataset.ok_or_else(|| anyhow!("--dataset is required (or give --config FILE)"))?;
        let arch = self.arch.ok_or_else(|| anyhow!("--arch is required (or give --config FILE)"))?;
        let name = self.method.as_deref().unwrap_or(if self.sigma.is_some() { "gaussian" } else { "standard" });
        Ok(TrainConfig {
            data: DataConfig { dataset, data_dir: PathBuf::from("data"), train_subset: None, test_subset: None },
            arch,
            method: method_named(name, self.sigma)?,
            optim: OptimConfig::default(),
            seed: 0,
            out_dir: PathBuf::from("out"),
            resume: false,
        })
    }
}

/// A TrainConfig file, bare or as a RunConfig of kind train.
fn read_train_config(path: &Path) -> anyhow::Result<TrainConfig> {
    let value: Value = super::read_config(path)?;
    match value.get("kind").and_then(Value::as_str) {
        None => super::read_config(path),
        Some("train") => match super::read_config::<RunConfig>(path)? {
            RunConfig::Train(c) => Ok(c),
            _ => unreachable!("kind train parses as RunConfig::Train"),
        },
        Some(other) => {
            bail!("--config {}: kind is '{other}', expected 'train' (run it with `crt-trainer run`)", path.display())
        }
    }
}

/// The method `name` with the references' defaults at noise level `sigma`.
fn method_named(name: &str, sigma: Option<f64>) -> anyhow::Result<Method> {
    if name == "standard" {
        return Method::with_defaults(name, 0.0).map_err(flag_error);
    }
    let Some(sigma) = sigma else {
        Method::with_defaults(name, 0.25).map_err(flag_error)?; // an unknown name is the first error
        bail!("--sigma is required for method {name}");
    };
    Method::with_defaults(name, sigma).map_err(flag_error)
}

impl MethodArgs {
    fn apply(&self, method: Method) -> anyhow::Result<Method> {
        let overrides: [(&str, &str, Option<Value>); 11] = [
            ("--m", "m", self.m.map(Value::from)),
            ("--steps", "steps", self.steps.map(Value::from)),
            ("--epsilon", "epsilon", self.epsilon.map(Value::from)),
            ("--k", "k", self.k.map(Value::from)),
            ("--lambda", "lambda", self.lambda.map(Value::from)),
            ("--beta", "beta", self.beta.map(Value::from)),
            ("--gamma-macer", "gamma", self.gamma_macer.map(Value::from)),
            ("--eta", "eta", self.eta.map(Value::from)),
            ("--step-size", "step_size", self.step_size.map(Value::from)),
            ("--warmup-epochs", "warmup_epochs", self.warmup_epochs.map(Value::from)),
            ("--deferred-epochs", "deferred_epochs", self.deferred_epochs.map(Value::from)),
        ];
        overrides.into_iter().try_fold(method, |method, (flag, field, value)| match value {
            Some(v) => override_param(&method, flag, field, v),
            None => Ok(method),
        })
    }
}

/// Sets one parameter of the method; a parameter the method does not have is an error naming the
/// flag and the parameters it does have.
fn override_param(method: &Method, flag: &str, field: &str, value: Value) -> anyhow::Result<Method> {
    let mut json = serde_json::to_value(method)?;
    let params = json.as_object_mut().expect("a method serializes as an object");
    if !params.contains_key(field) {
        let has: Vec<&str> = params.keys().map(String::as_str).filter(|k| *k != "name").collect();
        let has = if has.is_empty() { "none".to_string() } else { has.join(", ") };
        bail!("{flag}: method {} has no parameter '{field}' (its parameters: {has})", method.name());
    }
    params.insert(field.to_string(), value);
    Ok(serde_json::from_value(json)?)
}

impl CommonArgs {
    /// Applies the flags that were given on top of the configuration's values.
    pub fn apply(
        &self,
        data: &mut DataConfig,
        optim: &mut OptimConfig,
        seed: &mut u64,
        out_dir: &mut PathBuf,
        resume: &mut bool,
    ) -> anyhow::Result<()> {
        set(&mut data.data_dir, self.data_dir.clone());
        if self.train_subset.is_some() {
            data.train_subset = self.train_subset;
        }
        if self.test_subset.is_some() {
            data.test_subset = self.test_subset;
        }
        set(&mut optim.epochs, self.epochs);
        set(&mut optim.batch_size, self.batch_size);
        if self.lr.is_some() {
            optim.lr = self.lr;
        }
        if let Some(o) = self.optimizer {
            optim.optimizer = o.optimizer();
        }
        set(&mut optim.momentum, self.momentum);
        set(&mut optim.weight_decay, self.weight_decay);
        optim.schedule = self.schedule(&optim.schedule)?;
        set(seed, self.seed);
        set(out_dir, self.out.clone());
        *resume |= self.resume;
        Ok(())
    }

    fn schedule(&self, current: &Schedule) -> anyhow::Result<Schedule> {
        let current_gamma = match current {
            Schedule::Step { gamma, .. } | Schedule::MultiStep { gamma, .. } => *gamma,
            Schedule::Constant => 0.1,
        };
        let gamma = self.gamma.unwrap_or(current_gamma);
        Ok(match (self.lr_step, &self.milestones, current) {
            (Some(every_epochs), _, _) => Schedule::Step { every_epochs, gamma },
            (None, Some(milestones), _) => Schedule::MultiStep { milestones: milestones.clone(), gamma },
            (None, None, Schedule::Constant) if self.gamma.is_some() => {
                bail!("--gamma: the schedule is constant; give --lr-step or --milestones as well")
            }
            (None, None, Schedule::Step { every_epochs, .. }) => Schedule::Step { every_epochs: *every_epochs, gamma },
            (None, None, Schedule::MultiStep { milestones, .. }) => {
                Schedule::MultiStep { milestones: milestones.clone(), gamma }
            }
            (None, None, Schedule::Constant) => Schedule::Constant,
        })
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// A validation error phrased for the command line: the flag first, then the config field.
pub fn flag_error(e: ConfigError) -> anyhow::Error {
    match flag_for(&e.field) {
        Some(flag) => anyhow!("{flag}: {} (config field {})", e.message, e.field),
        None => anyhow!("{}: {}", e.field, e.message),
    }
}

fn flag_for(field: &str) -> Option<&'static str> {
    Some(match field {
        "method.name" => "--method",
        "method.sigma" | "sigma" => "--sigma",
        "method.m" => "--m",
        "method.steps" => "--steps",
        "method.epsilon" => "--epsilon",
        "method.k" => "--k",
        "method.lambda" => "--lambda",
        "method.beta" => "--beta",
        "method.gamma" => "--gamma-macer",
        "method.eta" => "--eta",
        "method.step_size" => "--step-size",
        "optim.epochs" => "--epochs",
        "optim.batch_size" => "--batch-size",
        "optim.lr" => "--lr",
        "optim.momentum" => "--momentum",
        "optim.optimizer.beta1" | "optim.optimizer.beta2" | "optim.optimizer.eps" => "--optimizer",
        "optim.weight_decay" => "--weight-decay",
        "optim.schedule.every_epochs" => "--lr-step",
        "optim.schedule.gamma" => "--gamma",
        "data.train_subset" => "--train-subset",
        "data.test_subset" => "--test-subset",
        "loss.logit_weight" => "--logit-weight",
        "loss.temperature" => "--temperature",
        "loss.ce_weight" => "--ce-weight",
        _ => return None,
    })
}
