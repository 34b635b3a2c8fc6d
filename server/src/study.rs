//! A CRT study: one robust teacher, its CRT students, a baseline trained the teacher's way for
//! each student architecture, and a certification of every model, compared in one table.
//!
//! A study needs no tables of its own: it is an experiment tagged [`STUDY_TAG`] whose runs are
//! named by their role (`teacher`, `crt/<arch>`, `baseline/<arch>`, `certify/<model role>`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crt_trainer::config::{Arch, ConfigError, Dataset, Method, RunKind, SmoothingConfig};

use crate::runs::{CreateRunRequest, FieldError, RunError, RunManager};
use crate::store::runs::{Run, RunFilter};
use crate::store::{experiments, runs, Store};

/// The tag that marks an experiment as a study.
pub const STUDY_TAG: &str = "crt-study";
/// The radii the table reports certified accuracy at.
pub const TABLE_RADII: [f64; 4] = [0.25, 0.5, 0.75, 1.0];

/// `POST /api/v1/studies`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyRequest {
    pub name: String,
    #[serde(default = "default_dataset")]
    pub dataset: Dataset,
    pub teacher: TeacherSpec,
    pub students: Vec<Arch>,
    #[serde(default)]
    pub transfer: TransferSpec,
    #[serde(default)]
    pub certify: SmoothingConfig,
    #[serde(default)]
    pub train_subset: Option<usize>,
    #[serde(default)]
    pub test_subset: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_dataset() -> Dataset {
    Dataset::Mnist
}

/// How the teacher (and, with the same recipe, each baseline) is trained.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSpec {
    pub arch: Arch,
    pub method: Method,
    pub epochs: usize,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSpec {
    #[serde(default = "one")]
    pub logit_weight: f64,
    /// Defaults to the teacher's epochs.
    #[serde(default)]
    pub epochs: Option<usize>,
}

fn one() -> f64 {
    1.0
}

impl Default for TransferSpec {
    fn default() -> Self {
        TransferSpec { logit_weight: 1.0, epochs: None }
    }
}

/// What `POST /api/v1/studies` returns: the experiment and each role's run id.
#[derive(Debug, Serialize)]
pub struct StudyCreated {
    pub experiment_id: i64,
    pub runs: BTreeMap<String, i64>,
}

fn to_field(e: ConfigError) -> FieldError {
    FieldError::new(e.field, e.message)
}

/// Checks what the trainer configs cannot check on their own (they are checked again, fully,
/// when each run is created), so a bad study is refused before anything is stored.
pub fn validate(req: &StudyRequest) -> Result<(), FieldError> {
    if req.name.trim().is_empty() {
        return Err(FieldError::new("name", "must not be empty"));
    }
    if req.teacher.method.sigma().is_none() {
        return Err(FieldError::new(
            "teacher.method",
            "the teacher must be trained for smoothing: a method with a sigma (gaussian, smoothadv, macer, consistency, smoothmix)",
        ));
    }
    req.teacher.method.validate("teacher.method").map_err(to_field)?;
    if req.teacher.epochs == 0 {
        return Err(FieldError::new("teacher.epochs", "must be at least 1"));
    }
    if req.teacher.batch_size == Some(0) {
        return Err(FieldError::new("teacher.batch_size", "must be at least 1"));
    }
    if req.teacher.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
        return Err(FieldError::new("teacher.lr", "must be a positive number"));
    }
    if req.students.is_empty() {
        return Err(FieldError::new("students", "list at least one student architecture, e.g. [\"linear\"]"));
    }
    for (i, arch) in req.students.iter().enumerate() {
        if req.students[..i].contains(arch) {
            return Err(FieldError::new(format!("students[{i}]"), format!("{} is listed twice", arch.as_str())));
        }
    }
    if !(0.0..=1.0).contains(&req.transfer.logit_weight) {
        return Err(FieldError::new("transfer.logit_weight", "must be in [0, 1]"));
    }
    if req.transfer.epochs == Some(0) {
        return Err(FieldError::new("transfer.epochs", "must be at least 1"));
    }
    for (name, v) in [("train_subset", req.train_subset), ("test_subset", req.test_subset)] {
        if v == Some(0) {
            return Err(FieldError::new(name, "must be at least 1 when given"));
        }
    }
    req.certify.validate("certify").map_err(to_field)
}

