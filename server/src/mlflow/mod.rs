//! The MLflow-compatible tracking API (`/api/2.0/mlflow/…` and the artifact proxy
//! `/api/2.0/mlflow-artifacts/…`): what MLflow's own Python client calls to log, so a PyTorch
//! script logs into CRT Lab by setting `MLFLOW_TRACKING_URI`. Its runs are runs of kind
//! `external`: no trainer, no config; everything they log goes through the one recording entry
//! point (`record::Recorder`), one transaction per request.

pub mod artifacts;
pub mod experiments;
pub mod logging;
pub mod protocol;
pub mod runs;
pub mod search;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use protocol::MlflowError;

/// A JSON body with MLflow's errors: malformed JSON or a wrong field is INVALID_PARAMETER_VALUE
/// naming the field; unknown fields are ignored, as MLflow's server does (clients of other
/// versions send more).
pub struct MlJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for MlJson<T> {
    type Rejection = MlflowError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                MlflowError::too_large(format!("the request body is larger than {} bytes", crate::http::MAX_BODY_BYTES))
            } else {
                MlflowError::invalid(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        // Postgres cannot store NUL in text: refuse it here, for every field at once.
        if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
            return Err(MlflowError::invalid("strings must not contain NUL characters (\\u0000)"));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let inner = e.inner().to_string();
            let inner = inner.split(" at line ").next().unwrap_or(&inner).to_string();
            if e.inner().is_syntax() || e.inner().is_eof() {
                MlflowError::invalid(format!("malformed JSON: {inner}"))
            } else {
                MlflowError::invalid(format!("invalid value for '{}': {inner}", e.path()))
            }
        })?;
        Ok(MlJson(value))
    }
}

/// Query parameters with MLflow's errors (the client sends GET parameters in the query string).
pub struct MlQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for MlQuery<T> {
    type Rejection = MlflowError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        if query.contains("%00") {
            return Err(MlflowError::invalid("query parameters must not contain NUL characters"));
        }
        serde_urlencoded::from_str(query)
            .map(MlQuery)
            .map_err(|e| MlflowError::invalid(format!("invalid query string: {e}")))
    }
}

/// An int64 as MLflow's clients send it: a JSON number or a string of digits.
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(i64),
        F(f64),
        S(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n)),
        Some(Raw::F(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        Some(Raw::F(f)) => Err(serde::de::Error::custom(format!("expected an integer, got {f}"))),
        Some(Raw::S(s)) => {
            s.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("expected an integer, got '{s}'")))
        }
    }
}

/// A double as MLflow's clients send it: a number, or a string for the non-finite values
/// ("NaN", "Infinity", "-Infinity"; Rust's float parser reads those and "inf"/"nan").
pub fn double<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        F(f64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::F(f) => Ok(f),
        Raw::S(s) => s.parse().map_err(|_| serde::de::Error::custom(format!("expected a number, got '{s}'"))),
    }
}

/// The run a request names: `run_id`, or the older `run_uuid` that clients still send.
pub fn run_id_param(run_id: Option<String>, run_uuid: Option<String>) -> Result<String, MlflowError> {
    run_id
        .filter(|s| !s.is_empty())
        .or(run_uuid.filter(|s| !s.is_empty()))
        .ok_or_else(|| MlflowError::invalid("Missing value for required parameter 'run_id'"))
}

/// An MLflow id (a string of digits) as ours.
pub fn parse_id(what: &str, raw: &str) -> Result<i64, MlflowError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| MlflowError::not_found(format!("no {what} with id '{raw}'")))
}

pub fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}
