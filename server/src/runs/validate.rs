//! Checking a create-run request and filling in the paths the server owns.
//!
//! The client sends a `RunConfig` without paths; the server sets `out_dir` (the run's
//! directory), the dataset directory, a transfer's `teacher` and a certification's `model`
//! (both the parent run's directory), and `resume`. Those fields are always replaced.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crt_trainer::config::{check_lr, Arch, Dataset, ModelSource, RunConfig, RunKind, TransferLoss};

use crate::devices::DeviceRequest;
use crate::launch::slurm::SlurmResources;
use crate::launch::BackendKind;
use crate::store::runs::{ConfigColumns, Placement, Run};

/// `POST /api/v1/runs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRunRequest {
    pub experiment_id: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub parents: Vec<i64>,
    pub config: Value,
    /// "auto" (the default), "cpu", "gpu" or "cuda:N".
    #[serde(default)]
    pub device: Option<DeviceRequest>,
    /// "local" or "slurm" (default: the server's `--backend`).
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Slurm resources for this run (gaps filled from the server's `--slurm-*` defaults).
    #[serde(default)]
    pub slurm: Option<SlurmResources>,
}

/// The backend and resources of a create-run request.
pub fn check_placement(req: &CreateRunRequest, default: BackendKind) -> Result<Placement, FieldError> {
    let backend = req.backend.unwrap_or(default);
    if let Some(res) = &req.slurm {
        if backend != BackendKind::Slurm {
            return Err(FieldError::new("slurm", "Slurm resources need \"backend\": \"slurm\""));
        }
        res.validate().map_err(|(field, message)| FieldError::new(format!("slurm.{field}"), message))?;
    }
    Ok(Placement { device: req.device.unwrap_or_default(), backend, resources: req.slurm.clone() })
}

/// A request field that is wrong, and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// A config that passed every check, ready to be stored once the run id is known.
#[derive(Debug, Clone)]
pub struct CheckedConfig {
    pub kind: RunKind,
    /// The config with server paths filled, except `out_dir` (see [`CheckedConfig::with_out_dir`]).
    pub config: Value,
    pub columns: ConfigColumns,
}

impl CheckedConfig {
    pub fn with_out_dir(&self, out_dir: &Path) -> Value {
        let mut config = self.config.clone();
        config["out_dir"] = json!(out_dir);
        config
    }

    /// The default run name, e.g. "train lenet gaussian mnist".
    pub fn default_name(&self) -> String {
        let c = &self.columns;
        let parts = [c.arch.as_deref(), c.method.as_deref(), c.dataset.as_deref()];
        std::iter::once(self.kind.as_str()).chain(parts.into_iter().flatten()).collect::<Vec<_>>().join(" ")
    }
}

/// Checks `config` (the request's `config` member) against the trainer's own types and the
/// parent rules, filling in server-owned paths.
pub fn check_config(config: &Value, parents: &[Run], datasets_dir: &Path) -> Result<CheckedConfig, FieldError> {
    let Value::Object(_) = config else {
        return Err(FieldError::new("config", "must be a JSON object (a trainer RunConfig)"));
    };
    let kind = parse_kind(config)?;
    let parent = check_parents(kind, parents, config)?;
    let mut config = config.clone();
    fill_paths(kind, &mut config, parent, datasets_dir)?;
    let typed = typed_config(kind, &config)?;
    typed.validate().map_err(|e| FieldError::new(format!("config.{}", e.field), e.message))?;
    check_parent_model(&typed, parent)?;
    let columns = columns(&typed, parent);
    Ok(CheckedConfig { kind, config, columns })
}

/// The typed config. Each kind's struct is read on its own (not through the `kind`-tagged
/// enum, which buffers its content and so loses the path to a bad field).
fn typed_config(kind: RunKind, config: &Value) -> Result<RunConfig, FieldError> {
    let mut body = config.clone();
    if let Value::Object(map) = &mut body {
        map.remove("kind");
    }
    Ok(match kind {
        RunKind::Train => RunConfig::Train(read(body)?),
        RunKind::Transfer => RunConfig::Transfer(read(body)?),
        RunKind::Certify => RunConfig::Certify(read(body)?),
        RunKind::Predict => RunConfig::Predict(read(body)?),
        RunKind::External => {
            return Err(FieldError::new("config.kind", "external runs are made through the MLflow-compatible API"))
        }
    })
}

fn read<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "config".to_string() } else { format!("config.{path}") };
        FieldError::new(field, e.inner().to_string())
    })
}

