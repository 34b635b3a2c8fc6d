//! Experiments: `/api/v1/experiments` and `/api/v1/experiments/{id}` (its runs and events are
//! served by `runs` and `sse`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::errors::{ApiError, JsonBody};
use super::extract::{find_experiment, P};
use super::AppState;
use crate::store::experiments::{self, Experiment, ExperimentPatch};
use crate::store::journal::{self, Scope};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewExperiment {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExperimentUpdate {
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

pub(super) async fn list_experiments(State(app): State<AppState>) -> Result<Json<Vec<Experiment>>, ApiError> {
    Ok(Json(experiments::list(&app.store.pool).await?))
}

pub(super) async fn create_experiment(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewExperiment>,
) -> Result<(StatusCode, Json<Experiment>), ApiError> {
    let name = check_name(&req.name)?;
    let tags = check_tags(&req.tags)?;
    let exp = experiments::create(&app.store, &name, &req.description, &tags).await?;
    Ok((StatusCode::CREATED, Json(exp)))
}

#[derive(Serialize)]
pub(super) struct ExperimentView {
    #[serde(flatten)]
    experiment: Experiment,
    /// The newest event sequence number: subscribe to the event stream with `?after=` this.
    last_seq: i64,
}

pub(super) async fn get_experiment(
    State(app): State<AppState>,
    P(id): P<i64>,
) -> Result<Json<ExperimentView>, ApiError> {
    let experiment = find_experiment(&app, id).await?;
    let last_seq = journal::last_seq(&app.store.pool, Scope::Experiment(id)).await?;
    Ok(Json(ExperimentView { experiment, last_seq }))
}

pub(super) async fn update_experiment(
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

pub(super) async fn delete_experiment(State(app): State<AppState>, P(id): P<i64>) -> Result<StatusCode, ApiError> {
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
