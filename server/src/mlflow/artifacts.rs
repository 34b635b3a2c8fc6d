//! MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/<experiment>/<run>/artifacts/<path>`):
//! uploads streamed to `<run-dir>/artifacts/<path>` with their own size limit, downloads, and
//! listings. Paths are confined to the run's artifact directory; each upload is recorded as an
//! artifact of the run, so the run page lists it like a trainer's files.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crt_trainer::events::{ArtifactKind, Event, EventLine};

use super::protocol::{MlResult, MlflowError};
use super::runs::{find, find_writable, recorder};
use super::MlQuery;
use crate::http::AppState;
use crate::record::Incoming;
use crate::store::mlflow::MlRun;

/// The largest artifact one upload may write.
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// `<experiment>/<run>/artifacts[/<rest>]` → the run and `<rest>` (checked: relative, no `..`).
async fn resolve(app: &AppState, path: &str, writable: bool) -> MlResult<(MlRun, PathBuf)> {
    let mut parts = path.trim_matches('/').splitn(4, '/');
    let (exp, run_id, artifacts, rest) = (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
    let (Some(exp), Some(run_id), Some("artifacts")) = (exp, run_id, artifacts) else {
        return Err(MlflowError::invalid(format!(
            "invalid artifact path '{path}': expected <experiment id>/<run id>/artifacts/<path>"
        )));
    };
    let run = if writable { find_writable(app, run_id).await? } else { find(app, run_id).await? };
    if run.experiment_id.to_string() != exp {
        return Err(MlflowError::not_found(format!("run {run_id} is not in experiment {exp}")));
    }
    let rel = Path::new(rest);
    if rest.contains('\0') || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(MlflowError::invalid(format!("invalid artifact path '{rest}': it must stay inside the run")));
    }
    Ok((run, rel.to_path_buf()))
}

fn artifact_root(app: &AppState, run: &MlRun) -> PathBuf {
    app.settings.run_dir(run.id).join("artifacts")
}

pub async fn upload(
    State(app): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
    body: Body,
) -> MlResult<Json<Value>> {
    let (run, rel) = resolve(&app, &path, true).await?;
    if rel.as_os_str().is_empty() {
        return Err(MlflowError::invalid("an upload needs a file path after 'artifacts/'"));
    }
    let target = artifact_root(&app, &run).join(&rel);
    let dir = target.parent().expect("a file path has a parent").to_path_buf();
    tokio::fs::create_dir_all(&dir).await.map_err(anyhow::Error::from)?;
    let partial = dir.join(format!(".upload-{}", crate::http::errors::error_id()));
    let written = write_limited(body, &partial).await;
    let (size, sha256) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&partial, &target).await.map_err(anyhow::Error::from)?;
    let event = Event::Artifact {
        path: Path::new("artifacts").join(&rel).to_string_lossy().into_owned(),
        kind: ArtifactKind::Other,
        size,
        sha256,
    };
    let line = EventLine { ts: crt_trainer::events::unix_now(), event };
    recorder(&app, &run).record(&[Incoming::Event(line)], None).await?;
    Ok(Json(json!({})))
}

/// Streams the body to `path`, hashing it, refusing beyond [`MAX_ARTIFACT_BYTES`].
async fn write_limited(body: Body, path: &Path) -> MlResult<(u64, String)> {
    let mut file = tokio::fs::File::create(path).await.map_err(anyhow::Error::from)?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    let mut hash = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| MlflowError::invalid(format!("the upload broke off: {e}")))?;
        size += chunk.len() as u64;
        if size > MAX_ARTIFACT_BYTES {
            return Err(MlflowError::too_large(format!("an artifact may be at most {MAX_ARTIFACT_BYTES} bytes")));
        }
        hash.update(&chunk);
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    file.flush().await.map_err(anyhow::Error::from)?;
    file.sync_all().await.map_err(anyhow::Error::from)?;
    Ok((size, hex::encode(hash.finalize())))
}

pub async fn download(
    State(app): State<AppState>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> MlResult<Response> {
    let (run, rel) = resolve(&app, &path, false).await?;
    let file_path = artifact_root(&app, &run).join(&rel);
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(f) if file_path.is_file() => f,
        _ => return Err(MlflowError::not_found(format!("no artifact '{}' in run {}", rel.display(), run.id))),
    };
    let len = file.metadata().await.map_err(anyhow::Error::from)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListReq {
    path: Option<String>,
}

pub async fn list(State(app): State<AppState>, MlQuery(q): MlQuery<ListReq>) -> MlResult<Json<Value>> {
    let path = q.path.unwrap_or_default();
    let (run, rel) = resolve(&app, &path, false).await?;
    let dir = artifact_root(&app, &run).join(&rel);
    let mut files = Vec::new();
    if let Ok(mut entries) = tokio::fs::read_dir(&dir).await {
        while let Some(entry) = entries.next_entry().await.map_err(anyhow::Error::from)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".upload-") {
                continue;
            }
            let meta = entry.metadata().await.map_err(anyhow::Error::from)?;
            files.push(if meta.is_dir() {
                json!({ "path": name, "is_dir": true })
            } else {
                json!({ "path": name, "is_dir": false, "file_size": meta.len() })
            });
        }
    }
    files.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Ok(Json(json!({ "files": files })))
}