/// A certification of a parent's model: its batch within the memory bound of that model's
/// architecture and dataset (the config alone names neither; the trainer checks it again when it
/// reads the model).
fn check_parent_model(config: &RunConfig, parent: Option<&Run>) -> Result<(), FieldError> {
    let smoothing = match config {
        RunConfig::Certify(c) => &c.smoothing,
        RunConfig::Predict(c) => &c.smoothing,
        RunConfig::Train(_) | RunConfig::Transfer(_) => return Ok(()),
    };
    let Some(parent) = parent else { return Ok(()) };
    let arch = parent.arch.as_deref().and_then(|a| a.parse::<Arch>().ok());
    let dataset = parent.dataset.as_deref().and_then(|d| d.parse::<Dataset>().ok());
    if let (Some(arch), Some(dataset)) = (arch, dataset) {
        smoothing
            .check_batch_memory("smoothing", arch, dataset)
            .map_err(|e| FieldError::new(format!("config.{}", e.field), e.message))?;
    }
    Ok(())
}

/// The most parents a run may list (a run has at most one; more are refused before any lookup).
pub const MAX_PARENTS: usize = 8;
/// The longest run name, in characters.
pub const MAX_RUN_NAME_CHARS: usize = 200;

/// `POST /api/v1/runs/{id}/resume`: an optional body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// A new base learning rate (train and transfer runs), e.g. after the loss diverged.
    #[serde(default)]
    pub lr: Option<f64>,
}

impl ResumeRequest {
    pub fn check(&self, kind: RunKind) -> Result<(), FieldError> {
        if let Some(lr) = self.lr {
            if !kind.makes_model() {
                return Err(FieldError::new("lr", format!("a {kind} run has no learning rate")));
            }
            check_lr("lr", lr).map_err(|e| FieldError::new(e.field, e.message))?;
        }
        Ok(())
    }
}

fn parse_kind(config: &Value) -> Result<RunKind, FieldError> {
    let allowed = RunKind::TRAINER.map(RunKind::as_str).join(", ");
    let Some(kind) = config.get("kind") else {
        return Err(FieldError::new("config.kind", format!("missing; expected one of {allowed}")));
    };
    RunKind::TRAINER
        .into_iter()
        .find(|k| Some(k.as_str()) == kind.as_str())
        .ok_or_else(|| FieldError::new("config.kind", format!("unknown kind {kind}; expected one of {allowed}")))
}

/// A transfer needs its teacher and a certification its model: one parent that trains a model
/// ([`RunKind::makes_model`]). Returns that parent.
fn check_parents<'a>(kind: RunKind, parents: &'a [Run], config: &Value) -> Result<Option<&'a Run>, FieldError> {
    if let Some(p) = parents.iter().find(|p| !crate::certified::makes_model(p.kind, &p.config)) {
        return Err(FieldError::new(
            "parents",
            format!("run {} is a {} run; a parent must be a train or transfer run or an imported model", p.id, p.kind),
        ));
    }
    match (kind, parents) {
        (RunKind::Train, []) => Ok(None),
        (RunKind::Train, _) => Err(FieldError::new("parents", "a train run has no parents; leave `parents` empty")),
        (RunKind::Transfer, [teacher]) => Ok(Some(teacher)),
        (RunKind::Transfer, _) => {
            Err(FieldError::new("parents", "a transfer run needs exactly one parent: the teacher's training run"))
        }
        (RunKind::Certify | RunKind::Predict, [model]) => Ok(Some(model)),
        (RunKind::Certify | RunKind::Predict, []) if config.get("model").is_some() => Ok(None),
        (RunKind::Certify | RunKind::Predict, []) => Err(FieldError::new(
            "parents",
            format!(
                "a {} run needs the run that trained its model as its one parent (or a `config.model` of source \"weights\")",
                kind.as_str()
            ),
        )),
        (RunKind::Certify | RunKind::Predict, _) => {
            Err(FieldError::new("parents", format!("a {} run takes exactly one parent: its model", kind.as_str())))
        }
        (RunKind::External, _) => {
            Err(FieldError::new("config.kind", "external runs are made through the MLflow-compatible API"))
        }
    }
}

