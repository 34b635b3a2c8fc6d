//! The JSON API under `/api/v1` (documented in docs/api.md and at /api/openapi.json).

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;

use crt_trainer::config::{Arch, Dataset, Method, RunKind};

use super::errors::{ApiError, JsonBody};
use super::{sse, AppState};
use crate::certified;
use crate::downsample::downsample;
use crate::runs::{CreateRunRequest, RunStatus};
use crate::store::experiments::{self, Experiment, ExperimentPatch};
use crate::store::journal::{self, Scope};
use crate::store::metrics::{self, MetricPoint};
use crate::store::runs::{self, Run, RunFilter, SortKey};
use crate::store::{artifacts, certificates, logs};

/// Path segments (`P<i64>`, `P<(i64, String)>`), with failures as JSON `ApiError`s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct P<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Q<T>(pub T);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/devices", get(super::devices::get_devices))
        .route("/experiments", get(list_experiments).post(create_experiment))
        .route("/experiments/{id}", get(get_experiment).patch(update_experiment).delete(delete_experiment))
        .route("/experiments/{id}/runs", get(list_experiment_runs))
        .route("/experiments/{id}/events", get(sse::experiment_events))
        .route("/runs", get(list_runs).post(create_run))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/stop", post(stop_run))
        .route("/runs/{id}/resume", post(resume_run))
        .route("/runs/{id}/metrics", get(metric_history))
        .route("/runs/{id}/logs", get(run_logs))
        .route("/runs/{id}/artifacts", get(list_artifacts))
        .route("/runs/{id}/artifacts/{*path}", get(download_artifact))
        .route("/runs/{id}/certificates", get(list_certificates))
        .route("/runs/{id}/certificates/summary", get(certificate_summary))
        .route("/runs/{id}/events", get(sse::run_events))
}

async fn health(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    sqlx::query("SELECT 1").execute(&app.store.pool).await.map_err(anyhow::Error::from)?;
    Ok(Json(serde_json::json!({ "status": "ok", "database": format!("{:?}", app.store.dialect).to_lowercase() })))
}

// ---------- experiments ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewExperiment {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentUpdate {
    name: Option<String>,
    description: Option<String>,
    tags: Option<Vec<String>>,
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::Invalid { field: "name".into(), message: "must be 1 to 200 characters".into() });
    }
    Ok(name.to_string())
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, ApiError> {
    tags.iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.trim();
            if t.is_empty() || t.chars().count() > 64 {
                Err(ApiError::Invalid {
                    field: format!("tags[{i}]"),
                    message: "a tag must be 1 to 64 characters".into(),
                })
            } else {
                Ok(t.to_string())
            }
        })
        .collect()
}

async fn list_experiments(State(app): State<AppState>) -> Result<Json<Vec<Experiment>>, ApiError> {
    Ok(Json(experiments::list(&app.store.pool).await?))
}

async fn create_experiment(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewExperiment>,
) -> Result<(StatusCode, Json<Experiment>), ApiError> {
    let name = check_name(&req.name)?;
    let tags = check_tags(&req.tags)?;
    let exp = experiments::create(&app.store, &name, &req.description, &tags).await?;
    Ok((StatusCode::CREATED, Json(exp)))
}

#[derive(Serialize)]
struct ExperimentView {
    #[serde(flatten)]
    experiment: Experiment,
    /// The newest event sequence number: subscribe to the event stream with `?after=` this.
    last_seq: i64,
}

async fn find_experiment(app: &AppState, id: i64) -> Result<Experiment, ApiError> {
    experiments::get(&app.store.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("experiment {id} does not exist")))
}

async fn get_experiment(State(app): State<AppState>, P(id): P<i64>) -> Result<Json<ExperimentView>, ApiError> {
    let experiment = find_experiment(&app, id).await?;
    let last_seq = journal::last_seq(&app.store.pool, Scope::Experiment(id)).await?;
    Ok(Json(ExperimentView { experiment, last_seq }))
}

