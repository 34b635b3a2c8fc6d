//! `POST /api/v1/experiments/{id}/imports/model`: a checkpoint of the reference codes
//! (`{'arch', 'state_dict'}` of `Sequential(NormalizeLayer, network)`, PyTorch's zip format)
//! becomes a finished run of kind `external` holding a model directory, so it can be certified
//! or teach a CRT transfer like a model trained here.
//!
//! The body is the checkpoint file as it is (`Content-Type: application/octet-stream`), streamed
//! to disk; the settings are query parameters. The conversion is the trainer's own
//! `crt-trainer import --from pytorch` (the server does not read tensors); its refusal (a wrong
//! architecture, a missing or misshapen key) is answered as 422 naming the file, and nothing is
//! stored.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crt_trainer::config::Dataset;
use crt_trainer::events::unix_now;

use super::errors::ApiError;
use super::extract::{find_experiment, no_nul, P, Q};
use super::imports::{created, given, insert_running, invalid, run_name};
use super::runs::RunView;
use super::AppState;
use crate::record::{Incoming, Recorder};
use crate::runs::RunStatus;
use crate::store;
use crate::store::runs::{ConfigColumns, Ending};

/// The largest checkpoint accepted (a CIFAR ResNet-110 is ~7 MB, an ImageNet ResNet-50 ~100 MB).
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;
/// The architectures `crt-trainer import` reads.
pub const ARCHS: [&str; 4] = ["cifar_resnet20", "cifar_resnet110", "lenet", "vit"];
/// The uploaded file's name in the run directory.
const UPLOAD_FILE: &str = "checkpoint.pth.tar";
/// How long the conversion may take.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelQuery {
    arch: Option<String>,
    dataset: Option<String>,
    name: Option<String>,
    normalization: Option<String>,
    sigma: Option<String>,
}

/// The checked settings: the arguments of `crt-trainer import`.
struct Settings {
    arch: String,
    dataset: Dataset,
    name: String,
    normalization: Option<String>,
    sigma: Option<f64>,
}

fn settings(q: &ModelQuery) -> Result<Settings, ApiError> {
    let arch = given(&q.arch).ok_or_else(|| invalid("arch", format!("required: one of {}", ARCHS.join(", "))))?;
    if !ARCHS.contains(&arch) {
        return Err(invalid("arch", format!("unknown architecture '{arch}'; expected one of {}", ARCHS.join(", "))));
    }
    let dataset = given(&q.dataset).ok_or_else(|| invalid("dataset", "required: mnist, fashion-mnist or cifar10"))?;
    let dataset = dataset.parse::<Dataset>().map_err(|e| invalid("dataset", e.message))?;
    let name = run_name(&q.name, || format!("imported {arch}"))?;
    // The trainer checks the normalization's form; here only its size and characters.
    let normalization = match given(&q.normalization) {
        Some(n) if n.len() > 200 => return Err(invalid("normalization", "must be at most 200 characters")),
        Some(n) => {
            no_nul("normalization", n)?;
            Some(n.to_string())
        }
        None => None,
    };
    let sigma = match given(&q.sigma) {
        Some(s) => Some(
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0 && *v <= 100.0)
                .ok_or_else(|| invalid("sigma", format!("expected a number in (0, 100], got '{s}'")))?,
        ),
        None => None,
    };
    Ok(Settings { arch: arch.to_string(), dataset, name, normalization, sigma })
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let mime = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
    match mime.map(str::trim) {
        Some("application/octet-stream") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(
            "the request body must be the checkpoint file itself (Content-Type: application/octet-stream)".into(),
        )),
    }
}

/// Streams the body into `path`, at most [`MAX_CHECKPOINT_BYTES`] (413 beyond).
async fn save_upload(body: Body, path: &Path) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(path).await.map_err(anyhow::Error::from)?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest { message: format!("cannot read the request body: {e}"), field: None })?;
        size += chunk.len() as u64;
        if size > MAX_CHECKPOINT_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "file: the checkpoint may be at most {} MiB",
                MAX_CHECKPOINT_BYTES >> 20
            )));
        }
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    file.flush().await.map_err(anyhow::Error::from)?;
    if size == 0 {
        return Err(invalid("file", "the request body is empty: send the checkpoint file"));
    }
    Ok(size)
}

/// Reads and drops a body, up to [`MAX_CHECKPOINT_BYTES`].
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        size += chunk.len() as u64;
        if size > MAX_CHECKPOINT_BYTES {
            break;
        }
    }
}

