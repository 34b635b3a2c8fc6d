//! `GET /api/v1/health`: the server is up and its database answers.

use axum::extract::State;
use axum::Json;

use super::errors::ApiError;
use super::AppState;

pub(super) async fn health(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    sqlx::query("SELECT 1").execute(&app.store.pool).await.map_err(anyhow::Error::from)?;
    Ok(Json(serde_json::json!({ "status": "ok", "database": format!("{:?}", app.store.dialect).to_lowercase() })))
}
