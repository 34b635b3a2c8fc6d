//! `GET /api/v1/runs/{id}/artifacts` and the download of one artifact.

use std::path::Path as FsPath;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_util::io::ReaderStream;

use super::errors::ApiError;
use super::extract::{find_run, P};
use super::AppState;
use crate::store::artifacts;

pub(super) async fn list_artifacts(
    State(app): State<AppState>,
    P(id): P<i64>,
) -> Result<Json<Vec<artifacts::Artifact>>, ApiError> {
    find_run(&app, id).await?;
    Ok(Json(artifacts::list(&app.store.pool, id).await?))
}

pub(super) async fn download_artifact(
    State(app): State<AppState>,
    P((id, path)): P<(i64, String)>,
) -> Result<Response, ApiError> {
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
