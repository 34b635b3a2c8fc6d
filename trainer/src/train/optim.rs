//! The update rules of `optim.optimizer`, in PyTorch's form, with their state named for checkpoints.
//!
//! SGD with momentum and weight decay (candle_nn::SGD has neither):
//! g <- g + wd * w; buf <- momentum * buf + g (buf = g on the first step); w <- w - lr * buf.
//! AdamW: written here rather than taken from candle_nn, whose moments are private, so a checkpoint
//! could not hold them and a resumed run would not continue exactly.
//! Variables without a gradient are skipped, as PyTorch skips parameters whose `.grad` is None.

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};

use crate::config::{OptimConfig, Optimizer, Schedule};

/// Checkpoint keys of the optimizers' state all start with this.
pub const STATE_PREFIX: &str = "optim.";
const MOMENTUM_PREFIX: &str = "optim.momentum.";
const ADAM_M_PREFIX: &str = "optim.adamw.m.";
const ADAM_V_PREFIX: &str = "optim.adamw.v.";
const ADAM_STEP_KEY: &str = "optim.adamw.step";

/// The optimizer a run's `optim` names.
pub enum Optim {
    Sgd(Sgd),
    AdamW(AdamW),
}

impl Optim {
    pub fn new(cfg: &OptimConfig, vars: Vec<(String, Var)>, lr: f64) -> Self {
        match cfg.optimizer {
            Optimizer::Sgd => Optim::Sgd(Sgd::new(vars, lr, cfg.momentum, cfg.weight_decay)),
            Optimizer::AdamW { beta1, beta2, eps } => {
                Optim::AdamW(AdamW::new(vars, AdamWParams { lr, beta1, beta2, eps, weight_decay: cfg.weight_decay }))
            }
        }
    }

    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optim::Sgd(o) => o.set_lr(lr),
            Optim::AdamW(o) => o.params.lr = lr,
        }
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        match self {
            Optim::Sgd(o) => o.step(grads),
            Optim::AdamW(o) => o.step(grads),
        }
    }

    /// The state a checkpoint must hold to continue exactly, under keys starting with [`STATE_PREFIX`].
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            Optim::Sgd(o) => {
                Ok(o.momentum_buffers().into_iter().map(|(n, b)| (format!("{MOMENTUM_PREFIX}{n}"), b)).collect())
            }
            Optim::AdamW(o) => o.state(),
        }
    }

    /// Restores one entry of [`Optim::state`]; a key this optimizer does not keep is an error (a
    /// checkpoint of another optimizer).
    pub fn restore(&mut self, key: &str, tensor: Tensor) -> Result<()> {
        match self {
            Optim::Sgd(o) => match key.strip_prefix(MOMENTUM_PREFIX) {
                Some(name) => o.set_momentum_buffer(name, tensor),
                None => candle_core::bail!(
                    "the checkpoint holds '{key}', not SGD state: it was made with another optimizer"
                ),
            },
            Optim::AdamW(o) => o.restore(key, tensor),
        }
    }
}

pub struct Sgd {
    vars: Vec<(String, Var)>,
    /// One momentum buffer per variable, created on its first update.
    buffers: Vec<Option<Tensor>>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        let buffers = vec![None; vars.len()];
        Sgd { vars, buffers, lr, momentum, weight_decay }
    }

    pub fn lr(&self) -> f64 {
        self.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// One update of every variable that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for ((_, var), buffer) in self.vars.iter().zip(self.buffers.iter_mut()) {
            let Some(grad) = grads.get(var) else { continue };
            let grad =
                if self.weight_decay != 0.0 { (grad + (var.as_tensor() * self.weight_decay)?)? } else { grad.clone() };
            let buf = match buffer.take() {
                Some(old) if self.momentum != 0.0 => ((old * self.momentum)? + grad)?,
                _ => grad,
            };
            var.set(&(var.as_tensor() - (&buf * self.lr)?)?)?;
            // A buffer is not a graph node: detach so it does not keep old graphs alive.
            *buffer = Some(buf.detach());
        }
        Ok(())
    }

    /// The momentum buffers that exist, by variable name (for checkpoints).
    pub fn momentum_buffers(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .zip(&self.buffers)
            .filter_map(|((name, _), buf)| buf.as_ref().map(|b| (name.clone(), b.clone())))
            .collect()
    }

    /// Restores one momentum buffer; the name must be one of the optimizer's variables.
    pub fn set_momentum_buffer(&mut self, name: &str, buffer: Tensor) -> Result<()> {
        let Some(i) = self.vars.iter().position(|(n, _)| n == name) else {
            candle_core::bail!("checkpoint has a momentum buffer for '{name}', which the model does not have")
        };
        let want = self.vars[i].1.shape();
        if buffer.shape() != want {
            candle_core::bail!("momentum buffer '{name}' has shape {:?}, the variable {:?}", buffer.shape(), want)
        }
        self.buffers[i] = Some(buffer);
        Ok(())
    }
}

