//! Certified Robustness Transfer (Vaishnavi et al. 2022) and distillation on noisy inputs: a student
//! trained from scratch to match a frozen teacher. Each step draws one Gaussian noise sample per
//! image and feeds the same noisy batch to both; the teacher runs in evaluation mode and its logits
//! are detached, so it never changes (its files are only read).

use std::path::Path;

use super::objective::{Objective, StepInput, StepLoss};
use super::{augmentation, create_out_dir, finish, fit, identity, load_splits, Job, Made};
use crate::config::{TransferConfig, TransferLoss};
use crate::context::{Context, Outcome};
use crate::models::meta::Provenance;
use crate::models::{Model, ModelMeta};
use anyhow::{bail, Context as _};

/// Two noise levels closer than this are the same.
const SIGMA_TOLERANCE: f64 = 1e-9;

/// `crt-trainer transfer`: `cfg` must be validated and resolved (`TransferConfig::resolve`).
pub fn transfer(cfg: &TransferConfig, ctx: &Context) -> anyhow::Result<Outcome> {
    let (teacher, meta) = load_teacher(&cfg.teacher, ctx)?;
    if meta.dataset != cfg.data.dataset {
        bail!(
            "data.dataset: the teacher {} was trained on {}, this run uses {}; a student learns on its teacher's dataset",
            cfg.teacher.display(),
            meta.dataset.as_str(),
            cfg.data.dataset.as_str()
        );
    }
    let sigma = resolve_sigma(cfg.sigma, meta.sigma, cfg.allow_sigma_mismatch, &cfg.teacher)?;
    refuse_teacher_dir(&cfg.out_dir, &cfg.teacher)?;
    let (train_split, test_split) = load_splits(&cfg.data)?;
    create_out_dir(&cfg.out_dir)?;
    let student = Model::new(cfg.student_arch, cfg.data.dataset, &ctx.device, cfg.seed)?;
    let objective = Guided { teacher: &teacher, loss: cfg.loss.clone(), sigma };
    let job = Job {
        model: &student,
        objective: &objective,
        train: &train_split,
        test: &test_split,
        optim: &cfg.optim,
        seed: cfg.seed,
        out_dir: &cfg.out_dir,
        resume: cfg.resume,
        eval_sigma: Some(sigma),
        augment: augmentation(cfg.data.dataset),
        identity: identity(&[
            ("kind", "transfer".into()),
            ("data.dataset", serde_json::to_value(cfg.data.dataset)?),
            ("data.train_subset", serde_json::to_value(cfg.data.train_subset)?),
            ("teacher", cfg.teacher.display().to_string().into()),
            ("student_arch", serde_json::to_value(cfg.student_arch)?),
            ("loss", serde_json::to_value(&cfg.loss)?),
            ("sigma", sigma.into()),
            ("optim.batch_size", cfg.optim.batch_size.into()),
            ("seed", cfg.seed.into()),
        ]),
    };
    let outcome = fit(&job, ctx)?;
    let provenance = Provenance::Transfer {
        loss: cfg.loss.clone(),
        teacher_arch: meta.arch,
        teacher: cfg.teacher.display().to_string(),
    };
    let made = Made { provenance, sigma: Some(sigma), epochs: cfg.optim.epochs, seed: cfg.seed };
    finish(outcome, &student, made, &cfg.out_dir, ctx)
}

fn load_teacher(dir: &Path, ctx: &Context) -> anyhow::Result<(Model, ModelMeta)> {
    Model::load_dir(dir, &ctx.device).with_context(|| {
        format!(
            "teacher {}: expected the output directory of a finished training run (model.safetensors + model.json)",
            dir.display()
        )
    })
}

/// The noise level of a transfer: the teacher's unless another is asked for, and a different one
/// only with `allow_mismatch` (a student matched at another noise level certifies differently).
pub fn resolve_sigma(
    requested: Option<f64>,
    teacher: Option<f64>,
    allow_mismatch: bool,
    teacher_dir: &Path,
) -> anyhow::Result<f64> {
    let teacher_text = teacher.map(|s| s.to_string()).unwrap_or_else(|| "none (trained without noise)".into());
    match (requested, teacher) {
        (None, Some(t)) => Ok(t),
        (None, None) => bail!(
            "sigma: the teacher {} was trained without noise, so there is no default noise level; give --sigma \
             (and --allow-sigma-mismatch)",
            teacher_dir.display()
        ),
        (Some(s), Some(t)) if (s - t).abs() <= SIGMA_TOLERANCE => Ok(s),
        (Some(s), _) if allow_mismatch => Ok(s),
        (Some(s), _) => bail!(
            "sigma: {s} differs from the teacher's training noise level {teacher_text} ({}); omit --sigma to use the \
             teacher's, or pass --allow-sigma-mismatch (allow_sigma_mismatch: true) to train at {s} anyway",
            teacher_dir.display()
        ),
    }
}

/// Writing the student into the teacher's directory would replace the teacher's files.
fn refuse_teacher_dir(out_dir: &Path, teacher_dir: &Path) -> anyhow::Result<()> {
    let same = match (out_dir.canonicalize(), teacher_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        bail!("out_dir {}: is the teacher's directory; choose another output directory", out_dir.display());
    }
    Ok(())
}

/// The transfer objective: the student's loss against the frozen teacher on one noisy batch.
struct Guided<'a> {
    teacher: &'a Model,
    loss: TransferLoss,
    sigma: f64,
}

impl Objective for Guided<'_> {
    /// One noise draw per image from the step RNG, the same noisy batch for student and teacher;
    /// the losses themselves are `methods::crt_loss` / `methods::kd_loss`.
    fn loss(&self, student: &Model, input: StepInput<'_>) -> anyhow::Result<StepLoss> {
        let loss = crate::methods::transfer_loss(
            &self.loss,
            student,
            self.teacher,
            input.images,
            input.labels,
            self.sigma,
            input.rng,
        )?;
        Ok(StepLoss { loss, logits: None })
    }
}
