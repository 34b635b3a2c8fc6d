//! `POST /api/v1/experiments/{id}/imports/certification`: a certification made elsewhere (the
//! reference codes' per-image TSV, `crate::import`) becomes a finished run of kind `external` in
//! the experiment, with its certificates, σ, N, N0 and α, so it is shown and compared like a
//! CRT Lab certification.
//!
//! The body is the file as it is (`Content-Type: text/tab-separated-values` or `text/plain`);
//! the settings are query parameters. Everything is checked before anything is stored.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crt_trainer::config::{Dataset, RunKind};
use crt_trainer::events::{unix_now, ArtifactKind, Certificate, Event, EventLine};

use super::errors::ApiError;
use super::extract::{find_experiment, no_nul, P, Q};
use super::runs::RunView;
use super::AppState;
use crate::certified;
use crate::import::{self, LineError, MAX_TSV_BYTES};
use crate::record::{Incoming, Recorder};
use crate::runs::validate::MAX_RUN_NAME_CHARS;
use crate::runs::RunStatus;
use crate::store::journal::{self, Scope};
use crate::store::runs::{ConfigColumns, Ending, Placement};
use crate::store::{self};

/// The file's name in the run directory (the name the trainer gives its own table).
pub const TSV_FILE: &str = "certify.tsv";
/// The tag that marks an imported run: MLflow clients cannot log to it (it is a finished result).
pub const IMPORTED_TAG: &str = "crt.imported";
/// The longest `source` note, in characters.
pub const MAX_SOURCE_CHARS: usize = 2000;
/// The largest N (and N0) accepted.
pub const MAX_SAMPLES: u64 = 1_000_000_000;

/// The query parameters, as text: each is parsed here so that an error names it (422).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportQuery {
    name: Option<String>,
    sigma: Option<String>,
    n: Option<String>,
    n0: Option<String>,
    alpha: Option<String>,
    dataset: Option<String>,
    source: Option<String>,
}

pub(super) fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid { field: field.to_string(), message: message.into() }
}

/// A query parameter's value, trimmed; `None` when absent or blank.
pub(super) fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// An imported run's name: the one given (checked like a run's name) or `default`.
pub(super) fn run_name(given_name: &Option<String>, default: impl FnOnce() -> String) -> Result<String, ApiError> {
    match given(given_name) {
        Some(n) => {
            no_nul("name", n)?;
            if n.chars().count() > MAX_RUN_NAME_CHARS {
                return Err(invalid("name", format!("must be at most {MAX_RUN_NAME_CHARS} characters")));
            }
            Ok(n.to_string())
        }
        None => Ok(default()),
    }
}

fn required<'a>(field: &str, value: &'a Option<String>, what: &str) -> Result<&'a str, ApiError> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| invalid(field, format!("required: {what}")))
}

/// The certification's settings, checked.
#[derive(Debug, Clone)]
struct Settings {
    name: String,
    sigma: f64,
    n: u64,
    n0: u64,
    alpha: f64,
    dataset: Option<Dataset>,
    source: Option<String>,
}

fn settings(q: &ImportQuery) -> Result<Settings, ApiError> {
    let sigma = required("sigma", &q.sigma, "the noise level σ the file was certified with, e.g. 0.25")?;
    let sigma: f64 = sigma
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or_else(|| invalid("sigma", format!("expected a number > 0, got '{sigma}'")))?;
    let count = |field: &str, what: &str| -> Result<u64, ApiError> {
        let raw = required(field, if field == "n" { &q.n } else { &q.n0 }, what)?;
        raw.parse::<u64>()
            .ok()
            .filter(|v| (1..=MAX_SAMPLES).contains(v))
            .ok_or_else(|| invalid(field, format!("expected an integer from 1 to {MAX_SAMPLES}, got '{raw}'")))
    };
    let n = count("n", "the samples that estimated p_A (certify.py's --N), e.g. 100000")?;
    let n0 = count("n0", "the samples that chose the class (certify.py's --N0), e.g. 100")?;
    let alpha = required("alpha", &q.alpha, "the significance (certify.py's --alpha), e.g. 0.001")?;
    let alpha: f64 = alpha
        .parse()
        .ok()
        .filter(|a: &f64| *a > 0.0 && *a < 1.0)
        .ok_or_else(|| invalid("alpha", format!("expected a number between 0 and 1 (exclusive), got '{alpha}'")))?;
    let name = run_name(&q.name, || format!("imported certification σ={sigma}"))?;
    let dataset = match q.dataset.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => Some(d.parse::<Dataset>().map_err(|e| invalid("dataset", e.message))?),
        None => None,
    };
    let source = match q.source.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => {
            no_nul("source", s)?;
            if s.chars().count() > MAX_SOURCE_CHARS {
                return Err(invalid("source", format!("must be at most {MAX_SOURCE_CHARS} characters")));
            }
            Some(s.to_string())
        }
        None => None,
    };
    Ok(Settings { name, sigma, n, n0, alpha, dataset, source })
}

