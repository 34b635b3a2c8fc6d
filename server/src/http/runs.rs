//! Runs: `/api/v1/runs` (list, create), `/api/v1/runs/{id}` (get, stop, resume) and
//! `/api/v1/experiments/{id}/runs`. A run goes out as a [`RunView`], never as its database row.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyPool;

use crt_trainer::config::{Arch, Dataset, Method, RunKind};

use super::errors::{ApiError, JsonBody};
use super::extract::{find_experiment, find_run, one_of, P, Q};
use super::AppState;
use crate::devices::{Device, DeviceRequest};
use crate::launch::slurm::SlurmResources;
use crate::launch::{BackendKind, Handle};
use crate::runs::{CreateRunRequest, ResumeRequest, RunStatus};
use crate::store::journal::{self, Scope};
use crate::store::metrics::{self, MetricPoint};
use crate::store::runs::{self, Progress, Run, RunFilter, SortKey};

/// A run as the API (and the pages' embedded data) shows it: its record without the server's
/// bookkeeping (read positions, terminal event), with its latest metric values and what a client
/// may do with it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub id: i64,
    pub experiment_id: i64,
    pub name: String,
    pub kind: RunKind,
    pub status: RunStatus,
    /// The config the trainer is given (server paths filled in).
    pub config: Value,
    /// The config as the trainer resolved it (all defaults), from its `started` event.
    pub resolved_config: Option<Value>,
    pub arch: Option<String>,
    pub method: Option<String>,
    pub dataset: Option<String>,
    pub sigma: Option<f64>,
    pub parents: Vec<i64>,
    pub out_dir: String,
    pub created_at: f64,
    pub queued_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Seconds the trainer ran, summed over all attempts (resumes).
    pub wall_time_s: f64,
    /// How many times a trainer process was started for this run.
    pub attempt: i64,
    /// The local supervisor's pid (also its process group, which holds the trainer).
    pub pid: Option<i64>,
    pub pgid: Option<i64>,
    /// Where the run executes.
    pub backend: BackendKind,
    /// The Slurm resources it asked for (None: the server's defaults).
    pub resources: Option<SlurmResources>,
    /// The launcher's handle of the current attempt.
    pub handle: Option<Handle>,
    /// What the backend last said (Slurm: state, reason, node).
    pub backend_state: Option<Value>,
    /// When a stop was asked through CRT Lab, for the current attempt.
    pub stop_requested_at: Option<f64>,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
    pub error: Option<String>,
    /// The device the run asked for.
    pub device_request: DeviceRequest,
    /// Where its latest attempt ran; None until it first starts.
    pub device: Option<Device>,
    /// The final metrics of a finished run.
    pub summary: Option<Value>,
    pub progress: Option<Progress>,
    /// Latest value of each metric key.
    pub metrics: BTreeMap<String, MetricPoint>,
    /// The run holds a model (a train or transfer run, or an imported checkpoint): it can be a
    /// transfer's teacher or be certified. [`crate::certified::makes_model`].
    pub makes_model: bool,
    /// The run holds a certification's per-image results (a certify run, or an imported
    /// certification of kind `external`): [`crate::certified::is_certification`].
    pub is_certification: bool,
    /// Stopped or crashed: `POST …/resume` continues it.
    pub resumable: bool,
    /// The newest event sequence number: subscribe to the event stream with `?after=` this.
    pub last_seq: i64,
    /// External runs (MLflow clients): their params and tags, and when the client last wrote.
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub last_write_at: Option<f64>,
}

