//! A CRT study: one robust teacher, its CRT students, one or more robust baselines trained from
//! scratch for each student architecture, and a certification of every model, compared in one
//! table.
//!
//! A study needs no tables of its own: it is an experiment tagged [`STUDY_TAG`] whose runs are
//! named by their role (`teacher`, `crt/<arch>`, `baseline/<label>/<arch>`, `certify/<model
//! role>`). Studies stored before several baselines existed name their one baseline
//! `baseline/<arch>`; the table reads both.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crt_trainer::config::{
    check_lr, check_nonneg, Arch, ConfigError, Dataset, Method, Optimizer, RunKind, SmoothingConfig,
};

use crate::runs::{CreateRunRequest, FieldError, RunError, RunManager};
use crate::store::runs::{Run, RunFilter};
use crate::store::{experiments, runs, Store};

/// The tag that marks an experiment as a study.
pub const STUDY_TAG: &str = "crt-study";
/// The radii the table reports certified accuracy at.
pub const TABLE_RADII: [f64; 4] = [0.25, 0.5, 0.75, 1.0];
/// The most baselines a study may train per student: each one is a full robust training (and a
/// certification) per student architecture, so the list multiplies the study's cost.
pub const MAX_BASELINES: usize = 8;

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
    /// The robust methods each student architecture is also trained with from scratch; absent:
    /// one baseline trained exactly the teacher's way.
    #[serde(default)]
    pub baselines: Option<Vec<BaselineSpec>>,
    #[serde(default)]
    pub certify: SmoothingConfig,
    /// The optimizer (and, where given, learning rate and weight decay) of every run that trains a
    /// model of an architecture: its teacher, CRT student and baselines. E.g. AdamW for `vit`,
    /// which barely learns with SGD in short runs. Architectures not listed use SGD.
    #[serde(default)]
    pub arch_optim: HashMap<Arch, ArchOptim>,
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

/// One baseline recipe; what it leaves out is the teacher's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    pub method: Method,
    #[serde(default)]
    pub epochs: Option<usize>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub lr: Option<f64>,
}

/// One architecture's optimizer in a study (`arch_optim.<arch>`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchOptim {
    pub optimizer: Optimizer,
    /// In place of the teacher's or a baseline's learning rate for this architecture's runs.
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub weight_decay: Option<f64>,
}

/// A baseline with the teacher's values filled in, and the label its run roles carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub label: String,
    pub method: Method,
    pub epochs: usize,
    pub batch_size: Option<usize>,
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
    validate_baselines(req)?;
    validate_arch_optim(req)?;
    for (name, v) in [("train_subset", req.train_subset), ("test_subset", req.test_subset)] {
        if v == Some(0) {
            return Err(FieldError::new(name, "must be at least 1 when given"));
        }
    }
    req.certify.validate("certify").map_err(to_field)
}

/// Each `arch_optim` entry, in the order of [`Arch::ALL`] so the first error is always the same one.
fn validate_arch_optim(req: &StudyRequest) -> Result<(), FieldError> {
    for arch in Arch::ALL {
        let Some(o) = req.arch_optim.get(&arch) else { continue };
        let field = |name: &str| format!("arch_optim.{}.{name}", arch.as_str());
        o.optimizer.validate(&field("optimizer")).map_err(to_field)?;
        if let Some(lr) = o.lr {
            check_lr(&field("lr"), lr).map_err(to_field)?;
        }
        if let Some(wd) = o.weight_decay {
            check_nonneg(&field("weight_decay"), wd).map_err(to_field)?;
        }
    }
    Ok(())
}