impl StudyRequest {
    fn data(&self) -> Value {
        json!({ "dataset": self.dataset, "train_subset": self.train_subset, "test_subset": self.test_subset })
    }

    fn optim(&self, epochs: usize) -> Value {
        let mut optim = json!({ "epochs": epochs });
        if let Some(b) = self.teacher.batch_size {
            optim["batch_size"] = json!(b);
        }
        if let Some(lr) = self.teacher.lr {
            optim["lr"] = json!(lr);
        }
        optim
    }

    fn train_config(&self, arch: Arch) -> Value {
        json!({
            "kind": "train", "data": self.data(), "arch": arch, "method": self.teacher.method,
            "optim": self.optim(self.teacher.epochs), "seed": self.seed.unwrap_or(0),
        })
    }

    fn transfer_config(&self, arch: Arch) -> Value {
        json!({
            "kind": "transfer", "data": self.data(), "student_arch": arch,
            "loss": { "name": "crt", "logit_weight": self.transfer.logit_weight },
            "optim": self.optim(self.transfer.epochs.unwrap_or(self.teacher.epochs)),
            "seed": self.seed.unwrap_or(0),
        })
    }

    fn certify_config(&self) -> Value {
        json!({ "kind": "certify", "smoothing": self.certify })
    }
}

/// Validates the study, creates its experiment and every run (queued; the manager starts each
/// once its parent has finished).
pub async fn create(manager: &RunManager, req: &StudyRequest) -> Result<StudyCreated, RunError> {
    validate(req)?;
    let description = format!(
        "CRT study: {} teacher ({} σ={}) → students {}",
        req.teacher.arch.as_str(),
        req.teacher.method.name(),
        req.teacher.method.sigma().unwrap_or_default(),
        req.students.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
    );
    let exp = experiments::create(manager.store(), req.name.trim(), &description, &[STUDY_TAG.to_string()]).await?;
    match create_runs(manager, req, exp.id).await {
        Ok(runs) => Ok(StudyCreated { experiment_id: exp.id, runs }),
        Err(e) => {
            // A refused run leaves no half-made study behind (its queued runs go with it).
            if let Err(d) = experiments::delete(manager.store(), exp.id).await {
                tracing::warn!(experiment = exp.id, "removing a half-created study: {d:#}");
            }
            Err(e)
        }
    }
}

/// The study's runs, by role.
async fn create_runs(
    manager: &RunManager,
    req: &StudyRequest,
    experiment_id: i64,
) -> Result<BTreeMap<String, i64>, RunError> {
    let mut created = BTreeMap::new();
    let add = |role: String, parents: Vec<i64>, config: Value| CreateRunRequest {
        experiment_id,
        name: Some(role),
        parents,
        config,
        device: None,
        backend: None,
        slurm: None,
    };
    let teacher = manager.create(add("teacher".into(), vec![], req.train_config(req.teacher.arch))).await?.id;
    created.insert("teacher".into(), teacher);
    let mut models = vec![("teacher".to_string(), teacher)];
    for arch in &req.students {
        let crt = format!("crt/{}", arch.as_str());
        let id = manager.create(add(crt.clone(), vec![teacher], req.transfer_config(*arch))).await?.id;
        models.push((crt, id));
        let base = format!("baseline/{}", arch.as_str());
        let id = manager.create(add(base.clone(), vec![], req.train_config(*arch))).await?.id;
        models.push((base, id));
    }
    for (role, id) in &models {
        let cert = format!("certify/{role}");
        let cid = manager.create(add(cert.clone(), vec![*id], req.certify_config())).await?.id;
        created.insert(role.clone(), *id);
        created.insert(cert, cid);
    }
    Ok(created)
}