async fn update_experiment(
    State(app): State<AppState>,
    P(id): P<i64>,
    JsonBody(req): JsonBody<ExperimentUpdate>,
) -> Result<Json<Experiment>, ApiError> {
    let patch = ExperimentPatch {
        name: req.name.as_deref().map(check_name).transpose()?,
        description: req.description,
        tags: req.tags.as_deref().map(check_tags).transpose()?,
    };
    experiments::update(&app.store, id, patch)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("experiment {id} does not exist")))
}

async fn delete_experiment(State(app): State<AppState>, P(id): P<i64>) -> Result<StatusCode, ApiError> {
    let exp = find_experiment(&app, id).await?;
    let active: i64 = ["queued", "running"].iter().map(|s| exp.run_counts.get(*s).copied().unwrap_or(0)).sum();
    if active > 0 {
        return Err(ApiError::Conflict(format!(
            "experiment {id} has {active} queued or running runs; stop them before deleting it"
        )));
    }
    for run_id in experiments::delete(&app.store, id).await? {
        let dir = app.settings.run_dir(run_id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

// ---------- runs ----------

/// A run with its latest metric values.
#[derive(Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub run: Run,
    /// Latest value of each metric key.
    pub metrics: BTreeMap<String, MetricPoint>,
    pub resumable: bool,
    /// The newest event sequence number: subscribe to the event stream with `?after=` this.
    pub last_seq: i64,
}

async fn run_view(app: &AppState, run: Run) -> Result<RunView, ApiError> {
    let metrics = metrics::latest(&app.store.pool, run.id).await?;
    let last_seq = journal::last_seq(&app.store.pool, Scope::Run(run.id)).await?;
    let resumable = run.status.is_resumable() && matches!(run.kind.as_str(), "train" | "transfer");
    Ok(RunView { run, metrics, resumable, last_seq })
}

async fn find_run(app: &AppState, id: i64) -> Result<Run, ApiError> {
    Ok(app.manager.get(id).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunListQuery {
    experiment_id: Option<i64>,
    status: Option<String>,
    kind: Option<String>,
    arch: Option<String>,
    method: Option<String>,
    dataset: Option<String>,
    /// A column (`created_at`), or `metric:<key>`; prefix `-` for descending.
    sort: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn one_of(field: &str, value: Option<String>, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(ApiError::bad_param(field, format!("unknown value '{v}'; expected one of {}", allowed.join(", "))))
        }
        other => Ok(other),
    }
}

impl RunListQuery {
    fn into_filter(self) -> Result<RunFilter, ApiError> {
        let status =
            self.status.map(|s| s.parse::<RunStatus>().map_err(|e| ApiError::bad_param("status", e))).transpose()?;
        let mut methods: Vec<&str> = Method::NAMES.to_vec();
        methods.extend(["crt", "kd"]);
        let (sort, descending) = parse_sort(self.sort.as_deref().unwrap_or("id"))?;
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_param("limit", "must be between 1 and 1000"));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::bad_param("offset", "must be at least 0"));
        }
        Ok(RunFilter {
            experiment_id: self.experiment_id,
            status,
            kind: one_of("kind", self.kind, &RunKind::ALL.map(RunKind::as_str))?,
            arch: one_of("arch", self.arch, &Arch::ALL.map(Arch::as_str))?,
            method: one_of("method", self.method, &methods)?,
            dataset: one_of("dataset", self.dataset, &Dataset::ALL.map(Dataset::as_str))?,
            sort,
            descending,
            limit,
            offset,
        })
    }
}