/// The baselines' own checks, each error named by its place in the list (`baselines[i].…`).
fn validate_baselines(req: &StudyRequest) -> Result<(), FieldError> {
    let Some(list) = &req.baselines else { return Ok(()) };
    if list.is_empty() {
        return Err(FieldError::new(
            "baselines",
            "list at least one baseline, or leave the field out for one trained the teacher's way",
        ));
    }
    if list.len() > MAX_BASELINES {
        return Err(FieldError::new("baselines", format!("at most {MAX_BASELINES} baselines (got {})", list.len())));
    }
    for (i, b) in list.iter().enumerate() {
        let field = |name: &str| format!("baselines[{i}].{name}");
        if b.method.sigma().is_none() {
            return Err(FieldError::new(
                field("method"),
                "a baseline must be trained for smoothing: a method with a sigma (gaussian, smoothadv, macer, consistency, smoothmix)",
            ));
        }
        b.method.validate(&field("method")).map_err(to_field)?;
        if b.epochs == Some(0) {
            return Err(FieldError::new(field("epochs"), "must be at least 1"));
        }
        if b.batch_size == Some(0) {
            return Err(FieldError::new(field("batch_size"), "must be at least 1"));
        }
        if b.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return Err(FieldError::new(field("lr"), "must be a positive number"));
        }
    }
    // Two equal recipes would train the same model twice under two names: refused, not deduplicated,
    // so the table has exactly the rows the request listed.
    let resolved = req.baselines();
    for (i, b) in resolved.iter().enumerate() {
        if let Some(j) = resolved[..i].iter().position(|a| a.same_recipe(b)) {
            return Err(FieldError::new(
                format!("baselines[{i}]"),
                format!("the same recipe as baselines[{j}] (method, its parameters, epochs, batch_size, lr)"),
            ));
        }
    }
    Ok(())
}

impl Baseline {
    fn same_recipe(&self, other: &Baseline) -> bool {
        self.method == other.method
            && self.epochs == other.epochs
            && self.batch_size == other.batch_size
            && self.lr == other.lr
    }

    /// The model's run role, `baseline/<label>/<arch>`.
    pub fn role(&self, arch: Arch) -> String {
        format!("baseline/{}/{}", self.label, arch.as_str())
    }
}

impl StudyRequest {
    /// The baselines as trained: the teacher's values where a baseline leaves one out, one
    /// teacher-recipe baseline when the request lists none. Each is labelled by its method's
    /// name, with its index in the list appended where that name is listed more than once.
    pub fn baselines(&self) -> Vec<Baseline> {
        let t = &self.teacher;
        let Some(list) = &self.baselines else {
            return vec![Baseline {
                label: t.method.name().to_string(),
                method: t.method.clone(),
                epochs: t.epochs,
                batch_size: t.batch_size,
                lr: t.lr,
            }];
        };
        list.iter()
            .enumerate()
            .map(|(i, b)| {
                let name = b.method.name();
                let repeated = list.iter().filter(|o| o.method.name() == name).count() > 1;
                Baseline {
                    label: if repeated { format!("{name}-{i}") } else { name.to_string() },
                    method: b.method.clone(),
                    epochs: b.epochs.unwrap_or(t.epochs),
                    batch_size: b.batch_size.or(t.batch_size),
                    lr: b.lr.or(t.lr),
                }
            })
            .collect()
    }

    fn data(&self) -> Value {
        json!({ "dataset": self.dataset, "train_subset": self.train_subset, "test_subset": self.test_subset })
    }

    fn optim(epochs: usize, batch_size: Option<usize>, lr: Option<f64>) -> Value {
        let mut optim = json!({ "epochs": epochs });
        if let Some(b) = batch_size {
            optim["batch_size"] = json!(b);
        }
        if let Some(lr) = lr {
            optim["lr"] = json!(lr);
        }
        optim
    }

    /// A run's `optim` for a model of `arch`, with the architecture's `arch_optim` over it.
    fn arch_optim(&self, arch: Arch, epochs: usize, batch_size: Option<usize>, lr: Option<f64>) -> Value {
        let mut optim = Self::optim(epochs, batch_size, lr);
        if let Some(o) = self.arch_optim.get(&arch) {
            optim["optimizer"] = json!(o.optimizer);
            if let Some(lr) = o.lr {
                optim["lr"] = json!(lr);
            }
            if let Some(wd) = o.weight_decay {
                optim["weight_decay"] = json!(wd);
            }
        }
        optim
    }

