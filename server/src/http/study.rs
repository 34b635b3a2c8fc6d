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
    let created = study::create(&app.manager, &req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
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