fn parse_sort(sort: &str) -> Result<(SortKey, bool), ApiError> {
    let (descending, key) = match sort.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, sort),
    };
    if let Some(metric) = key.strip_prefix("metric:") {
        if metric.is_empty() {
            return Err(ApiError::bad_param("sort", "metric:<key> needs a metric key, e.g. metric:test/acc"));
        }
        return Ok((SortKey::Metric(metric.to_string()), descending));
    }
    match runs::SORT_COLUMNS.iter().find(|c| **c == key) {
        Some(c) => Ok((SortKey::Column(c), descending)),
        None => Err(ApiError::bad_param(
            "sort",
            format!(
                "unknown sort key '{key}'; expected one of {}, or metric:<key>, optionally prefixed by '-'",
                runs::SORT_COLUMNS.join(", ")
            ),
        )),
    }
}

async fn list_filtered(app: &AppState, filter: RunFilter) -> Result<Json<Vec<RunView>>, ApiError> {
    let mut views = Vec::new();
    for run in runs::list(&app.store.pool, &filter).await? {
        views.push(run_view(app, run).await?);
    }
    Ok(Json(views))
}

async fn list_runs(State(app): State<AppState>, Q(q): Q<RunListQuery>) -> Result<Json<Vec<RunView>>, ApiError> {
    list_filtered(&app, q.into_filter()?).await
}

async fn list_experiment_runs(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<RunListQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    find_experiment(&app, id).await?;
    let mut filter = q.into_filter()?;
    filter.experiment_id = Some(id);
    list_filtered(&app, filter).await
}

async fn create_run(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreateRunRequest>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let run = app.manager.create(req).await?;
    Ok((StatusCode::CREATED, Json(run_view(&app, run).await?)))
}

async fn get_run(State(app): State<AppState>, P(id): P<i64>) -> Result<Json<RunView>, ApiError> {
    let run = find_run(&app, id).await?;
    Ok(Json(run_view(&app, run).await?))
}

async fn stop_run(State(app): State<AppState>, P(id): P<i64>) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let run = app.manager.stop(id).await?;
    Ok((StatusCode::ACCEPTED, Json(run_view(&app, run).await?)))
}

async fn resume_run(State(app): State<AppState>, P(id): P<i64>) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let run = app.manager.resume(id).await?;
    Ok((StatusCode::ACCEPTED, Json(run_view(&app, run).await?)))
}

// ---------- metrics ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricQuery {
    /// Comma-separated keys; default all.
    keys: Option<String>,
    /// Most points per key (at least 3); default all points.
    points: Option<usize>,
}

#[derive(Serialize)]
struct MetricSeries {
    /// Points stored for this key.
    total: usize,
    downsampled: bool,
    points: Vec<MetricPoint>,
}

#[derive(Serialize)]
struct MetricHistory {
    run_id: i64,
    metrics: BTreeMap<String, MetricSeries>,
}

async fn metric_history(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<MetricQuery>,
) -> Result<Json<MetricHistory>, ApiError> {
    find_run(&app, id).await?;
    if q.points.is_some_and(|p| p < 3) {
        return Err(ApiError::bad_param(
            "points",
            "must be at least 3 (each bucket keeps its min, max and last point)",
        ));
    }
    let known = metrics::keys(&app.store.pool, id).await?;
    let keys: Vec<String> = match &q.keys {
        Some(list) => list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect(),
        None => known.clone(),
    };
    if let Some(unknown) = keys.iter().find(|k| !known.contains(k)) {
        return Err(ApiError::bad_param(
            "keys",
            format!(
                "run {id} has no metric '{unknown}'; it has: {}",
                if known.is_empty() { "none yet".into() } else { known.join(", ") }
            ),
        ));
    }
    let mut out = BTreeMap::new();
    for key in keys {
        let full = metrics::history(&app.store.pool, id, &key).await?;
        let total = full.len();
        let points = match q.points {
            Some(p) => downsample(&full, p),
            None => full,
        };
        out.insert(key, MetricSeries { total, downsampled: points.len() < total, points });
    }
    Ok(Json(MetricHistory { run_id: id, metrics: out }))
}

