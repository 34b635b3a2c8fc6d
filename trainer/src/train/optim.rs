//! SGD with momentum and weight decay in PyTorch's form (candle_nn::SGD has neither):
//! g <- g + wd * w; buf <- momentum * buf + g (buf = g on the first step); w <- w - lr * buf.
//! Variables without a gradient are skipped, as PyTorch skips parameters whose `.grad` is None.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::config::Schedule;

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

/// The learning rate in force during `epoch` (0-based): the base rate times the schedule's factor.
pub fn lr_at(base_lr: f64, schedule: &Schedule, epoch: usize) -> f64 {
    base_lr * schedule.factor(epoch)
}
