//! CRT studies over HTTP: `POST /api/v1/studies`, the comparison table as JSON and CSV, and the
//! dashboard pages `/studies/new` and `/studies/{id}`.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::errors::JsonBody;
use super::extract::P;
use super::{ApiError, AppState};
use crate::study::{self, StudyRequest, StudyTable};

pub(super) async fn create(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<StudyRequest>,
) -> Result<Response, ApiError> {
    super::extract::no_nul("name", &req.name)?;
    check_bounds(&req)?;
    let created = study::create(&app.manager, &req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// The study's sizes against the bounds of the runs it makes (the shared config bounds), named
/// by the study's own fields; each run's config is checked again, fully, when it is created.
fn check_bounds(req: &StudyRequest) -> Result<(), ApiError> {
    use crt_trainer::config::{MAX_BATCH_SIZE, MAX_EPOCHS};
    let invalid = |field: &str, message: String| ApiError::Invalid { field: field.into(), message };
    let at_most = |field: &str, value: usize, max: usize| {
        if value > max {
            Err(invalid(field, format!("must be at most {max} (got {value})")))
        } else {
            Ok(())
        }
    };
    let chars = req.name.trim().chars().count();
    if chars > super::experiments::MAX_NAME_CHARS {
        let max = super::experiments::MAX_NAME_CHARS;
        return Err(invalid("name", format!("must be 1 to {max} characters (got {chars})")));
    }
    at_most("teacher.epochs", req.teacher.epochs, MAX_EPOCHS)?;
    at_most("transfer.epochs", req.transfer.epochs.unwrap_or(0), MAX_EPOCHS)?;
    at_most("teacher.batch_size", req.teacher.batch_size.unwrap_or(0), MAX_BATCH_SIZE)?;
    at_most("train_subset", req.train_subset.unwrap_or(0), req.dataset.train_len())?;
    at_most("test_subset", req.test_subset.unwrap_or(0), req.dataset.test_len())?;
    if let Some(lr) = req.teacher.lr {
        crt_trainer::config::check_lr("teacher.lr", lr).map_err(|e| invalid(&e.field, e.message))?;
    }
    let baselines = req.baselines.as_deref().unwrap_or_default();
    // The list's length first: nothing in a list that is too long is looked at.
    if baselines.len() > study::MAX_BASELINES {
        let max = study::MAX_BASELINES;
        return Err(invalid("baselines", format!("at most {max} baselines (got {})", baselines.len())));
    }
    for (i, b) in baselines.iter().enumerate() {
        at_most(&format!("baselines[{i}].epochs"), b.epochs.unwrap_or(0), MAX_EPOCHS)?;
        at_most(&format!("baselines[{i}].batch_size"), b.batch_size.unwrap_or(0), MAX_BATCH_SIZE)?;
        if let Some(lr) = b.lr {
            crt_trainer::config::check_lr(&format!("baselines[{i}].lr"), lr)
                .map_err(|e| invalid(&e.field, e.message))?;
        }
    }
    // Every model of the study (teacher, students, their baselines) is certified with one batch.
    for arch in std::iter::once(req.teacher.arch).chain(req.students.iter().copied()) {
        req.certify.check_batch_memory("certify", arch, req.dataset).map_err(|e| invalid(&e.field, e.message))?;
    }
    Ok(())
}

async fn load(app: &AppState, id: i64) -> Result<StudyTable, ApiError> {
    study::table(&app.store, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("experiment {id} does not exist or is not a CRT study")))
}

pub(super) async fn table(State(app): State<AppState>, P(id): P<i64>) -> Result<Json<StudyTable>, ApiError> {
    Ok(Json(load(&app, id).await?))
}

pub(super) async fn csv(State(app): State<AppState>, P(id): P<i64>) -> Result<Response, ApiError> {
    let table = load(&app, id).await?;
    let disposition = format!("attachment; filename=\"study-{id}.csv\"");
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        study::to_csv(&table),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "study.html")]
struct StudyPage {
    /// `None` on the form page.
    table: Option<StudyTable>,
    /// The table as JSON, safe inside a `<script>` element.
    data: String,
}

fn render(page: &StudyPage) -> Result<Response, ApiError> {
    let html = page.render().map_err(|e| ApiError::Internal(anyhow::anyhow!("template: {e}")))?;
    Ok(Html(html).into_response())
}

pub(super) async fn new_page() -> Result<Response, ApiError> {
    render(&StudyPage { table: None, data: "null".into() })
}

pub(super) async fn study_page(State(app): State<AppState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let table = load(&app, id).await?;
    // "</" would end the script element early.
    let data = serde_json::to_string(&table).map_err(anyhow::Error::from)?.replace("</", "<\\/");
    render(&StudyPage { table: Some(table), data })
}