// ---------- logs ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogParams {
    after: Option<i64>,
    before: Option<i64>,
    stream: Option<String>,
    /// The newest `limit` lines instead of the oldest.
    #[serde(default)]
    tail: bool,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct LogPage {
    lines: Vec<logs::LogLine>,
    /// Pass as `after` to read the following lines (the last id returned, or `after`).
    next_after: i64,
}

async fn run_logs(State(app): State<AppState>, P(id): P<i64>, Q(q): Q<LogParams>) -> Result<Json<LogPage>, ApiError> {
    find_run(&app, id).await?;
    let limit = q.limit.unwrap_or(500);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_param("limit", "must be between 1 and 10000"));
    }
    let stream = one_of("stream", q.stream, &["stdout", "stderr", "trainer", "server"])?;
    let query = logs::LogQuery { after: q.after, before: q.before, stream, tail: q.tail, limit };
    let lines = logs::read(&app.store.pool, id, &query).await?;
    let next_after = lines.last().map(|l| l.id).or(q.after).unwrap_or(0);
    Ok(Json(LogPage { lines, next_after }))
}

// ---------- artifacts ----------

async fn list_artifacts(
    State(app): State<AppState>,
    P(id): P<i64>,
) -> Result<Json<Vec<artifacts::Artifact>>, ApiError> {
    find_run(&app, id).await?;
    Ok(Json(artifacts::list(&app.store.pool, id).await?))
}

async fn download_artifact(State(app): State<AppState>, P((id, path)): P<(i64, String)>) -> Result<Response, ApiError> {
    let run = find_run(&app, id).await?;
    // Only recorded artifacts are served, so the path cannot wander outside the run directory.
    let artifact = artifacts::get(&app.store.pool, id, &path)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {id} has no artifact '{path}'")))?;
    let full = FsPath::new(&run.out_dir).join(&artifact.path);
    let file = tokio::fs::File::open(&full)
        .await
        .map_err(|e| ApiError::NotFound(format!("artifact '{path}' of run {id} is no longer on disk: {e}")))?;
    let len = file.metadata().await.map_err(anyhow::Error::from)?.len();
    let mime = mime_guess::from_path(&artifact.path).first_or_octet_stream();
    let file_name =
        FsPath::new(&artifact.path).file_name().map(|n| n.to_string_lossy().replace('"', "")).unwrap_or_default();
    let mut resp = Body::from_stream(ReaderStream::new(file)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(mime.as_ref()).map_err(anyhow::Error::from)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

// ---------- certificates ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertQuery {
    /// Images with index greater than this.
    after: Option<i64>,
    limit: Option<i64>,
}

async fn list_certificates(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<CertQuery>,
) -> Result<Json<Vec<crt_trainer::events::Certificate>>, ApiError> {
    find_run(&app, id).await?;
    let limit = q.limit.unwrap_or(10_000);
    if !(1..=100_000).contains(&limit) {
        return Err(ApiError::bad_param("limit", "must be between 1 and 100000"));
    }
    Ok(Json(certificates::list(&app.store.pool, id, q.after.unwrap_or(-1), limit).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryQuery {
    /// Comma-separated radii; default 0, 0.25, … up to the largest radius (at least 1).
    radii: Option<String>,
}

async fn certificate_summary(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<SummaryQuery>,
) -> Result<Json<certified::CertSummary>, ApiError> {
    find_run(&app, id).await?;
    let certs = certificates::list(&app.store.pool, id, -1, i64::MAX).await?;
    let radii = match q.radii {
        Some(list) => list
            .split(',')
            .map(|r| r.trim().parse::<f64>().ok().filter(|r| r.is_finite() && *r >= 0.0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_param("radii", "expected comma-separated numbers >= 0, e.g. 0,0.25,0.5"))?,
        None => certified::default_radii(&certs),
    };
    Ok(Json(certified::summarize(&certs, &radii)))
}