fn fill_paths(kind: RunKind, config: &mut Value, parent: Option<&Run>, datasets_dir: &Path) -> Result<(), FieldError> {
    // Validation runs before the run id exists; the real out_dir replaces this at creation.
    config["out_dir"] = json!("/pending");
    match kind {
        RunKind::Train | RunKind::Transfer => {
            match config.get_mut("data") {
                Some(Value::Object(data)) => {
                    data.insert("data_dir".into(), json!(datasets_dir));
                }
                Some(_) => {
                    return Err(FieldError::new("config.data", "must be an object like {\"dataset\": \"mnist\"}"))
                }
                None => return Err(FieldError::new("config.data", "missing; e.g. {\"dataset\": \"mnist\"}")),
            }
            config["resume"] = json!(false);
            if let (RunKind::Transfer, Some(teacher)) = (kind, parent) {
                config["teacher"] = json!(teacher.out_dir);
            }
        }
        RunKind::Certify | RunKind::Predict => {
            config["data_dir"] = json!(datasets_dir);
            if let Some(model) = parent {
                config["model"] = json!({ "source": "dir", "path": model.out_dir });
            }
        }
        RunKind::External => {
            return Err(FieldError::new("config.kind", "external runs are made through the MLflow-compatible API"))
        }
    }
    Ok(())
}

/// The filterable columns; a certification inherits its model's arch, method and dataset.
fn columns(config: &RunConfig, parent: Option<&Run>) -> ConfigColumns {
    let inherited = || ConfigColumns {
        arch: parent.and_then(|p| p.arch.clone()),
        method: parent.and_then(|p| p.method.clone()),
        dataset: parent.and_then(|p| p.dataset.clone()),
        sigma: parent.and_then(|p| p.sigma),
    };
    match config {
        RunConfig::Train(t) => ConfigColumns {
            arch: Some(t.arch.as_str().into()),
            method: Some(t.method.name().into()),
            dataset: Some(t.data.dataset.as_str().into()),
            sigma: t.method.sigma(),
        },
        RunConfig::Transfer(t) => ConfigColumns {
            arch: Some(t.student_arch.as_str().into()),
            method: Some(match t.loss {
                TransferLoss::Crt { .. } => "crt".into(),
                TransferLoss::Kd { .. } => "kd".into(),
            }),
            dataset: Some(t.data.dataset.as_str().into()),
            sigma: t.sigma.or(parent.and_then(|p| p.sigma)),
        },
        RunConfig::Certify(c) => smoothing_columns(&c.model, c.smoothing.sigma, inherited()),
        RunConfig::Predict(c) => smoothing_columns(&c.model, c.smoothing.sigma, inherited()),
    }
}

fn smoothing_columns(model: &ModelSource, sigma: Option<f64>, inherited: ConfigColumns) -> ConfigColumns {
    let mut cols = inherited;
    if let ModelSource::Weights { arch, dataset, .. } = model {
        cols.arch = Some(arch.as_str().into());
        cols.dataset = Some(dataset.as_str().into());
    }
    cols.sigma = sigma.or(cols.sigma);
    cols
}