    fn teacher_config(&self) -> Value {
        let t = &self.teacher;
        self.train_config(t.arch, &t.method, self.arch_optim(t.arch, t.epochs, t.batch_size, t.lr))
    }

    fn baseline_config(&self, arch: Arch, b: &Baseline) -> Value {
        self.train_config(arch, &b.method, self.arch_optim(arch, b.epochs, b.batch_size, b.lr))
    }

    fn train_config(&self, arch: Arch, method: &Method, optim: Value) -> Value {
        json!({
            "kind": "train", "data": self.data(), "arch": arch, "method": method,
            "optim": optim, "seed": self.seed.unwrap_or(0),
        })
    }

    fn transfer_config(&self, arch: Arch) -> Value {
        let t = &self.teacher;
        json!({
            "kind": "transfer", "data": self.data(), "student_arch": arch,
            "loss": { "name": "crt", "logit_weight": self.transfer.logit_weight },
            "optim": self.arch_optim(arch, self.transfer.epochs.unwrap_or(t.epochs), t.batch_size, t.lr),
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
        "CRT study: {} teacher ({} σ={}) → students {}; baselines {}",
        req.teacher.arch.as_str(),
        req.teacher.method.name(),
        req.teacher.method.sigma().unwrap_or_default(),
        req.students.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "),
        req.baselines()
            .iter()
            .map(|b| format!("{} σ={}", b.label, b.method.sigma().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ")
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
    let teacher = manager.create(add("teacher".into(), vec![], req.teacher_config())).await?.id;
    created.insert("teacher".into(), teacher);
    let mut models = vec![("teacher".to_string(), teacher)];
    let baselines = req.baselines();
    for arch in &req.students {
        let crt = format!("crt/{}", arch.as_str());
        let id = manager.create(add(crt.clone(), vec![teacher], req.transfer_config(*arch))).await?.id;
        models.push((crt, id));
        for b in &baselines {
            let role = b.role(*arch);
            let id = manager.create(add(role.clone(), vec![], req.baseline_config(*arch, b))).await?.id;
            models.push((role, id));
        }
    }
    for (role, id) in &models {
        let cert = format!("certify/{role}");
        let cid = manager.create(add(cert.clone(), vec![*id], req.certify_config())).await?.id;
        created.insert(role.clone(), *id);
        created.insert(cert, cid);
    }
    Ok(created)
}

/// What a model is to the study, read from its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleKind {
    Teacher,
    Crt,
    Baseline,
    /// A model run added to the study's experiment by hand.
    Other,
}

/// The kind, student architecture and baseline label a role names: `crt/<arch>`,
/// `baseline/<label>/<arch>`, or a study stored before several baselines, `baseline/<arch>`
/// (label `None`: the caller names it after the run's method).
fn parse_role(role: &str) -> (RoleKind, Option<&str>, Option<&str>) {
    if role == "teacher" {
        return (RoleKind::Teacher, None, None);
    }
    if let Some(arch) = role.strip_prefix("crt/") {
        return (RoleKind::Crt, Some(arch), None);
    }
    match role.strip_prefix("baseline/").map(|rest| rest.rsplit_once('/')) {
        Some(Some((label, arch))) => (RoleKind::Baseline, Some(arch), Some(label)),
        Some(None) => (RoleKind::Baseline, role.strip_prefix("baseline/"), None),
        None => (RoleKind::Other, None, None),
    }
}

/// One model of the study and how it did.
#[derive(Debug, Clone, Serialize)]
pub struct StudyRow {
    pub role: String,
    pub role_kind: RoleKind,
    /// The student architecture a CRT or baseline row belongs to.
    pub student: Option<String>,
    /// A baseline row's label (its method's name, `-<index>` appended where the study lists that
    /// method more than once).
    pub baseline: Option<String>,
    /// The role of the model this one learned from (a CRT student's teacher), for the lineage.
    pub parent: Option<String>,
    /// 0 for a model trained from scratch, its parent's generation + 1 otherwise.
    pub generation: usize,
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
    /// How many test images were certified (certification summary `images`).
    pub images: Option<u64>,
    /// Certified accuracy at each of [`TABLE_RADII`].
    pub certified_acc: Vec<Option<f64>>,
    /// The binomial standard error of each `certified_acc`, sqrt(p(1-p)/images).
    pub certified_acc_se: Vec<Option<f64>>,
    pub acr: Option<f64>,
    pub train_wall_time_s: f64,
    /// On baseline rows, once both have finished: this baseline's training time / the CRT
    /// student's of the same architecture (how many times faster CRT trained).
    pub speedup: Option<f64>,
}

/// One student architecture: its CRT model beside each of its baselines.
#[derive(Debug, Clone, Serialize)]
pub struct StudentGroup {
    pub arch: String,
    /// The CRT model's role.
    pub crt: Option<String>,
    pub baselines: Vec<Versus>,
}

/// The CRT student against one baseline of its architecture.
#[derive(Debug, Clone, Serialize)]
pub struct Versus {
    pub label: String,
    pub role: String,
    /// Baseline training time / CRT training time, once both have finished.
    pub speedup: Option<f64>,
}

/// A model's certified accuracy as a function of radius.
#[derive(Debug, Clone, Serialize)]
pub struct Curve {
    pub role: String,
    /// (radius, certified accuracy), by increasing radius.
    pub points: Vec<(f64, f64)>,
}

/// `GET /api/v1/studies/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct StudyTable {
    pub experiment_id: i64,
    pub name: String,
    pub radii: Vec<f64>,
    /// Every model, in creation order: the teacher, then per student its CRT model and baselines.
    pub rows: Vec<StudyRow>,
    /// Per student architecture, in the order the study lists them.
    pub students: Vec<StudentGroup>,
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

/// The binomial standard error of a proportion `p` measured on `n` images.
fn binomial_se(p: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| (p * (1.0 - p) / n as f64).max(0.0).sqrt())
}

fn model_row(model: &Run, cert: Option<&Run>) -> StudyRow {
    let curve = cert.and_then(|c| c.summary.as_ref()).map(curve_of).unwrap_or_default();
    let max_radius = cert.and_then(|c| metric(c, "max_radius"));
    let images = cert.and_then(|c| metric(c, "images")).filter(|n| *n >= 0.0).map(|n| n.round() as u64);
    let certified_acc: Vec<Option<f64>> =
        TABLE_RADII.iter().map(|r| if curve.is_empty() { None } else { at_radius(&curve, max_radius, *r) }).collect();
    let (role_kind, student, label) = parse_role(&model.name);
    let baseline = match role_kind {
        // An old `baseline/<arch>` row is named after its method, as a new one would be.
        RoleKind::Baseline => Some(label.or(model.method.as_deref()).unwrap_or("baseline").to_string()),
        _ => None,
    };
    StudyRow {
        role: model.name.clone(),
        role_kind,
        student: student.map(str::to_string),
        baseline,
        parent: None,
        generation: 0,
        arch: model.arch.clone(),
        method: model.method.clone(),
        sigma: model.sigma,
        train_run: model.id,
        train_status: model.status.as_str().to_string(),
        certify_run: cert.map(|c| c.id),
        certify_status: cert.map(|c| c.status.as_str().to_string()),
        test_acc: metric(model, "test/acc"),
        clean_acc: cert.and_then(|c| metric(c, "clean_acc").or_else(|| metric(c, "certified_acc@0"))),
        images,
        certified_acc_se: certified_acc.iter().map(|p| binomial_se((*p)?, images?)).collect(),
        certified_acc,
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
    Ok(Some(assemble(experiment_id, exp.name, all)))
}

/// The table of a study's runs.
fn assemble(experiment_id: i64, name: String, mut all: Vec<Run>) -> StudyTable {
    // Creation order is the study's own: teacher, then each student's CRT model and baselines.
    all.sort_by_key(|r| r.id);
    let done = all.iter().all(|r| !r.status.is_active());
    let models: Vec<&Run> = all.iter().filter(|r| r.kind.makes_model()).collect();
    let mut rows: Vec<StudyRow> = models
        .iter()
        .map(|m| {
            let cert = all.iter().find(|c| c.kind == RunKind::Certify && c.parents.contains(&m.id));
            model_row(m, cert)
        })
        .collect();
    link_lineage(&mut rows, &models);
    let students = compare(&mut rows);
    let curves = all
        .iter()
        .filter(|c| c.kind == RunKind::Certify)
        .filter_map(|c| {
            let role = c.name.strip_prefix("certify/").unwrap_or(&c.name).to_string();
            Some(Curve { role, points: curve_of(c.summary.as_ref()?) })
        })
        .collect();
    StudyTable { experiment_id, name, radii: TABLE_RADII.to_vec(), rows, students, curves, done }
}

/// Each row's parent among the study's models and its generation (`models[i]` is `rows[i]`'s run).
fn link_lineage(rows: &mut [StudyRow], models: &[&Run]) {
    let parent_of: Vec<Option<usize>> =
        models.iter().map(|m| models.iter().position(|p| m.parents.contains(&p.id))).collect();
    for i in 0..rows.len() {
        rows[i].parent = parent_of[i].map(|p| rows[p].role.clone());
        // Parents are created before their children, so the walk ends; the bound guards a bad row.
        let (mut generation, mut at) = (0, parent_of[i]);
        while let Some(p) = at.filter(|_| generation < rows.len()) {
            generation += 1;
            at = parent_of[p];
        }
        rows[i].generation = generation;
    }
}

/// Groups the rows by student architecture and sets each baseline row's speedup: the baseline's
/// training time over the CRT model's, both finished.
fn compare(rows: &mut [StudyRow]) -> Vec<StudentGroup> {
    let finished = |r: &StudyRow| (r.train_status == "finished").then_some(r.train_wall_time_s);
    let mut groups: Vec<StudentGroup> = Vec::new();
    for i in 0..rows.len() {
        let Some(arch) = rows[i].student.clone() else { continue };
        let crt = rows.iter().find(|r| r.role_kind == RoleKind::Crt && r.student.as_deref() == Some(&arch));
        let speedup = match (rows[i].role_kind, crt) {
            (RoleKind::Baseline, Some(crt)) => match (finished(&rows[i]), finished(crt)) {
                (Some(base), Some(crt)) if crt > 0.0 => Some(base / crt),
                _ => None,
            },
            _ => None,
        };
        let crt_role = crt.map(|c| c.role.clone());
        rows[i].speedup = speedup;
        let group = match groups.iter().position(|g| g.arch == arch) {
            Some(g) => &mut groups[g],
            None => {
                groups.push(StudentGroup { arch: arch.clone(), crt: crt_role, baselines: Vec::new() });
                groups.last_mut().expect("just pushed")
            }
        };
        if rows[i].role_kind == RoleKind::Baseline {
            let label = rows[i].baseline.clone().unwrap_or_default();
            group.baselines.push(Versus { label, role: rows[i].role.clone(), speedup });
        }
    }
    groups
}

/// The table as CSV: one header line, one line per model; empty cells for missing values.
pub fn to_csv(table: &StudyTable) -> String {
    let mut header = [
        "role",
        "arch",
        "method",
        "sigma",
        "role_kind",
        "student",
        "baseline",
        "parent",
        "generation",
        "train_status",
        "certify_status",
        "test_acc",
        "clean_acc",
        "images",
    ]
    .map(String::from)
    .to_vec();
    header.extend(table.radii.iter().map(|r| format!("certified_acc@{r}")));
    header.extend(table.radii.iter().map(|r| format!("certified_acc_se@{r}")));
    header.extend(["acr", "train_wall_time_s", "speedup"].map(String::from));
    let mut out = header.join(",") + "\n";
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let opt = |v: Option<&str>| cell(v.unwrap_or(""));
    for r in &table.rows {
        let kind = serde_json::to_value(r.role_kind).ok().and_then(|v| v.as_str().map(String::from));
        let mut cells = vec![
            cell(&r.role),
            opt(r.arch.as_deref()),
            opt(r.method.as_deref()),
            num(r.sigma),
            opt(kind.as_deref()),
            opt(r.student.as_deref()),
            opt(r.baseline.as_deref()),
            opt(r.parent.as_deref()),
            r.generation.to_string(),
            cell(&r.train_status),
            opt(r.certify_status.as_deref()),
            num(r.test_acc),
            num(r.clean_acc),
            r.images.map(|n| n.to_string()).unwrap_or_default(),
        ];
        cells.extend(r.certified_acc.iter().map(|v| num(*v)));
        cells.extend(r.certified_acc_se.iter().map(|v| num(*v)));
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
        let mut bad = base.clone();
        bad["students"] = json!(["linear", "linear"]);
        assert_eq!(validate(&serde_json::from_value(bad).unwrap()).unwrap_err().field, "students[1]");

        let field_of = |baselines: Value| {
            let mut body = base.clone();
            body["baselines"] = baselines;
            validate(&serde_json::from_value(body).unwrap()).err().map(|e| e.field)
        };
        let gaussian = json!({"method": {"name": "gaussian", "sigma": 0.25}});
        assert_eq!(field_of(json!([gaussian, {"method": {"name": "macer", "sigma": 0.25, "k": 2}}])), None);
        assert_eq!(field_of(json!([])).as_deref(), Some("baselines"));
        assert_eq!(field_of(json!(vec![gaussian.clone(); MAX_BASELINES + 1])).as_deref(), Some("baselines"));
        assert_eq!(
            field_of(json!([gaussian, {"method": {"name": "standard"}}])).as_deref(),
            Some("baselines[1].method")
        );
        assert_eq!(
            field_of(json!([{"method": {"name": "macer", "sigma": 0.25, "k": 0}}])).as_deref(),
            Some("baselines[0].method.k")
        );
        assert_eq!(
            field_of(json!([{"method": gaussian["method"], "epochs": 0}])).as_deref(),
            Some("baselines[0].epochs")
        );
        // Equal once the teacher's values fill in: the teacher trains 1 epoch.
        assert_eq!(
            field_of(json!([gaussian, {"method": gaussian["method"], "epochs": 1}])).as_deref(),
            Some("baselines[1]")
        );
        assert_eq!(field_of(json!([gaussian, {"method": gaussian["method"], "epochs": 2}])), None);
    }

    #[test]
    fn arch_optim_sets_the_optimizer_of_every_run_of_its_architecture() {
        let mut body = json!({"name": "s",
            "teacher": {"arch": "lenet", "method": {"name": "gaussian", "sigma": 0.25}, "epochs": 1, "lr": 0.05},
            "students": ["lenet", "vit"],
            "baselines": [{"method": {"name": "macer", "sigma": 0.25}, "lr": 0.1}],
            "arch_optim": {"vit": {"optimizer": {"name": "adamw"}, "lr": 0.001, "weight_decay": 0.05}}});
        let req: StudyRequest = serde_json::from_value(body.clone()).unwrap();
        validate(&req).unwrap();
        let b = &req.baselines()[0];
        let optim_of = |mut config: Value| {
            if config["kind"] == "transfer" {
                // Filled in from the parent run when the server creates it.
                config["teacher"] = json!("runs/1");
            }
            let run: crt_trainer::config::RunConfig = serde_json::from_value(config.clone()).unwrap();
            run.validate().unwrap();
            config["optim"].clone()
        };
        for optim in [optim_of(req.transfer_config(Arch::Vit)), optim_of(req.baseline_config(Arch::Vit, b))] {
            assert_eq!(optim["optimizer"], json!({"name": "adamw", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}));
            assert_eq!((optim["lr"].as_f64(), optim["weight_decay"].as_f64()), (Some(0.001), Some(0.05)));
        }
        let teacher = optim_of(req.teacher_config());
        let crt_lenet = optim_of(req.transfer_config(Arch::Lenet));
        let baseline_lenet = optim_of(req.baseline_config(Arch::Lenet, b));
        for optim in [&teacher, &crt_lenet, &baseline_lenet] {
            assert!(optim.get("optimizer").is_none() && optim.get("weight_decay").is_none(), "{optim}");
        }
        assert_eq!((teacher["lr"].as_f64(), baseline_lenet["lr"].as_f64()), (Some(0.05), Some(0.1)));

        let field_of = |entry: Value| {
            let mut bad = body.clone();
            bad["arch_optim"]["vit"] = entry;
            validate(&serde_json::from_value(bad).unwrap()).err().map(|e| e.field)
        };
        let adamw = json!({"name": "adamw"});
        assert_eq!(field_of(json!({"optimizer": adamw, "lr": 0.0})).as_deref(), Some("arch_optim.vit.lr"));
        assert_eq!(
            field_of(json!({"optimizer": {"name": "adamw", "beta1": 1.5}})).as_deref(),
            Some("arch_optim.vit.optimizer.beta1")
        );
        assert_eq!(
            field_of(json!({"optimizer": adamw, "weight_decay": -1.0})).as_deref(),
            Some("arch_optim.vit.weight_decay")
        );
        body["arch_optim"] = json!({"vgg": {"optimizer": adamw}});
        assert!(serde_json::from_value::<StudyRequest>(body.clone()).is_err(), "an unknown architecture");
        body["arch_optim"] = json!({"vit": {"optimizer": adamw, "momentum": 0.9}});
        assert!(serde_json::from_value::<StudyRequest>(body).is_err(), "an unknown field");
    }

    #[test]
    fn baseline_labels_and_roles() {
        let mut body = json!({"name": "s", "teacher": {"arch": "lenet", "method": {"name": "smoothadv", "sigma": 0.5}, "epochs": 3, "lr": 0.05},
            "students": ["linear"]});
        let req: StudyRequest = serde_json::from_value(body.clone()).unwrap();
        let only = req.baselines();
        assert_eq!(only.len(), 1, "no list: one baseline, the teacher's recipe");
        assert_eq!((only[0].label.as_str(), only[0].epochs, only[0].lr), ("smoothadv", 3, Some(0.05)));
        assert_eq!(only[0].method, req.teacher.method);
        body["baselines"] = json!([
            {"method": {"name": "gaussian", "sigma": 0.25}},
            {"method": {"name": "macer", "sigma": 0.25}, "epochs": 1},
            {"method": {"name": "gaussian", "sigma": 0.5}, "lr": 0.1},
        ]);
        let req: StudyRequest = serde_json::from_value(body).unwrap();
        let labels: Vec<String> = req.baselines().iter().map(|b| b.role(Arch::Linear)).collect();
        assert_eq!(labels, ["baseline/gaussian-0/linear", "baseline/macer/linear", "baseline/gaussian-2/linear"]);
        let b = req.baselines();
        assert_eq!((b[1].epochs, b[2].epochs, b[2].lr, b[0].lr), (1, 3, Some(0.1), Some(0.05)));
        // Roles as stored, old and new, read back.
        assert_eq!(parse_role("baseline/linear"), (RoleKind::Baseline, Some("linear"), None));
        assert_eq!(parse_role("baseline/gaussian-0/linear"), (RoleKind::Baseline, Some("linear"), Some("gaussian-0")));
        assert_eq!(parse_role("crt/mlp"), (RoleKind::Crt, Some("mlp"), None));
        assert_eq!(parse_role("teacher"), (RoleKind::Teacher, None, None));
        assert_eq!(parse_role("my run"), (RoleKind::Other, None, None));
    }

    /// A finished model run of the study.
    fn model(id: i64, name: &str, kind: RunKind, method: &str, wall: f64, parents: Vec<i64>) -> Run {
        Run {
            name: name.into(),
            status: crate::runs::RunStatus::Finished,
            method: Some(method.into()),
            wall_time_s: wall,
            parents,
            ..Run::example(id, kind)
        }
    }

    fn certification(id: i64, of: &Run) -> Run {
        Run {
            name: format!("certify/{}", of.name),
            status: crate::runs::RunStatus::Finished,
            parents: vec![of.id],
            summary: Some(json!({"certified_acc@0": 0.9, "certified_acc@0.25": 0.6, "certified_acc@0.5": 0.5,
                "max_radius": 0.6, "images": 30.0, "acr": 0.3, "clean_acc": 0.9})),
            ..Run::example(id, RunKind::Certify)
        }
    }

    #[test]
    fn table_of_an_old_study_and_a_new_one() {
        // Stored before several baselines: one `baseline/<arch>`, labelled by its method.
        let teacher = model(1, "teacher", RunKind::Train, "smoothadv", 10.0, vec![]);
        let crt = model(2, "crt/linear", RunKind::Transfer, "crt", 2.0, vec![1]);
        let base = model(3, "baseline/linear", RunKind::Train, "smoothadv", 5.0, vec![]);
        let certs: Vec<Run> =
            [&teacher, &crt, &base].iter().enumerate().map(|(i, m)| certification(10 + i as i64, m)).collect();
        let mut all = vec![base.clone(), teacher.clone(), crt.clone()];
        all.extend(certs);
        let t = assemble(7, "old".into(), all);
        let roles: Vec<&str> = t.rows.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(roles, ["teacher", "crt/linear", "baseline/linear"], "creation order");
        assert_eq!(t.rows[2].baseline.as_deref(), Some("smoothadv"));
        assert_eq!(t.rows[2].speedup, Some(2.5));
        assert_eq!((t.rows[1].parent.as_deref(), t.rows[1].generation), (Some("teacher"), 1));
        assert_eq!((t.rows[2].parent.as_deref(), t.rows[2].generation), (None, 0));
        assert_eq!(t.students.len(), 1);
        assert_eq!((t.students[0].crt.as_deref(), t.students[0].baselines[0].speedup), (Some("crt/linear"), Some(2.5)));
        let se = (0.6_f64 * 0.4 / 30.0).sqrt();
        assert_eq!(t.rows[0].certified_acc, [Some(0.6), Some(0.5), Some(0.0), Some(0.0)]);
        assert_eq!(t.rows[0].certified_acc_se, [Some(se), Some((0.25_f64 / 30.0).sqrt()), Some(0.0), Some(0.0)]);
        assert!(t.done);

        // Two baselines, one still running: its speedup waits; a CRT student of the CRT student
        // is a second generation.
        let gauss = model(4, "baseline/gaussian/linear", RunKind::Train, "gaussian", 4.0, vec![]);
        let mut macer = model(5, "baseline/macer/linear", RunKind::Train, "macer", 1.0, vec![]);
        macer.status = crate::runs::RunStatus::Running;
        let grandchild = model(6, "crt/mlp", RunKind::Transfer, "crt", 1.0, vec![2]);
        let t = assemble(8, "new".into(), vec![teacher, crt, gauss, macer, grandchild]);
        let versus: Vec<(&str, Option<f64>)> =
            t.students[0].baselines.iter().map(|v| (v.label.as_str(), v.speedup)).collect();
        assert_eq!(versus, [("gaussian", Some(2.0)), ("macer", None)]);
        assert_eq!((t.rows[4].parent.as_deref(), t.rows[4].generation), (Some("crt/linear"), 2));
        assert_eq!((t.students[1].arch.as_str(), t.students[1].baselines.len()), ("mlp", 0));
        assert!(!t.done && t.rows.iter().all(|r| r.certified_acc == [None; 4]));
        let csv = to_csv(&t);
        assert_eq!(csv.lines().count(), 6);
        assert!(
            csv.lines().nth(3).unwrap().starts_with("baseline/gaussian/linear,,gaussian,,baseline,linear,gaussian,,0,"),
            "{csv}"
        );
    }

    #[test]
    fn standard_error() {
        assert_eq!(binomial_se(0.5, 100), Some(0.05));
        assert_eq!(binomial_se(1.0, 10), Some(0.0));
        assert_eq!(binomial_se(0.5, 0), None);
    }
}
