//! What the launch forms offer: choices and default values taken from the trainer's own config
//! types (serialized defaults), so the forms never disagree with what the trainer would use.
//!
//! Every input names the request field it fills (`data-path`, e.g. `config.method.sigma`), which
//! is also the field the API names in a 422 error, so the server's message lands next to it.

use serde_json::{json, Value};

use crt_trainer::config::{Arch, Dataset, Method, OptimConfig, RunKind, SmoothingConfig, TransferLoss};

use crate::http::AppState;
use crate::runs::RunStatus;
use crate::store::experiments;
use crate::store::runs::{self, RunFilter};

/// One numeric input.
#[derive(Debug, Clone)]
pub struct Param {
    /// The request field, e.g. `config.smoothing.n`.
    pub path: String,
    pub label: String,
    pub hint: &'static str,
    /// The default as the trainer would use it; empty when there is none.
    pub default: String,
    /// `int` or `float`: how the script converts the text.
    pub kind: &'static str,
    /// Tells apart inputs of one field shown for different choices (each method's `m`).
    pub scope: &'static str,
}

impl Param {
    /// The input's element id, e.g. `train-macer-config-method-k`.
    pub fn id(&self, form: &str) -> String {
        let path = self.path.replace(['.', '_'], "-");
        if self.scope.is_empty() {
            format!("{form}-{path}")
        } else {
            format!("{form}-{}-{path}", self.scope)
        }
    }
}

/// A training method with its own parameters.
#[derive(Debug, Clone)]
pub struct MethodForm {
    pub name: &'static str,
    pub has_sigma: bool,
    pub params: Vec<Param>,
}

#[derive(Debug, Clone)]
pub struct DatasetOption {
    pub name: &'static str,
    pub default_lr: f64,
}

/// A train or transfer run offered as a teacher or as the model to certify.
#[derive(Debug, Clone)]
pub struct ModelOption {
    pub id: i64,
    pub label: String,
    pub dataset: String,
    pub sigma: Option<f64>,
    pub selected: bool,
}

#[derive(Debug, Clone)]
pub struct ModelGroup {
    pub experiment: String,
    pub models: Vec<ModelOption>,
}

#[derive(Debug, Clone)]
pub struct LaunchForms {
    pub experiment_id: i64,
    pub archs: Vec<&'static str>,
    pub datasets: Vec<DatasetOption>,
    pub methods: Vec<MethodForm>,
    /// Epochs, batch size, momentum, weight decay.
    pub optim: Vec<Param>,
    /// The learning-rate schedule's parameters (every_epochs, gamma, milestones).
    pub schedule_name: String,
    pub schedule: Vec<Param>,
    pub losses: Vec<MethodForm>,
    pub smoothing: Vec<Param>,
    pub model_groups: Vec<ModelGroup>,
    pub has_models: bool,
    /// The model of a certification launched from its run page (no model choice then).
    pub fixed_model: Option<i64>,
}

impl LaunchForms {
    /// The forms for an experiment, with `parent` preselected as teacher / model.
    pub async fn load(app: &AppState, experiment_id: i64, parent: Option<i64>) -> anyhow::Result<LaunchForms> {
        let model_groups = model_groups(app, experiment_id, parent).await?;
        let has_models = model_groups.iter().any(|g| !g.models.is_empty());
        let optim = serde_json::to_value(OptimConfig::default())?;
        Ok(LaunchForms {
            experiment_id,
            archs: Arch::ALL.iter().map(|a| a.as_str()).collect(),
            datasets: Dataset::ALL
                .iter()
                .map(|d| DatasetOption { name: d.as_str(), default_lr: d.default_lr() })
                .collect(),
            methods: methods()?,
            optim: ["epochs", "batch_size", "momentum", "weight_decay"]
                .iter()
                .map(|k| param("config.optim", k, optim.get(*k), None))
                .collect(),
            schedule_name: optim["schedule"]["name"].as_str().unwrap_or("constant").to_string(),
            schedule: vec![
                param("config.optim.schedule", "every_epochs", optim["schedule"].get("every_epochs"), Some("int")),
                param("config.optim.schedule", "gamma", optim["schedule"].get("gamma"), Some("float")),
            ],
            losses: losses()?,
            smoothing: smoothing()?,
            model_groups,
            has_models,
            fixed_model: None,
        })
    }
}

/// Each method's parameters with the references' defaults, read back from `Method` itself.
fn methods() -> anyhow::Result<Vec<MethodForm>> {
    Method::NAMES
        .iter()
        .map(|&name| {
            let defaults = serde_json::to_value(Method::with_defaults(name, 0.25)?)?;
            let params = object_params("config.method", &defaults, &["name", "sigma"], name);
            Ok(MethodForm { name, has_sigma: defaults.get("sigma").is_some(), params })
        })
        .collect()
}

fn losses() -> anyhow::Result<Vec<MethodForm>> {
    ["crt", "kd"]
        .iter()
        .map(|&name| {
            let defaults = serde_json::to_value(serde_json::from_value::<TransferLoss>(json!({ "name": name }))?)?;
            Ok(MethodForm { name, has_sigma: false, params: object_params("config.loss", &defaults, &["name"], name) })
        })
        .collect()
}

fn smoothing() -> anyhow::Result<Vec<Param>> {
    let defaults = serde_json::to_value(SmoothingConfig::default())?;
    // `sigma` and `max` default to null (the model's sigma; every image), so their kind is given.
    let fields = [
        ("n0", None),
        ("n", None),
        ("alpha", None),
        ("batch", None),
        ("skip", None),
        ("max", Some("int")),
        ("sigma", Some("float")),
        ("seed", None),
    ];
    Ok(fields.iter().map(|(k, kind)| param("config.smoothing", k, defaults.get(*k), *kind)).collect())
}

