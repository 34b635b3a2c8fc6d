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

/// The longest experiment name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// The most tags of an experiment.
pub const MAX_TAGS: usize = 32;
/// The longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 64;

fn check_name(name: &str) -> Result<String, ApiError> {
    super::extract::no_nul("name", name)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::Invalid {
            field: "name".into(),
            message: format!("must be 1 to {MAX_NAME_CHARS} characters"),
        });
    }
    Ok(name.to_string())
}

fn check_description(description: &str) -> Result<(), ApiError> {
    super::extract::no_nul("description", description)?;
    let chars = description.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::Invalid {
            field: "description".into(),
            message: format!("must be at most {MAX_DESCRIPTION_CHARS} characters (got {chars})"),
        });
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::Invalid {
            field: "tags".into(),
            message: format!("must list at most {MAX_TAGS} tags (got {})", tags.len()),
        });
    }
    tags.iter()
        .enumerate()
        .map(|(i, t)| {
            super::extract::no_nul(&format!("tags[{i}]"), t)?;
            let t = t.trim();
            if t.is_empty() || t.chars().count() > MAX_TAG_CHARS {
                Err(ApiError::Invalid {
                    field: format!("tags[{i}]"),
                    message: format!("a tag must be 1 to {MAX_TAG_CHARS} characters"),
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
    check_description(&req.description)?;
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
    if let Some(description) = &req.description {
        check_description(description)?;
    }
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
    find_experiment(&app, id).await?;
    // External runs (MLflow clients) do not block: a client that died may leave one RUNNING forever.
    let active = crate::store::runs::active_trainer_runs(&app.store.pool, id).await?;
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
