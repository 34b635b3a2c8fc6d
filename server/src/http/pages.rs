//! The dashboard's HTML pages: askama templates (`../templates`) rendered from the store, each
//! progressively enhanced by an ES module in `../static/js`.
//!
//! Every page embeds its initial data as JSON in the shapes the JSON API returns (a run is a
//! `runs::RunView`), so the scripts draw the first paint and every live update (SSE, then a
//! fetch of the changed resource) through one code path.

mod data;
mod forms;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::devices::DevicesView;
use super::runs::RunView;
use super::AppState;
use crate::store::experiments::{self, Experiment};
use crate::store::journal::{self, Scope};
use crate::store::{artifacts, runs};
use data::{RunBrief, STANDARD_RADII};
use forms::LaunchForms;

/// Why a page cannot be shown; rendered as an HTML error page.
#[derive(Debug)]
pub(super) enum PageError {
    NotFound(String),
    BadRequest(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError::Internal(e)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    heading: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, heading, message) = match self {
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            PageError::Internal(e) => {
                let id = super::errors::error_id();
                tracing::error!(error_id = %id, "rendering a page failed: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Server error",
                    format!("Something went wrong; the server log has the details (error id {id})."),
                )
            }
        };
        let page = ErrorPage { status: status.as_u16(), heading, message };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, page.message).into_response(),
        }
    }
}

fn render(page: &impl Template) -> Result<Response, PageError> {
    let html = page.render().map_err(|e| PageError::Internal(anyhow::anyhow!("template: {e}")))?;
    Ok(Html(html).into_response())
}