fn object_params(prefix: &str, defaults: &Value, skip: &[&str], scope: &'static str) -> Vec<Param> {
    let Value::Object(map) = defaults else { return Vec::new() };
    map.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| Param { scope, ..param(prefix, k, Some(v), None) })
        .collect()
}

fn param(prefix: &str, key: &str, default: Option<&Value>, kind: Option<&'static str>) -> Param {
    let default = default.cloned().unwrap_or(Value::Null);
    let kind = kind.unwrap_or(if default.is_u64() || default.is_i64() { "int" } else { "float" });
    let (label, hint) = describe(key);
    Param {
        path: format!("{prefix}.{key}"),
        label: label.to_string(),
        hint,
        default: if default.is_null() { String::new() } else { default.to_string() },
        kind,
        scope: "",
    }
}

/// Label and one-line help for a parameter name.
fn describe(key: &str) -> (&str, &'static str) {
    match key {
        "m" => ("m", "noise samples per image"),
        "steps" => ("Attack steps", ""),
        "epsilon" => ("ε (attack radius)", "L2, in [0, 1] pixel space"),
        "warmup_epochs" => ("Warm-up epochs", "the attack radius grows over these"),
        "k" => ("k", "noise samples per image"),
        "lambda" => ("λ", "weight of the regularizer"),
        "beta" => ("β", "inverse temperature"),
        "gamma" => ("γ", "hinge margin / schedule factor"),
        "deferred_epochs" => ("Deferred epochs", "plain training before the regularizer"),
        "eta" => ("η", ""),
        "step_size" => ("Step size", "attack step"),
        "logit_weight" => ("α (logit weight)", "α·‖z_s − z_t‖ + (1 − α)·CE"),
        "temperature" => ("Temperature", ""),
        "ce_weight" => ("CE weight", ""),
        "epochs" => ("Epochs", ""),
        "batch_size" => ("Batch size", ""),
        "momentum" => ("Momentum", ""),
        "weight_decay" => ("Weight decay", ""),
        "every_epochs" => ("Every (epochs)", "step schedule"),
        "n0" => ("N₀", "samples to pick the class"),
        "n" => ("N", "samples to bound its probability"),
        "alpha" => ("α (significance)", "the bound holds with probability 1 − α"),
        "batch" => ("Batch", "noisy copies per forward pass"),
        "skip" => ("Skip", "every k-th test image"),
        "max" => ("Max images", "blank: all"),
        "sigma" => ("σ", "blank: the model's σ"),
        "seed" => ("Seed", ""),
        other => (other, ""),
    }
}

/// Runs that hold a model ([`crate::certified::makes_model`]) and so can serve as a teacher or be
/// certified (not failed), grouped by experiment with this experiment first.
async fn model_groups(app: &AppState, experiment_id: i64, parent: Option<i64>) -> anyhow::Result<Vec<ModelGroup>> {
    let pool = &app.store.pool;
    let mut groups: Vec<ModelGroup> = Vec::new();
    let mut exps = experiments::list(pool).await?;
    exps.sort_by_key(|e| (e.id != experiment_id, -e.id));
    for exp in exps {
        let mut models = Vec::new();
        // Imported checkpoints are external runs: listed when the rule says they hold a model.
        for kind in RunKind::ALL.into_iter().filter(|k| k.makes_model() || *k == RunKind::External) {
            let filter =
                RunFilter { experiment_id: Some(exp.id), kind: Some(kind), limit: 1000, ..RunFilter::default() };
            for run in runs::list(pool, &filter).await? {
                if run.status == RunStatus::Failed || !crate::certified::makes_model(run.kind, &run.config) {
                    continue;
                }
                let sigma = run.sigma.map(|s| format!(", σ = {s}")).unwrap_or_default();
                models.push(ModelOption {
                    id: run.id,
                    label: format!("#{} {} ({}{sigma})", run.id, run.name, run.status.as_str()),
                    dataset: run.dataset.clone().unwrap_or_default(),
                    sigma: run.sigma,
                    selected: Some(run.id) == parent,
                });
            }
        }
        models.sort_by_key(|m| -m.id);
        if !models.is_empty() {
            groups.push(ModelGroup { experiment: exp.name, models });
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_trainer_types() {
        let methods = methods().unwrap();
        let macer = methods.iter().find(|m| m.name == "macer").unwrap();
        assert!(macer.has_sigma);
        let k = macer.params.iter().find(|p| p.path == "config.method.k").unwrap();
        assert_eq!((k.default.as_str(), k.kind), ("16", "int"));
        let lambda = macer.params.iter().find(|p| p.path == "config.method.lambda").unwrap();
        assert_eq!(lambda.kind, "float");
        assert!(!methods.iter().find(|m| m.name == "standard").unwrap().has_sigma);

        let crt = &losses().unwrap()[0];
        assert_eq!(crt.params[0].path, "config.loss.logit_weight");
        assert_eq!(crt.params[0].default, "1.0");

        let smoothing = smoothing().unwrap();
        let n = smoothing.iter().find(|p| p.path == "config.smoothing.n").unwrap();
        assert_eq!(n.default, SmoothingConfig::default().n.to_string());
        let max = smoothing.iter().find(|p| p.path == "config.smoothing.max").unwrap();
        assert_eq!((max.default.as_str(), max.kind), ("", "int"));
        assert_eq!(n.id("cert"), "cert-config-smoothing-n");
        assert_eq!(k.id("train"), "train-macer-config-method-k");
    }
}