impl RunView {
    pub fn new(run: Run, metrics: BTreeMap<String, MetricPoint>, last_seq: i64) -> RunView {
        // Every field named, so a new column is a decision here, not a silent leak or omission.
        let Run {
            id,
            experiment_id,
            name,
            kind,
            status,
            config,
            resolved_config,
            arch,
            method,
            dataset,
            sigma,
            parents,
            out_dir,
            created_at,
            queued_at,
            started_at,
            finished_at,
            wall_time_s,
            attempt,
            pid,
            pgid,
            backend,
            resources,
            handle,
            backend_state,
            cursor: _,
            stop_requested_at,
            terminal: _,
            exit_code,
            exit_signal,
            error,
            device_request,
            device,
            summary,
            progress,
            last_write_at,
        } = run;
        let is_certification = crate::certified::is_certification(kind, &config);
        let makes_model = crate::certified::makes_model(kind, &config);
        RunView {
            id,
            experiment_id,
            name,
            kind,
            status,
            config,
            resolved_config,
            arch,
            method,
            dataset,
            sigma,
            parents,
            out_dir,
            created_at,
            queued_at,
            started_at,
            finished_at,
            wall_time_s,
            attempt,
            pid,
            pgid,
            backend,
            resources,
            handle,
            backend_state,
            stop_requested_at,
            exit_code,
            exit_signal,
            error,
            device_request,
            device,
            summary,
            progress,
            metrics,
            makes_model,
            is_certification,
            resumable: status.is_resumable(),
            last_seq,
            params: BTreeMap::new(),
            tags: BTreeMap::new(),
            last_write_at,
        }
    }

    /// The view of `run` with its latest metrics; `last_seq` is read by the caller (a page reads
    /// it before the run, so every later change reaches it over SSE).
    pub async fn load(pool: &AnyPool, run: Run, last_seq: i64) -> anyhow::Result<RunView> {
        let metrics = metrics::latest(pool, run.id).await?;
        let resumable = crate::runs::resumable(pool, &run).await?;
        let (params, tags) = if run.kind == RunKind::External {
            use crate::store::mlflow::{key_values, KvTable};
            (key_values(pool, KvTable::Params, run.id).await?, key_values(pool, KvTable::Tags, run.id).await?)
        } else {
            Default::default()
        };
        Ok(RunView { resumable, params, tags, ..RunView::new(run, metrics, last_seq) })
    }
}

async fn run_view(app: &AppState, run: Run) -> Result<RunView, ApiError> {
    let last_seq = journal::last_seq(&app.store.pool, Scope::Run(run.id)).await?;
    Ok(RunView::load(&app.store.pool, run, last_seq).await?)
}

/// The largest page of runs (`limit`).
pub const MAX_RUNS_PAGE: i64 = 1000;
/// The longest metric key in `sort=metric:<key>`, in characters.
pub const MAX_METRIC_KEY_CHARS: usize = 200;

