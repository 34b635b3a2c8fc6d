//! The training loop shared by `train` and `transfer`: seeded shuffled batches, one optimizer step
//! per batch, metrics and progress events, a checkpoint and a test evaluation after every epoch, and
//! a checkpoint at the current step when a stop is requested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use candle_core::Tensor;

use super::checkpoint::{self, CheckpointState};
use super::eval::{self, Accuracy};
use super::objective::{Objective, StepInput, StepLoss};
use super::optim::{lr_at, Optim};
use super::streams::{eval_rng, step_rng};
use crate::config::OptimConfig;
use crate::context::Context;
use crate::data::{epoch_rng, Augmentation, Split};
use crate::events::ArtifactKind;
use crate::models::Model;

/// Training metrics are reported every this many steps (and at the end of each epoch).
const LOG_EVERY: u64 = 20;

/// Everything the loop needs; `train` and `transfer` each build one.
pub struct Job<'a> {
    pub model: &'a Model,
    pub objective: &'a dyn Objective,
    pub train: &'a Split,
    pub test: &'a Split,
    /// Resolved: `lr` is set.
    pub optim: &'a OptimConfig,
    pub seed: u64,
    pub out_dir: &'a Path,
    pub resume: bool,
    /// Noise level of the per-epoch noisy test accuracy.
    pub eval_sigma: Option<f64>,
    pub augment: Option<Augmentation>,
    /// Settings a resumed run must share with its checkpoint (see `CheckpointState::identity`).
    pub identity: BTreeMap<String, serde_json::Value>,
}

pub enum Fit {
    /// All epochs done; the last test metrics and the training time over all sessions.
    Finished {
        metrics: BTreeMap<String, f64>,
        elapsed_s: f64,
    },
    Stopped {
        checkpoint: PathBuf,
    },
}

/// Where the loop stands: the epoch in progress, batches of it done, steps done in all.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    epoch: usize,
    batch: usize,
    step: u64,
}