/// One model of the study and how it did.
#[derive(Debug, Clone, Serialize)]
pub struct StudyRow {
    pub role: String,
    pub arch: Option<String>,
    pub method: Option<String>,
    pub sigma: Option<f64>,
    pub train_run: i64,
    pub train_status: String,
    pub certify_run: Option<i64>,
    pub certify_status: Option<String>,
    /// Accuracy of the base model on the test set (training summary `test/acc`).
    pub test_acc: Option<f64>,
    /// Accuracy of the smoothed classifier (certification summary `clean_acc`).
    pub clean_acc: Option<f64>,
    /// Certified accuracy at each of [`TABLE_RADII`].
    pub certified_acc: Vec<Option<f64>>,
    pub acr: Option<f64>,
    pub train_wall_time_s: f64,
    /// Baseline training time / CRT training time, on CRT rows once both have finished.
    pub speedup: Option<f64>,
}

/// A model's certified accuracy as a function of radius.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub role: String,
    /// (radius, certified accuracy), by increasing radius.
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StudyTable {
    pub experiment_id: i64,
    pub name: String,
    pub radii: Vec<f64>,
    pub rows: Vec<StudyRow>,
    pub curves: Vec<Curve>,
    /// True once every run has ended (finished, failed, stopped, …).
    pub done: bool,
}

fn metric(run: &Run, key: &str) -> Option<f64> {
    run.summary.as_ref()?.get(key)?.as_f64()
}

/// The `certified_acc@R` entries of a certification summary, by increasing radius.
pub fn curve_of(summary: &Value) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = summary
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_prefix("certified_acc@")?.parse().ok()?, v.as_f64()?)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Certified accuracy at `r`: the summary's value at exactly that radius; 0 beyond `max_radius`,
/// the largest radius these N and α can certify at all (the summary lists radii only up to it);
/// unknown otherwise (between two listed radii it lies between their values, not at either).
fn at_radius(points: &[(f64, f64)], max_radius: Option<f64>, r: f64) -> Option<f64> {
    if let Some(&(_, acc)) = points.iter().find(|(pr, _)| (pr - r).abs() < 1e-9) {
        return Some(acc);
    }
    max_radius.filter(|&m| r > m).map(|_| 0.0)
}

fn model_row(model: &Run, cert: Option<&Run>) -> StudyRow {
    let curve = cert.and_then(|c| c.summary.as_ref()).map(curve_of).unwrap_or_default();
    let max_radius = cert.and_then(|c| metric(c, "max_radius"));
    StudyRow {
        role: model.name.clone(),
        arch: model.arch.clone(),
        method: model.method.clone(),
        sigma: model.sigma,
        train_run: model.id,
        train_status: model.status.as_str().to_string(),
        certify_run: cert.map(|c| c.id),
        certify_status: cert.map(|c| c.status.as_str().to_string()),
        test_acc: metric(model, "test/acc"),
        clean_acc: cert.and_then(|c| metric(c, "clean_acc").or_else(|| metric(c, "certified_acc@0"))),
        certified_acc: TABLE_RADII
            .iter()
            .map(|r| if curve.is_empty() { None } else { at_radius(&curve, max_radius, *r) })
            .collect(),
        acr: cert.and_then(|c| metric(c, "acr")),
        train_wall_time_s: model.wall_time_s,
        speedup: None,
    }
}

