//! MLflow's REST tracking protocol as JSON: its error shape and codes, the entities it returns,
//! and its limits.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use crate::store::metrics::value_json;

/// MLflow's limits on `log-batch` (its client splits larger batches itself).
pub const MAX_BATCH_METRICS: usize = 1000;
pub const MAX_BATCH_PARAMS: usize = 100;
pub const MAX_BATCH_TAGS: usize = 100;
pub const MAX_BATCH_TOTAL: usize = 1000;
/// MLflow's bounds on keys and values.
pub const MAX_KEY_CHARS: usize = 250;
pub const MAX_PARAM_VALUE_CHARS: usize = 6000;
pub const MAX_TAG_VALUE_CHARS: usize = 8000;
/// Page sizes: MLflow's defaults and maxima.
pub const MAX_SEARCH_RESULTS: usize = 50_000;
pub const MAX_HISTORY_PAGE: usize = 25_000;

/// An error as MLflow's server sends it: `{"error_code", "message"}` with the status its client
/// expects for that code.
#[derive(Debug, Clone)]
pub struct MlflowError {
    pub code: &'static str,
    pub message: String,
}

impl MlflowError {
    pub fn invalid(message: impl Into<String>) -> Self {
        MlflowError { code: "INVALID_PARAMETER_VALUE", message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        MlflowError { code: "RESOURCE_DOES_NOT_EXIST", message: message.into() }
    }
    pub fn exists(message: impl Into<String>) -> Self {
        MlflowError { code: "RESOURCE_ALREADY_EXISTS", message: message.into() }
    }
    pub fn invalid_state(message: impl Into<String>) -> Self {
        MlflowError { code: "INVALID_STATE", message: message.into() }
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        MlflowError { code: "RESOURCE_LIMIT_EXCEEDED", message: message.into() }
    }

    fn status(&self) -> StatusCode {
        match self.code {
            "RESOURCE_DOES_NOT_EXIST" => StatusCode::NOT_FOUND,
            "RESOURCE_LIMIT_EXCEEDED" => StatusCode::PAYLOAD_TOO_LARGE,
            "INTERNAL_ERROR" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<anyhow::Error> for MlflowError {
    fn from(e: anyhow::Error) -> Self {
        // Logged with an id; the client sees only the id (as for the rest of the API).
        let id = crate::http::errors::error_id();
        tracing::error!(error_id = %id, "internal error in the MLflow API: {e:#}");
        MlflowError { code: "INTERNAL_ERROR", message: format!("internal error; see the server log (error id {id})") }
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error_code": self.code, "message": self.message }))).into_response()
    }
}

pub type MlResult<T> = Result<T, MlflowError>;

/// A run as search and the responses see it: MLflow's attributes plus the latest value of each
/// metric, the params and the tags.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub run_name: String,
    /// RUNNING, SCHEDULED, FINISHED, FAILED or KILLED.
    pub status: String,
    pub user_id: String,
    pub artifact_uri: String,
    /// Milliseconds since the epoch.
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub metrics: BTreeMap<String, f64>,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

/// What the response of a run holds beyond the record.
#[derive(Debug, Clone)]
pub struct RunExtra {
    pub experiment_id: String,
    pub deleted: bool,
    /// Latest point per key: (value, timestamp ms, step).
    pub latest: BTreeMap<String, (f64, i64, i64)>,
    pub inputs: Vec<Value>,
}

pub fn run_info(r: &RunRecord, extra: &RunExtra) -> Value {
    let mut info = json!({
        "run_id": r.run_id,
        "run_uuid": r.run_id,
        "run_name": r.run_name,
        "experiment_id": extra.experiment_id,
        "user_id": r.user_id,
        "status": r.status,
        "artifact_uri": r.artifact_uri,
        "lifecycle_stage": if extra.deleted { "deleted" } else { "active" },
    });
    if let Some(t) = r.start_time {
        info["start_time"] = json!(t);
    }
    if let Some(t) = r.end_time {
        info["end_time"] = json!(t);
    }
    info
}

pub fn run_json(r: &RunRecord, extra: &RunExtra) -> Value {
    let metrics: Vec<Value> = extra
        .latest
        .iter()
        .map(|(k, (v, ts, step))| json!({ "key": k, "value": value_json(*v), "timestamp": ts, "step": step }))
        .collect();
    let params: Vec<Value> = r.params.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
    let tags: Vec<Value> = r.tags.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
    json!({
        "info": run_info(r, extra),
        "data": { "metrics": metrics, "params": params, "tags": tags },
        "inputs": { "dataset_inputs": extra.inputs },
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ExperimentJson {
    pub experiment_id: String,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: &'static str,
    pub creation_time: i64,
    pub last_update_time: i64,
    pub tags: Vec<Value>,
}

/// MLflow's run statuses and ours, both ways.
pub fn status_to_mlflow(ours: &str) -> &'static str {
    match ours {
        "queued" => "SCHEDULED",
        "running" => "RUNNING",
        "finished" => "FINISHED",
        "failed" | "crashed" => "FAILED",
        _ => "KILLED",
    }
}

pub fn status_from_mlflow(theirs: &str) -> MlResult<&'static str> {
    Ok(match theirs {
        "RUNNING" => "running",
        "SCHEDULED" => "queued",
        "FINISHED" => "finished",
        "FAILED" => "failed",
        "KILLED" => "stopped",
        other => {
            return Err(MlflowError::invalid(format!(
                "invalid run status '{other}': expected RUNNING, SCHEDULED, FINISHED, FAILED or KILLED"
            )))
        }
    })
}

/// Opaque paging tokens: the offset into the ordered result, base-10 in base64url.
pub fn page_token(offset: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

pub fn parse_page_token(token: Option<&str>) -> MlResult<usize> {
    use base64::Engine;
    let Some(token) = token.filter(|t| !t.is_empty()) else { return Ok(0) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("offset:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| MlflowError::invalid(format!("invalid page_token '{token}'")))
}

/// MLflow's key rule: letters, digits, `_ - . / space`, at most 250 characters, no `..` or
/// leading `/` (keys become file names in MLflow's own stores).
pub fn check_key(what: &str, key: &str) -> MlResult<()> {
    let ok_chars = key.chars().all(|c| c.is_alphanumeric() || "_-. /:".contains(c));
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || !ok_chars || key.contains("..") || key.starts_with('/')
    {
        return Err(MlflowError::invalid(format!(
            "invalid {what} name '{key}': 1 to {MAX_KEY_CHARS} letters, digits, '_', '-', '.', ' ', ':' or '/' (no '..', no leading '/')"
        )));
    }
    Ok(())
}

pub fn check_len(what: &str, value: &str, max: usize) -> MlResult<()> {
    let n = value.chars().count();
    if n > max {
        return Err(MlflowError::invalid(format!("{what} is {n} characters long; the limit is {max}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_junk() {
        assert_eq!(parse_page_token(Some(&page_token(1234))).unwrap(), 1234);
        assert_eq!(parse_page_token(None).unwrap(), 0);
        assert_eq!(parse_page_token(Some("")).unwrap(), 0);
        assert!(parse_page_token(Some("!!")).is_err());
    }

    #[test]
    fn keys_follow_mlflow() {
        assert!(check_key("metric", "train/loss").is_ok());
        assert!(check_key("metric", "a b-c_d.e").is_ok());
        assert!(check_key("metric", "").is_err());
        assert!(check_key("metric", "../x").is_err());
        assert!(check_key("metric", "/abs").is_err());
        assert!(check_key("metric", &"k".repeat(251)).is_err());
        assert!(check_key("metric", "semi;colon").is_err());
    }

    #[test]
    fn statuses_map_both_ways() {
        for s in ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"] {
            assert_eq!(status_to_mlflow(status_from_mlflow(s).unwrap()), s);
        }
        assert!(status_from_mlflow("DONE").is_err());
    }
}