fn line_error(e: LineError) -> ApiError {
    ApiError::AtLine {
        field: "tsv".into(),
        line: e.line,
        column: e.column.map(String::from),
        message: e.to_string(),
        too_large: e.too_large,
    }
}

/// The body, at most [`MAX_TSV_BYTES`] (413 beyond), read as it streams in.
async fn read_limited(body: Body) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest { message: format!("cannot read the request body: {e}"), field: None })?;
        if out.len() + chunk.len() > MAX_TSV_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "tsv: the file may be at most {MAX_TSV_BYTES} bytes ({} MiB)",
                MAX_TSV_BYTES >> 20
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match mime.as_deref() {
        Some("text/tab-separated-values" | "text/plain") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(
            "the request body must be the TSV file itself (Content-Type: text/tab-separated-values or text/plain)"
                .into(),
        )),
    }
}

pub(super) async fn import_certification(
    State(app): State<AppState>,
    P(experiment_id): P<i64>,
    Q(q): Q<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let exp = find_experiment(&app, experiment_id).await?;
    let s = settings(&q)?;
    check_content_type(&headers)?;
    let bytes = read_limited(body).await?;
    let certs = import::parse_reference_tsv(&bytes).map_err(line_error)?;

    // The certification's own time: the images' times summed (the file records no other).
    let wall_time_s: f64 = 0.0 + certs.iter().map(|c| c.time).sum::<f64>();
    let summary = summary_metrics(&certs);
    let mut config = json!({
        "kind": "certify",
        "imported": { "format": "reference-tsv", "file": TSV_FILE, "images": certs.len() },
        "smoothing": { "sigma": s.sigma, "n0": s.n0, "n": s.n, "alpha": s.alpha },
    });
    if let Some(d) = s.dataset {
        config["data"] = json!({ "dataset": d });
    }
    if let Some(src) = &s.source {
        config["imported"]["source"] = json!(src);
    }

    // The run, running until its results are in.
    let columns = ConfigColumns {
        sigma: Some(s.sigma),
        dataset: s.dataset.map(|d| d.as_str().to_string()),
        ..Default::default()
    };
    let id = insert_running(&app, exp.id, &s.name, &columns, &config).await?;

    match record(&app, id, exp.id, &s, &certs, &bytes, summary, wall_time_s).await {
        Ok(()) => {}
        Err(e) => {
            // The run stays, failed, with the reason (the database or disk failed, not the file).
            let end = Ending {
                status: RunStatus::Failed,
                exit_code: None,
                exit_signal: None,
                error: Some("storing the imported certification failed; see the server log".into()),
                wall_time_s: 0.0,
            };
            if let Ok(mut w) = app.store.write().await {
                let _ = store::runs::set_ended(w.conn(), id, &end, unix_now()).await;
                let _ = w.journal(id, exp.id, "status", json!({ "status": "failed" })).await;
                let _ = w.commit().await;
            }
            return Err(ApiError::Internal(e));
        }
    }
    created(&app, id).await
}

/// An imported run's row, running until its results are in: kind `external`, its config and
/// directory, and the `running` status event.
pub(super) async fn insert_running(
    app: &AppState,
    experiment_id: i64,
    name: &str,
    columns: &ConfigColumns,
    config: &serde_json::Value,
) -> Result<i64, ApiError> {
    let now = unix_now();
    let mut w = app.store.write().await?;
    let id = store::runs::insert(w.conn(), experiment_id, name, RunKind::External, columns, &Placement::default(), now)
        .await?;
    let out_dir = app.settings.run_dir(id);
    store::runs::set_config(w.conn(), id, name, config, &out_dir.display().to_string()).await?;
    store::runs::set_running(w.conn(), id, now).await?;
    w.journal(id, experiment_id, "status", json!({ "status": "running", "external": true, "imported": true })).await?;
    w.commit().await?;
    Ok(id)
}