/// The comparison table of a study; `None` when `experiment_id` is not a study.
pub async fn table(store: &Store, experiment_id: i64) -> anyhow::Result<Option<StudyTable>> {
    let Some(exp) = experiments::get(&store.pool, experiment_id).await? else { return Ok(None) };
    if !exp.tags.iter().any(|t| t == STUDY_TAG) {
        return Ok(None);
    }
    let filter = RunFilter { experiment_id: Some(experiment_id), limit: 10_000, ..RunFilter::default() };
    let all = runs::list(&store.pool, &filter).await?;
    let done = all.iter().all(|r| !r.status.is_active());
    let models = all.iter().filter(|r| r.kind.makes_model());
    let mut rows: Vec<StudyRow> = models
        .map(|m| {
            let cert = all.iter().find(|c| c.kind == RunKind::Certify && c.parents.contains(&m.id));
            model_row(m, cert)
        })
        .collect();
    let finished_time =
        |role: &str| rows.iter().find(|r| r.role == role && r.train_status == "finished").map(|r| r.train_wall_time_s);
    let speedups: Vec<Option<f64>> = rows
        .iter()
        .map(|row| {
            let arch = row.role.strip_prefix("crt/")?;
            let (base, crt) = (finished_time(&format!("baseline/{arch}"))?, finished_time(&row.role)?);
            (crt > 0.0).then(|| base / crt)
        })
        .collect();
    for (row, s) in rows.iter_mut().zip(speedups) {
        row.speedup = s;
    }
    let curves = all
        .iter()
        .filter(|c| c.kind == RunKind::Certify)
        .filter_map(|c| {
            let role = c.name.strip_prefix("certify/").unwrap_or(&c.name).to_string();
            Some(Curve { role, points: curve_of(c.summary.as_ref()?) })
        })
        .collect();
    Ok(Some(StudyTable { experiment_id, name: exp.name, radii: TABLE_RADII.to_vec(), rows, curves, done }))
}

/// The table as CSV: one header line, one line per model; empty cells for missing values.
pub fn to_csv(table: &StudyTable) -> String {
    let mut header = vec!["role", "arch", "method", "sigma", "train_status", "certify_status", "test_acc", "clean_acc"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    header.extend(table.radii.iter().map(|r| format!("certified_acc@{r}")));
    header.extend(["acr", "train_wall_time_s", "speedup"].map(String::from));
    let mut out = header.join(",") + "\n";
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in &table.rows {
        let mut cells = vec![
            cell(&r.role),
            cell(r.arch.as_deref().unwrap_or("")),
            cell(r.method.as_deref().unwrap_or("")),
            num(r.sigma),
            cell(&r.train_status),
            cell(r.certify_status.as_deref().unwrap_or("")),
            num(r.test_acc),
            num(r.clean_acc),
        ];
        cells.extend(r.certified_acc.iter().map(|v| num(*v)));
        cells.extend([num(r.acr), r.train_wall_time_s.to_string(), num(r.speedup)]);
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// A CSV cell, quoted when it holds a separator, quote or line break (RFC 4180).
fn cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_and_radius_lookup() {
        let s = json!({"certified_acc@0": 0.9, "certified_acc@0.5": 0.6, "certified_acc@0.25": 0.8, "acr": 0.4});
        let c = curve_of(&s);
        assert_eq!(c, vec![(0.0, 0.9), (0.25, 0.8), (0.5, 0.6)]);
        assert_eq!(at_radius(&c, Some(0.6), 0.25), Some(0.8));
        assert_eq!(at_radius(&c, Some(0.6), 0.5), Some(0.6));
        // Beyond the largest certifiable radius nothing is certified; off the grid it is unknown.
        assert_eq!(at_radius(&c, Some(0.6), 0.75), Some(0.0));
        assert_eq!(at_radius(&c, Some(0.6), 0.3), None);
        assert_eq!(at_radius(&c, None, 0.75), None);
        assert_eq!(cell("a,b"), "\"a,b\"");
    }

    #[test]
    fn validation_names_fields() {
        let base = json!({"name": "s", "teacher": {"arch": "lenet", "method": {"name": "gaussian", "sigma": 0.25}, "epochs": 1},
            "students": ["linear"]});
        let req: StudyRequest = serde_json::from_value(base.clone()).unwrap();
        assert!(validate(&req).is_ok());
        let mut bad = base.clone();
        bad["teacher"]["method"]["sigma"] = json!(0.0);
        let e = validate(&serde_json::from_value(bad).unwrap()).unwrap_err();
        assert_eq!(e.field, "teacher.method.sigma");
        let mut bad = base.clone();
        bad["certify"] = json!({"n": 0});
        let e = validate(&serde_json::from_value(bad).unwrap()).unwrap_err();
        assert_eq!(e.field, "certify.n");
        let mut bad = base;
        bad["students"] = json!(["linear", "linear"]);
        assert_eq!(validate(&serde_json::from_value(bad).unwrap()).unwrap_err().field, "students[1]");
    }
}