/// A resumable run's config with `resume: true`: every kind resumes. Train and transfer runs
/// continue from their checkpoint, certify and predict runs from the next image not yet recorded.
/// A new learning rate (checked by [`ResumeRequest::check`]) replaces `optim.lr`.
pub fn resume_config(run: &Run, req: &ResumeRequest) -> Value {
    let mut config = run.config.clone();
    config["resume"] = json!(true);
    if let Some(lr) = req.lr {
        match config.get_mut("optim") {
            Some(Value::Object(optim)) => {
                optim.insert("lr".into(), json!(lr));
            }
            _ => config["optim"] = json!({ "lr": lr }),
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::RunStatus;

    fn parent(id: i64, kind: RunKind) -> Run {
        Run {
            name: "p".into(),
            status: RunStatus::Finished,
            config: json!({}),
            arch: Some("lenet".into()),
            method: Some("gaussian".into()),
            dataset: Some("mnist".into()),
            sigma: Some(0.25),
            attempt: 1,
            exit_code: Some(0),
            ..Run::example(id, kind)
        }
    }

    fn train(method: Value) -> Value {
        json!({"kind": "train", "data": {"dataset": "mnist"}, "arch": "lenet", "method": method})
    }

    #[test]
    fn fills_server_paths() {
        let c = check_config(&train(json!({"name": "gaussian", "sigma": 0.25})), &[], Path::new("/d")).unwrap();
        assert_eq!(c.config["data"]["data_dir"], "/d");
        assert_eq!(c.config["resume"], false);
        assert_eq!(c.with_out_dir(Path::new("/r/7"))["out_dir"], "/r/7");
        assert_eq!(c.columns.sigma, Some(0.25));
        assert_eq!(c.default_name(), "train lenet gaussian mnist");

        let cert = json!({"kind": "certify", "smoothing": {"n0": 50, "n": 500}});
        let c = check_config(&cert, &[parent(3, RunKind::Train)], Path::new("/d")).unwrap();
        assert_eq!(c.config["model"], json!({"source": "dir", "path": "/data/runs/3"}));
        assert_eq!(c.columns.arch.as_deref(), Some("lenet"));
    }

    #[test]
    fn errors_name_the_field() {
        let check = |v: Value, parents: &[Run]| check_config(&v, parents, Path::new("/d")).unwrap_err();
        let e = check(train(json!({"name": "gaussian", "sigma": 0.0})), &[]);
        assert_eq!(e.field, "config.method.sigma");
        let e = check(train(json!({"name": "gaussian", "sigma": -1.0})), &[]);
        assert_eq!(e.field, "config.method.sigma");
        let e = check(
            json!({"kind": "train", "data": {"dataset": "mnist"}, "arch": "vgg", "method": {"name": "standard"}}),
            &[],
        );
        assert_eq!(e.field, "config.arch", "{e}");
        assert!(e.message.contains("lenet"), "{e}");
        let e = check(
            json!({"kind": "train", "data": {"dataset": "svhn"}, "arch": "lenet", "method": {"name": "standard"}}),
            &[],
        );
        assert_eq!(e.field, "config.data.dataset", "{e}");
        assert!(e.message.contains("mnist"), "{e}");
        let e = check(json!({"kind": "fly"}), &[]);
        assert_eq!(e.field, "config.kind");
        assert!(e.message.contains("certify"));
        let e = check(json!({"kind": "certify"}), &[]);
        assert_eq!(e.field, "parents");
        let e = check(json!({"kind": "transfer", "data": {"dataset": "mnist"}, "student_arch": "lenet"}), &[]);
        assert_eq!(e.field, "parents");
        let e = check(train(json!({"name": "standard"})), &[parent(1, RunKind::Train)]);
        assert_eq!(e.field, "parents");
        let e = check(json!({"kind": "certify"}), &[parent(1, RunKind::Certify)]);
        assert_eq!(e.field, "parents");
    }

    #[test]
    fn resume_sets_the_flag() {
        let mut run = parent(1, RunKind::Train);
        run.config = json!({"kind": "train", "resume": false});
        let none = ResumeRequest::default();
        assert_eq!(resume_config(&run, &none)["resume"], true);
        assert_eq!(resume_config(&parent(2, RunKind::Certify), &none)["resume"], true);
        assert_eq!(resume_config(&parent(3, RunKind::Predict), &none)["resume"], true);
        assert_eq!(resume_config(&run, &none).get("optim"), None, "no body: the config is unchanged");
        let lower = ResumeRequest { lr: Some(0.001) };
        assert_eq!(resume_config(&run, &lower)["optim"]["lr"], 0.001);
        run.config = json!({"kind": "train", "optim": {"epochs": 3, "lr": 1.0}});
        assert_eq!(resume_config(&run, &lower)["optim"], json!({"epochs": 3, "lr": 0.001}));
    }

    #[test]
    fn a_resume_lr_is_bounded_and_only_for_training() {
        let req = |lr| ResumeRequest { lr: Some(lr) };
        assert_eq!(req(1000.0).check(RunKind::Train), Ok(()));
        assert_eq!(req(1000.5).check(RunKind::Transfer).unwrap_err().field, "lr");
        assert_eq!(req(0.0).check(RunKind::Train).unwrap_err().field, "lr");
        assert_eq!(req(f64::NAN).check(RunKind::Train).unwrap_err().field, "lr");
        assert_eq!(req(0.1).check(RunKind::Certify).unwrap_err().field, "lr");
        assert_eq!(ResumeRequest::default().check(RunKind::Certify), Ok(()));
    }

    #[test]
    fn a_certification_batch_is_bounded_by_its_parent_model() {
        let cert = |batch: usize| json!({"kind": "certify", "smoothing": {"n0": 50, "n": 500, "batch": batch}});
        let lenet = parent(3, RunKind::Train);
        let resnet =
            Run { arch: Some("resnet110".into()), dataset: Some("cifar10".into()), ..parent(4, RunKind::Train) };
        let batch = crt_trainer::config::max_cert_batch(Arch::Resnet110, Dataset::Cifar10) + 16;
        assert!(check_config(&cert(batch), &[lenet], Path::new("/d")).is_ok());
        let e = check_config(&cert(batch), &[resnet], Path::new("/d")).unwrap_err();
        assert_eq!(e.field, "config.smoothing.batch");
        assert!(e.message.contains("resnet110 on cifar10"), "{e}");
    }
}