/// A request value beyond its upper bound: 422 naming it (docs/api.md, "Limits").
pub(super) fn too_large(field: &str, message: String) -> ApiError {
    ApiError::Invalid { field: field.to_string(), message }
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

impl RunListQuery {
    fn into_filter(self) -> Result<RunFilter, ApiError> {
        let status =
            self.status.map(|s| s.parse::<RunStatus>().map_err(|e| ApiError::bad_param("status", e))).transpose()?;
        let kind = one_of("kind", self.kind, &RunKind::ALL.map(RunKind::as_str))?
            .map(|k| k.parse::<RunKind>().map_err(|e| ApiError::bad_param("kind", e)))
            .transpose()?;
        let mut methods: Vec<&str> = Method::NAMES.to_vec();
        methods.extend(["crt", "kd"]);
        let (sort, descending) = parse_sort(self.sort.as_deref().unwrap_or("id"))?;
        let limit = self.limit.unwrap_or(100);
        if limit < 1 {
            return Err(ApiError::bad_param("limit", format!("must be between 1 and {MAX_RUNS_PAGE}")));
        }
        if limit > MAX_RUNS_PAGE {
            return Err(too_large("limit", format!("must be at most {MAX_RUNS_PAGE} (got {limit})")));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::bad_param("offset", "must be at least 0"));
        }
        Ok(RunFilter {
            experiment_id: self.experiment_id,
            status,
            kind,
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
        let chars = metric.chars().count();
        if chars > MAX_METRIC_KEY_CHARS {
            return Err(too_large(
                "sort",
                format!("the metric key must be at most {MAX_METRIC_KEY_CHARS} characters (got {chars})"),
            ));
        }
        if metric.is_empty() {
            return Err(ApiError::bad_param("sort", "metric:<key> needs a metric key, e.g. metric:test/acc"));
        }
        if metric.contains('\0') {
            return Err(ApiError::bad_param("sort", "the metric key must not contain NUL characters"));
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

pub(super) async fn list_runs(
    State(app): State<AppState>,
    Q(q): Q<RunListQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    list_filtered(&app, q.into_filter()?).await
}

pub(super) async fn list_experiment_runs(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<RunListQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    find_experiment(&app, id).await?;
    let mut filter = q.into_filter()?;
    filter.experiment_id = Some(id);
    list_filtered(&app, filter).await
}

pub(super) async fn create_run(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<CreateRunRequest>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    if let Some(name) = &req.name {
        super::extract::no_nul("name", name)?;
    }
    let run = app.manager.create(req).await?;
    Ok((StatusCode::CREATED, Json(run_view(&app, run).await?)))
}

pub(super) async fn get_run(State(app): State<AppState>, P(id): P<i64>) -> Result<Json<RunView>, ApiError> {
    let run = find_run(&app, id).await?;
    Ok(Json(run_view(&app, run).await?))
}

pub(super) async fn stop_run(
    State(app): State<AppState>,
    P(id): P<i64>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let run = app.manager.stop(id).await?;
    Ok((StatusCode::ACCEPTED, Json(run_view(&app, run).await?)))
}

/// `POST …/resume`, with an optional JSON body (`{"lr": 0.001}`); no body resumes as it was.
pub(super) async fn resume_run(
    State(app): State<AppState>,
    P(id): P<i64>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    // A body over the limit is a JSON 413 like everywhere else (axum's own answer is plain text).
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(format!("the request body is larger than {} bytes", super::MAX_BODY_BYTES))
        }
        _ => ApiError::BadRequest { message: format!("cannot read the request body: {}", e.body_text()), field: None },
    })?;
    let req = resume_request(&headers, &body)?;
    let run = app.manager.resume(id, &req).await?;
    Ok((StatusCode::ACCEPTED, Json(run_view(&app, run).await?)))
}

/// The resume body: empty (none), else JSON (`Content-Type: application/json`).
fn resume_request(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<ResumeRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ResumeRequest::default());
    }
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType(
            "the request body must be JSON (Content-Type: application/json)".into(),
        ));
    }
    super::errors::parse_json(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: RunKind, status: RunStatus) -> Run {
        Run { id: 7, status, ..Run::example(7, kind) }
    }

    #[test]
    fn the_view_has_the_api_fields_and_no_bookkeeping() {
        let view =
            serde_json::to_value(RunView::new(run(RunKind::Train, RunStatus::Queued), BTreeMap::new(), 3)).unwrap();
        let keys: Vec<&str> = view.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "id",
            "experiment_id",
            "name",
            "kind",
            "status",
            "config",
            "resolved_config",
            "arch",
            "method",
            "dataset",
            "sigma",
            "parents",
            "out_dir",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "wall_time_s",
            "attempt",
            "pid",
            "pgid",
            "backend",
            "resources",
            "handle",
            "backend_state",
            "stop_requested_at",
            "exit_code",
            "exit_signal",
            "error",
            "device_request",
            "device",
            "summary",
            "progress",
            "metrics",
            "makes_model",
            "is_certification",
            "resumable",
            "last_seq",
            "params",
            "tags",
            "last_write_at",
        ];
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(
            (view["kind"].clone(), view["status"].clone(), view["last_seq"].clone()),
            (json!("train"), json!("queued"), json!(3))
        );
    }

    #[test]
    fn models_and_resumability() {
        for kind in RunKind::ALL {
            let view = RunView::new(run(kind, RunStatus::Stopped), BTreeMap::new(), 0);
            assert_eq!(view.makes_model, matches!(kind, RunKind::Train | RunKind::Transfer), "{kind}");
            assert!(view.resumable, "a stopped {kind} run resumes");
            assert!(!RunView::new(run(kind, RunStatus::Finished), BTreeMap::new(), 0).resumable);
        }
    }
}