/// The 201 answer of an import: the new run as the API shows runs.
pub(super) async fn created(app: &AppState, id: i64) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let last_seq = journal::last_seq(&app.store.pool, Scope::Run(id)).await?;
    let run =
        store::runs::get(&app.store.pool, id).await?.ok_or_else(|| anyhow::anyhow!("imported run {id} vanished"))?;
    Ok((StatusCode::CREATED, Json(RunView::load(&app.store.pool, run, last_seq).await?)))
}

/// The final metrics a CRT Lab certify run records (`certified_acc@R` at 0, 0.25, … up to the
/// largest radius, at least 1; `acr`, `clean_acc`, `images`, `abstained`), from the same
/// computation as the certificate summary, so tables read both kinds of run alike.
pub fn summary_metrics(certs: &[Certificate]) -> BTreeMap<String, f64> {
    let s = certified::summarize(certs, &certified::default_radii(certs));
    let mut m: BTreeMap<String, f64> =
        s.radii.iter().map(|r| (format!("certified_acc@{}", r.radius), r.certified_accuracy)).collect();
    m.insert("acr".into(), s.acr);
    m.insert("clean_acc".into(), s.accuracy);
    m.insert("images".into(), s.n as f64);
    m.insert("abstained".into(), certs.iter().filter(|c| c.predict < 0).count() as f64);
    m
}

/// The file kept in the run directory, and everything else recorded through the one recording
/// entry point (params, certificates, the artifact, a log line); then the run is finished with
/// its summary.
#[allow(clippy::too_many_arguments)]
async fn record(
    app: &AppState,
    id: i64,
    experiment_id: i64,
    s: &Settings,
    certs: &[Certificate],
    bytes: &[u8],
    summary: BTreeMap<String, f64>,
    wall_time_s: f64,
) -> anyhow::Result<()> {
    let out_dir = app.settings.run_dir(id);
    tokio::fs::create_dir_all(&out_dir).await?;
    let path = out_dir.join(TSV_FILE);
    tokio::fs::write(&path, bytes).await?;
    let sha256 = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(bytes))
    };
    let ts = unix_now();
    let mut params = vec![
        ("sigma", s.sigma.to_string()),
        ("n", s.n.to_string()),
        ("n0", s.n0.to_string()),
        ("alpha", s.alpha.to_string()),
    ];
    if let Some(d) = s.dataset {
        params.push(("dataset", d.as_str().to_string()));
    }
    if let Some(src) = &s.source {
        params.push(("source", src.clone()));
    }
    let mut batch: Vec<Incoming> =
        params.into_iter().map(|(k, v)| Incoming::Param { key: k.to_string(), value: v }).collect();
    batch.push(Incoming::Tag { key: "mlflow.runName".into(), value: s.name.clone() });
    batch.push(Incoming::Tag { key: IMPORTED_TAG.into(), value: "certification".into() });
    batch.extend(certs.iter().map(|c| Incoming::Event(EventLine { ts, event: Event::Certified(c.clone()) })));
    batch.push(Incoming::Event(EventLine {
        ts,
        event: Event::Artifact {
            path: TSV_FILE.into(),
            kind: ArtifactKind::Certificates,
            size: bytes.len() as u64,
            sha256,
        },
    }));
    batch.push(Incoming::Log {
        stream: "server",
        ts,
        text: format!(
            "imported {} certificates (σ = {}, N = {}, N0 = {}, α = {}) from a reference TSV of {} bytes",
            certs.len(),
            s.sigma,
            s.n,
            s.n0,
            s.alpha,
            bytes.len()
        ),
    });
    Recorder::new(app.store.clone(), id, experiment_id, out_dir).record(&batch, None).await?;

    let shown: serde_json::Map<String, serde_json::Value> =
        summary.iter().map(|(k, v)| (k.clone(), store::metrics::value_json(*v))).collect();
    let end = Ending { status: RunStatus::Finished, exit_code: None, exit_signal: None, error: None, wall_time_s };
    let mut w = app.store.write().await?;
    store::runs::set_summary(w.conn(), id, &serde_json::Value::Object(shown)).await?;
    store::runs::set_ended(w.conn(), id, &end, unix_now()).await?;
    w.journal(id, experiment_id, "status", json!({ "status": "finished", "external": true, "imported": true })).await?;
    w.commit().await
}