/// Runs (or continues) the job to the end or to a stop request.
pub fn fit(job: &Job, ctx: &Context) -> anyhow::Result<Fit> {
    let base_lr = job.optim.lr.context("optim.lr: not resolved")?;
    let mut optimizer = Optim::new(job.optim, job.model.trainable_vars(), base_lr);
    let (mut pos, elapsed_before) = restore(job, &mut optimizer, ctx)?;
    // The step of the newest checkpoint on disk (the one a diverged run resumes from).
    let mut checkpoint_step = (job.resume && pos.step > 0).then_some(pos.step);
    let session = Instant::now();
    let elapsed = || elapsed_before + session.elapsed().as_secs_f64();
    let steps_per_epoch = job.train.len().div_ceil(job.optim.batch_size);
    let total_steps = (job.optim.epochs * steps_per_epoch) as u64;
    let mut last = None;
    let mut last_train_loss = None;

    while pos.epoch < job.optim.epochs {
        let epoch_start = Instant::now();
        let lr = lr_at(base_lr, &job.optim.schedule, pos.epoch);
        optimizer.set_lr(lr);
        let mut order_rng = epoch_rng(job.seed, pos.epoch as u64);
        let batches = job.train.shuffled_batches(job.optim.batch_size, &mut order_rng, job.augment, job.model.device());
        let mut window = Window::default();
        let mut epoch_loss = (0.0, 0u64);
        // Skipped batches are still drawn, so the augmentation stream stays where it was.
        for batch in batches.skip(pos.batch) {
            if ctx.stop.is_raised() {
                return stop(job, &optimizer, pos, elapsed(), ctx);
            }
            let batch = batch?;
            let mut rng = step_rng(job.seed, pos.step);
            let input = StepInput { images: &batch.images, labels: &batch.labels, epoch: pos.epoch, rng: &mut rng };
            let out = job.objective.loss(job.model, input)?;
            let loss = window.add(&out, &batch.labels)?;
            pos.batch += 1;
            pos.step += 1;
            let epoch_frac = pos.epoch as f64 + pos.batch as f64 / steps_per_epoch as f64;
            if !loss.is_finite() {
                // Stop at once: report the non-finite value, write no checkpoint from these weights.
                ctx.reporter.metrics(pos.step, Some(epoch_frac), &window.take(lr));
                return Err(diverged(job, loss, pos, steps_per_epoch, base_lr, lr, checkpoint_step));
            }
            optimizer.step(&out.loss.backward()?)?;
            epoch_loss = (epoch_loss.0 + loss, epoch_loss.1 + 1);
            if pos.step % LOG_EVERY == 0 || pos.batch == steps_per_epoch {
                ctx.reporter.metrics(pos.step, Some(epoch_frac), &window.take(lr));
            }
            ctx.reporter.progress("train", pos.step, total_steps, "steps");
        }
        pos = Position { epoch: pos.epoch + 1, batch: 0, step: pos.step };
        let path = save_checkpoint(job, &optimizer, pos, elapsed(), ctx)?;
        checkpoint_step = Some(pos.step);
        let Some(acc) = evaluate(job, pos.epoch - 1, ctx)? else {
            return Ok(Fit::Stopped { checkpoint: path });
        };
        let mut values = accuracy_values(acc);
        values.push(("epoch_time_s", epoch_start.elapsed().as_secs_f64()));
        ctx.reporter.metrics(pos.step, Some(pos.epoch as f64), &values);
        last = Some(acc);
        last_train_loss = Some(epoch_loss.0 / epoch_loss.1.max(1) as f64);
    }
    // A run resumed after its last epoch has no evaluation of this session yet.
    let acc = match last {
        Some(acc) => acc,
        None => match evaluate(job, job.optim.epochs.saturating_sub(1), ctx)? {
            Some(acc) => acc,
            None => return Ok(Fit::Stopped { checkpoint: job.out_dir.join(checkpoint::CHECKPOINT_FILE) }),
        },
    };
    let mut metrics: BTreeMap<String, f64> =
        accuracy_values(acc).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if let Some(loss) = last_train_loss {
        metrics.insert("train/loss".into(), loss);
    }
    Ok(Fit::Finished { metrics, elapsed_s: elapsed() })
}

/// The error of a run whose loss became non-finite: the step, the value and the remedy.
fn diverged(
    job: &Job,
    loss: f64,
    pos: Position,
    steps_per_epoch: usize,
    base_lr: f64,
    lr: f64,
    checkpoint_step: Option<u64>,
) -> anyhow::Error {
    let value = if loss.is_nan() {
        "NaN"
    } else if loss > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    };
    let (remedy, kept) = match checkpoint_step {
        Some(step) => ("resume", format!("the last good checkpoint (step {step}) is kept")),
        None => ("run it again", "no checkpoint had been written yet".to_string()),
    };
    let in_force = if lr == base_lr { String::new() } else { format!(", {lr} in force with the schedule") };
    anyhow::anyhow!(
        "loss became {value} at step {} (epoch {} of {}, batch {} of {steps_per_epoch}): training diverged; \
         {remedy} with a lower learning rate, e.g. lr {} (this run's lr is {base_lr}{in_force}); {kept}",
        pos.step,
        pos.epoch + 1,
        job.optim.epochs,
        pos.batch,
        base_lr / 10.0,
    )
}

/// What a continued run must share with its checkpoint: the job's settings and, when it is not
/// SGD, the optimizer (left out for SGD so checkpoints made before there was a choice still match).
fn identity(job: &Job) -> BTreeMap<String, serde_json::Value> {
    let mut identity = job.identity.clone();
    if !job.optim.optimizer.is_sgd() {
        identity.insert("optim.optimizer".into(), serde_json::to_value(job.optim.optimizer).unwrap_or_default());
    }
    identity
}