/// Runs `crt-trainer import` into `dir`; its error message (the last line it printed) on refusal.
async fn convert(app: &AppState, s: &Settings, dir: &Path) -> Result<String, ApiError> {
    let mut cmd = tokio::process::Command::new(&app.settings.trainer_bin);
    cmd.args(["import", "--from", "pytorch"])
        .arg(dir.join(UPLOAD_FILE))
        .args(["--arch", &s.arch, "--dataset", s.dataset.as_str(), "--out"])
        .arg(dir)
        .kill_on_drop(true);
    if let Some(n) = &s.normalization {
        cmd.args(["--normalization", n]);
    }
    if let Some(sigma) = s.sigma {
        cmd.args(["--sigma", &sigma.to_string()]);
    }
    let out = tokio::time::timeout(IMPORT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("crt-trainer import took longer than {} s", IMPORT_TIMEOUT.as_secs()))?
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", app.settings.trainer_bin.display()))?;
    let said = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes).lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("").to_string()
    };
    if out.status.success() {
        Ok(said(&out.stdout))
    } else {
        // The trainer's message names the key, the flag or the remedy; the path is ours.
        let message = said(&out.stderr).replace(&dir.join(UPLOAD_FILE).display().to_string(), "the checkpoint");
        let message = message.strip_prefix("error: ").unwrap_or(&message).to_string();
        Err(invalid("file", if message.is_empty() { "crt-trainer import refused the file".into() } else { message }))
    }
}

pub(super) async fn import_model(
    State(app): State<AppState>,
    P(experiment_id): P<i64>,
    Q(q): Q<ModelQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let checked = async {
        let exp = find_experiment(&app, experiment_id).await?;
        check_content_type(&headers)?;
        Ok::<_, ApiError>((exp, settings(&q)?))
    }
    .await;
    let (exp, s) = match checked {
        Ok(v) => v,
        Err(e) => {
            // Read the upload before refusing it, so the client gets the answer rather than a
            // connection closed while it was still sending.
            drain(body).await;
            return Err(e);
        }
    };
    // Converted in a staging directory first: a refused file leaves nothing behind.
    let staging = app.settings.runs_dir.join(format!(".import-{}", uuid_like()));
    tokio::fs::create_dir_all(&staging).await.map_err(anyhow::Error::from)?;
    let converted = async {
        let size = save_upload(body, &staging.join(UPLOAD_FILE)).await?;
        let said = convert(&app, &s, &staging).await?;
        Ok::<_, ApiError>((size, said))
    }
    .await;
    let (size, said) = match converted {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
    };

    let now = unix_now();
    let config = json!({
        "kind": "train",
        "imported": { "format": "pytorch", "file": UPLOAD_FILE, "arch": s.arch, "normalization": s.normalization },
        "model": { "arch": s.arch },
        "data": { "dataset": s.dataset.as_str() },
    });
    let columns = ConfigColumns {
        arch: Some(s.arch.clone()),
        dataset: Some(s.dataset.as_str().to_string()),
        sigma: s.sigma,
        ..Default::default()
    };
    let id = insert_running(&app, exp.id, &s.name, &columns, &config).await?;
    let out_dir = app.settings.run_dir(id);
    if let Some(parent) = out_dir.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(anyhow::Error::from)?;
    }
    tokio::fs::rename(&staging, &out_dir).await.map_err(anyhow::Error::from)?;

    let mut batch = vec![
        Incoming::Param { key: "arch".into(), value: s.arch.clone() },
        Incoming::Param { key: "dataset".into(), value: s.dataset.as_str().into() },
        Incoming::Tag { key: "mlflow.runName".into(), value: s.name.clone() },
        Incoming::Tag { key: super::imports::IMPORTED_TAG.into(), value: "model".into() },
        Incoming::Log {
            stream: "server",
            ts: now,
            text: format!("imported a PyTorch checkpoint of {size} bytes: {said}"),
        },
    ];
    if let Some(sigma) = s.sigma {
        batch.push(Incoming::Param { key: "sigma".into(), value: sigma.to_string() });
    }
    let recorder = Recorder::new(app.store.clone(), id, exp.id, out_dir.clone());
    recorder.record(&batch, None).await?;
    let files = crate::record::unreported_files(&out_dir, &[]).await;
    crate::record::record_artifacts(&app.store, id, exp.id, &files).await?;
    let end = Ending { status: RunStatus::Finished, exit_code: None, exit_signal: None, error: None, wall_time_s: 0.0 };
    let mut w = app.store.write().await?;
    store::runs::set_ended(w.conn(), id, &end, unix_now()).await?;
    w.journal(id, exp.id, "status", json!({ "status": "finished", "external": true, "imported": true })).await?;
    w.commit().await?;
    created(&app, id).await
}

/// A name for a staging directory that no two requests share.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}-{}", std::process::id(), unix_now().to_bits(), NEXT.fetch_add(1, Ordering::Relaxed))
}