/// JSON that is safe inside `<script type="application/json">`: no `<`, `>` or `&` survive
/// literally, so no string in the data can close the script element.
fn script_json(value: &impl Serialize) -> Result<String, PageError> {
    let text = serde_json::to_string(value).map_err(anyhow::Error::from)?;
    Ok(text.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026"))
}

/// A numeric path segment; anything else is a missing page, not a 400.
fn parse_id(raw: &str, what: &str) -> Result<i64, PageError> {
    raw.parse().map_err(|_| PageError::NotFound(format!("there is no {what} '{raw}'")))
}

async fn find_experiment(app: &AppState, id: i64) -> Result<Experiment, PageError> {
    experiments::get(&app.store.pool, id)
        .await?
        .ok_or_else(|| PageError::NotFound(format!("experiment {id} does not exist")))
}

// ---------- experiments ----------

#[derive(Template)]
#[template(path = "experiments.html")]
struct ExperimentsPage {
    experiments: Vec<Experiment>,
    devices: DevicesView,
    data: String,
}

impl ExperimentsPage {
    fn total_runs(&self, e: &Experiment) -> i64 {
        e.run_counts.values().sum()
    }
}

pub(super) async fn experiments_page(State(app): State<AppState>) -> Result<Response, PageError> {
    let experiments = experiments::list(&app.store.pool).await?;
    let devices = super::devices::view(&app);
    let data = script_json(&serde_json::json!({ "experiments": experiments, "devices": devices }))?;
    render(&ExperimentsPage { experiments, devices, data })
}

// ---------- one experiment ----------

#[derive(Template)]
#[template(path = "experiment.html")]
struct ExperimentPage {
    experiment: Experiment,
    runs: Vec<RunView>,
    data: String,
}

pub(super) async fn experiment_page(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, PageError> {
    let id = parse_id(&raw, "experiment")?;
    let experiment = find_experiment(&app, id).await?;
    // Read the stream position first: anything after it reaches the page over SSE.
    let last_seq = journal::last_seq(&app.store.pool, Scope::Experiment(id)).await?;
    let runs = data::experiment_runs(&app, id).await?;
    let summaries = data::summaries(&app, runs.iter().filter(|v| v.is_certification).map(|v| v.id)).await?;
    let data = script_json(&serde_json::json!({
        "experiment": experiment,
        "last_seq": last_seq,
        "runs": runs,
        "summaries": summaries,
        "radii": STANDARD_RADII,
    }))?;
    render(&ExperimentPage { experiment, runs, data })
}

// ---------- launch forms ----------

#[derive(Template)]
#[template(path = "launch.html")]
struct LaunchPage {
    experiment: Experiment,
    forms: LaunchForms,
    /// The form shown first: train, transfer or certify.
    tab: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct LaunchQuery {
    kind: Option<String>,
    /// Preselected teacher (transfer) or model (certify).
    parent: Option<i64>,
}

pub(super) async fn launch_page(
    State(app): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<LaunchQuery>,
) -> Result<Response, PageError> {
    let id = parse_id(&raw, "experiment")?;
    let experiment = find_experiment(&app, id).await?;
    let tab = match q.kind.as_deref() {
        None | Some("train") => "train",
        Some("transfer") => "transfer",
        Some("certify") => "certify",
        Some(other) => {
            return Err(PageError::BadRequest(format!(
                "kind: unknown form '{other}'; expected train, transfer or certify"
            )))
        }
    };
    let forms = LaunchForms::load(&app, id, q.parent).await?;
    render(&LaunchPage { experiment, forms, tab: tab.to_string() })
}

// ---------- one run ----------

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    experiment: Experiment,
    view: RunView,
    parents: Vec<RunBrief>,
    children: Vec<RunBrief>,
    /// The certification form for "certify this model" (runs that make a model).
    forms: LaunchForms,
    config_json: String,
    data: String,
}

pub(super) async fn run_page(State(app): State<AppState>, Path(raw): Path<String>) -> Result<Response, PageError> {
    let id = parse_id(&raw, "run")?;
    let view =
        data::run_view(&app, id).await?.ok_or_else(|| PageError::NotFound(format!("run {id} does not exist")))?;
    let experiment = find_experiment(&app, view.experiment_id).await?;
    let parents = data::briefs(&app, &view.parents).await?;
    let children = data::briefs(&app, &runs::children_of(&app.store.pool, id).await?).await?;
    let artifacts = artifacts::list(&app.store.pool, id).await?;
    let forms = LaunchForms::load(&app, experiment.id, Some(id)).await?;
    let config = view.resolved_config.as_ref().unwrap_or(&view.config);
    let config_json = serde_json::to_string_pretty(config).map_err(anyhow::Error::from)?;
    let data = script_json(&serde_json::json!({
        "run": view,
        "experiment": { "id": experiment.id, "name": experiment.name },
        "parents": parents,
        "children": children,
        "artifacts": artifacts,
        "radii": STANDARD_RADII,
    }))?;
    render(&RunPage { experiment, view, parents, children, forms, config_json, data })
}

// ---------- compare ----------

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    entries: Vec<data::CompareEntry>,
    data: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct CompareQuery {
    runs: Option<String>,
}

pub(super) async fn compare_page(
    State(app): State<AppState>,
    Query(q): Query<CompareQuery>,
) -> Result<Response, PageError> {
    let ids = parse_run_list(q.runs.as_deref().unwrap_or(""))?;
    let entries = data::compare_entries(&app, &ids).await?;
    let streams = data::experiment_streams(&app, &entries).await?;
    let data = script_json(&serde_json::json!({ "entries": entries, "streams": streams, "radii": STANDARD_RADII }))?;
    render(&ComparePage { entries, data })
}

/// `1,2,3`: one to twelve distinct run ids.
fn parse_run_list(raw: &str) -> Result<Vec<i64>, PageError> {
    let mut ids = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: i64 = part
            .parse()
            .map_err(|_| PageError::BadRequest(format!("runs: '{part}' is not a run id; expected e.g. ?runs=1,2,3")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    match ids.len() {
        0 => Err(PageError::BadRequest("runs: name the runs to compare, e.g. /compare?runs=1,2,3".into())),
        n if n > data::MAX_COMPARE => Err(PageError::BadRequest(format!(
            "runs: at most {} runs can be compared at once (got {n})",
            data::MAX_COMPARE
        ))),
        _ => Ok(ids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_lists() {
        assert_eq!(parse_run_list("3, 1,3,,2").unwrap(), vec![3, 1, 2]);
        assert!(matches!(parse_run_list(""), Err(PageError::BadRequest(_))));
        assert!(matches!(parse_run_list("1,x"), Err(PageError::BadRequest(m)) if m.contains("'x'")));
        let many = (1..=13).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        assert!(matches!(parse_run_list(&many), Err(PageError::BadRequest(m)) if m.contains("at most")));
    }

    #[test]
    fn embedded_json_cannot_close_the_script() {
        let text = script_json(&serde_json::json!({ "name": "</script><b>&" })).unwrap();
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["name"], "</script><b>&");
    }
}