/// AdamW's hyperparameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW as PyTorch's `torch.optim.AdamW` computes it (one step count for every variable):
/// t <- t + 1; w <- w (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
/// w <- w - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
pub struct AdamW {
    vars: Vec<(String, Var)>,
    /// First and second moments per variable, created (as zeros) on its first update.
    moments: Vec<Option<(Tensor, Tensor)>>,
    /// Updates done.
    t: u64,
    pub params: AdamWParams,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Self {
        let moments = vec![None; vars.len()];
        AdamW { vars, moments, t: 0, params }
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let p = self.params;
        self.t += 1;
        let t = i32::try_from(self.t).unwrap_or(i32::MAX);
        let correction1 = 1.0 - p.beta1.powi(t);
        let correction2_sqrt = (1.0 - p.beta2.powi(t)).sqrt();
        for ((_, var), moments) in self.vars.iter().zip(self.moments.iter_mut()) {
            let Some(grad) = grads.get(var) else { continue };
            let (m, v) = match moments.take() {
                Some(mv) => mv,
                None => (grad.zeros_like()?, grad.zeros_like()?),
            };
            let m = ((m * p.beta1)? + (grad * (1.0 - p.beta1))?)?;
            let v = ((v * p.beta2)? + (grad.sqr()? * (1.0 - p.beta2))?)?;
            let decayed = (var.as_tensor() * (1.0 - p.lr * p.weight_decay))?;
            let denom = ((v.sqrt()? / correction2_sqrt)? + p.eps)?;
            let update = ((&m / denom)? * (p.lr / correction1))?;
            var.set(&(decayed - update)?)?;
            // Not graph nodes: detached so they do not keep old graphs alive.
            *moments = Some((m.detach(), v.detach()));
        }
        Ok(())
    }

    /// Updates done so far.
    pub fn steps_done(&self) -> u64 {
        self.t
    }

    /// The moments that exist and the step count, under their checkpoint keys.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(ADAM_STEP_KEY.to_string(), Tensor::new(&[self.t as i64], &Device::Cpu)?)];
        for ((name, _), mv) in self.vars.iter().zip(&self.moments) {
            if let Some((m, v)) = mv {
                out.push((format!("{ADAM_M_PREFIX}{name}"), m.clone()));
                out.push((format!("{ADAM_V_PREFIX}{name}"), v.clone()));
            }
        }
        Ok(out)
    }

    /// Restores one entry of [`AdamW::state`].
    pub fn restore(&mut self, key: &str, tensor: Tensor) -> Result<()> {
        if key == ADAM_STEP_KEY {
            let t = tensor.flatten_all()?.to_vec1::<i64>()?;
            match t.as_slice() {
                [t] if *t >= 0 => self.t = *t as u64,
                _ => candle_core::bail!("'{key}' must be one non-negative count (got {t:?})"),
            }
            return Ok(());
        }
        let (name, first) = if let Some(n) = key.strip_prefix(ADAM_M_PREFIX) {
            (n, true)
        } else if let Some(n) = key.strip_prefix(ADAM_V_PREFIX) {
            (n, false)
        } else {
            candle_core::bail!("the checkpoint holds '{key}', not AdamW state: it was made with another optimizer")
        };
        let Some(i) = self.vars.iter().position(|(n, _)| n == name) else {
            candle_core::bail!("the checkpoint has AdamW state for '{name}', which the model does not have")
        };
        let var = &self.vars[i].1;
        if tensor.shape() != var.shape() {
            candle_core::bail!("AdamW state '{key}' has shape {:?}, the variable {:?}", tensor.shape(), var.shape())
        }
        // The other moment stays zero until its own key arrives; a checkpoint holds both.
        let (m, v) = match self.moments[i].take() {
            Some(mv) => mv,
            None => (var.as_tensor().zeros_like()?, var.as_tensor().zeros_like()?),
        };
        self.moments[i] = Some(if first { (tensor, v) } else { (m, tensor) });
        Ok(())
    }
}

/// The learning rate in force during `epoch` (0-based): the base rate times the schedule's factor.
pub fn lr_at(base_lr: f64, schedule: &Schedule, epoch: usize) -> f64 {
    base_lr * schedule.factor(epoch)
}