/// Loads the checkpoint when resuming; returns the position and the training time already spent.
fn restore(job: &Job, optimizer: &mut Optim, ctx: &Context) -> anyhow::Result<(Position, f64)> {
    if !job.resume {
        return Ok((Position::default(), 0.0));
    }
    let Some(loaded) = checkpoint::load(job.out_dir, job.model.device())? else {
        ctx.reporter.log(format!("resume: no checkpoint in {}; starting from scratch", job.out_dir.display()));
        return Ok((Position::default(), 0.0));
    };
    let state = &loaded.state;
    state.check_identity(&identity(job), job.out_dir)?;
    if state.epoch > job.optim.epochs || (state.epoch == job.optim.epochs && state.batch > 0) {
        bail!(
            "resume: the checkpoint in {} is already at epoch {} of the run; --epochs / optim.epochs is {}",
            job.out_dir.display(),
            state.epoch,
            job.optim.epochs
        );
    }
    loaded.apply(job.model, optimizer)?;
    ctx.reporter.log(format!("resuming at epoch {}, batch {} (step {})", state.epoch, state.batch, state.step));
    Ok((Position { epoch: state.epoch, batch: state.batch, step: state.step }, state.elapsed_s))
}

fn save_checkpoint(
    job: &Job,
    optimizer: &Optim,
    pos: Position,
    elapsed_s: f64,
    ctx: &Context,
) -> anyhow::Result<PathBuf> {
    let state = CheckpointState {
        epoch: pos.epoch,
        batch: pos.batch,
        step: pos.step,
        seed: job.seed,
        elapsed_s,
        identity: identity(job),
    };
    let path = checkpoint::save(job.out_dir, job.model, optimizer, &state)?;
    ctx.reporter.artifact(&path, ArtifactKind::Checkpoint)?;
    Ok(path)
}

fn stop(job: &Job, optimizer: &Optim, pos: Position, elapsed_s: f64, ctx: &Context) -> anyhow::Result<Fit> {
    let path = save_checkpoint(job, optimizer, pos, elapsed_s, ctx)?;
    ctx.reporter
        .log(format!("stop requested: checkpoint at epoch {}, batch {} (step {})", pos.epoch, pos.batch, pos.step));
    Ok(Fit::Stopped { checkpoint: path })
}

/// Test accuracy after `epoch`; None when a stop request interrupted it.
fn evaluate(job: &Job, epoch: usize, ctx: &Context) -> anyhow::Result<Option<Accuracy>> {
    let mut rng = eval_rng(job.seed, epoch as u64);
    eval::evaluate(job.model, job.test, job.optim.batch_size, job.eval_sigma, &mut rng, &ctx.stop)
}

fn accuracy_values(acc: Accuracy) -> Vec<(&'static str, f64)> {
    let mut values = vec![("test/acc", acc.clean)];
    if let Some(noisy) = acc.noisy {
        values.push(("test/noisy_acc", noisy));
    }
    values
}

/// Training loss and accuracy accumulated since the last report.
#[derive(Default)]
struct Window {
    loss_sum: f64,
    steps: u64,
    correct: u64,
    seen: u64,
}

impl Window {
    /// Adds one step; returns its loss.
    fn add(&mut self, out: &StepLoss, labels: &Tensor) -> candle_core::Result<f64> {
        let loss = f64::from(out.loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
        self.loss_sum += loss;
        self.steps += 1;
        if let Some(logits) = &out.logits {
            self.correct += eval::correct(logits, labels)?;
            self.seen += labels.dim(0)? as u64;
        }
        Ok(loss)
    }

    /// The window's values (with the learning rate), and a fresh window.
    fn take(&mut self, lr: f64) -> Vec<(&'static str, f64)> {
        let mut values = vec![("train/loss", self.loss_sum / self.steps.max(1) as f64), ("lr", lr)];
        if self.seen > 0 {
            values.push(("train/acc", self.correct as f64 / self.seen as f64));
        }
        *self = Window::default();
        values
    }
}
