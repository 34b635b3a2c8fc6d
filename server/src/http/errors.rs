//! The one error type of the HTTP layer: every failure becomes a JSON body
//! `{"error": "...", "field": "..."}` (field only where one request field is to blame).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::runs::{FieldError, RunError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: bad JSON, a bad query parameter or path segment.
    #[error("{message}")]
    BadRequest { message: String, field: Option<String> },
    /// Well-formed but invalid: an unknown value, a missing parent, σ ≤ 0, …
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A bad line of an uploaded file (`field`): 422, or 413 when the file is too long; the body
    /// names the line (1-based) and the column.
    #[error("{field}: {message}")]
    AtLine { field: String, line: usize, column: Option<String>, message: String, too_large: bool },
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the resource's state (stop a finished run, …).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No valid credentials (a missing, unknown or revoked token).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right: a read token on a change, a cross-site request.
    #[error("{0}")]
    Forbidden(String),
    /// Logged with an id; the client sees only the id, never the text (paths, SQL, …).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_param(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { message: format!("{field}: {}", message.into()), field: Some(field.to_string()) }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::AtLine { too_large: true, .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::AtLine { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::BadRequest { message, field: Some(field) } => json!({ "error": message, "field": field }),
            ApiError::Invalid { field, .. } => json!({ "error": self.to_string(), "field": field }),
            ApiError::AtLine { field, line, column, .. } => {
                json!({ "error": self.to_string(), "field": field, "line": line, "column": column })
            }
            ApiError::Internal(e) => return internal_error_response(&format!("{e:#}")),
            other => json!({ "error": other.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A fresh id that ties a client's error report to the server log line.
pub fn error_id() -> String {
    crate::auth::secret::generate("").map(|s| s[..12].to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Logs `detail` under a new error id and answers 500 with only that id: internal text (paths,
/// SQL, panic messages) stays in the log.
pub fn internal_error_response(detail: &str) -> Response {
    let id = error_id();
    tracing::error!(error_id = %id, "internal error: {detail}");
    let body = json!({ "error": format!("internal error; see the server log (error id {id})"), "error_id": id });
    (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
}

/// For `CatchPanicLayer`: a panicking handler becomes an ordinary internal error.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    internal_error_response(&format!("handler panicked: {text}"))
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid { field: e.field, message: e.message }
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Invalid(f) => f.into(),
            RunError::NotFound(m) => ApiError::NotFound(m),
            RunError::Conflict(m) => ApiError::Conflict(m),
            RunError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest { message: format!("invalid path: {}", e.body_text()), field: None }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest { message: format!("invalid query string: {}", e.body_text()), field: None }
    }
}

/// A JSON request body, parsed so that errors name the offending field: malformed JSON is a
/// 400, a wrong, missing or unknown field a 422 with `field` set (e.g. `config.method.sigma`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("the request body is larger than {} bytes", super::MAX_BODY_BYTES))
            } else {
                ApiError::BadRequest {
                    message: format!("cannot read the request body: {}", e.body_text()),
                    field: None,
                }
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest { message: format!("invalid JSON: {inner}"), field: None }
        } else {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_string() } else { path };
            // The position adds nothing once the field is named.
            let message = inner.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            ApiError::Invalid { field, message }
        }
    })?;
    de.end().map_err(|e| ApiError::BadRequest { message: format!("invalid JSON: {e}"), field: None })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn json_errors_name_fields() {
        match parse_json::<Req>(b"{\"name\": \"a\"").unwrap_err() {
            ApiError::BadRequest { message, .. } => assert!(message.starts_with("invalid JSON"), "{message}"),
            other => panic!("{other:?}"),
        }
        match parse_json::<Req>(br#"{"name": "a", "inner": {"n": -1}}"#).unwrap_err() {
            ApiError::Invalid { field, .. } => assert_eq!(field, "inner.n"),
            other => panic!("{other:?}"),
        }
        match parse_json::<Req>(br#"{"name": "a", "inner": {"n": 1}, "x": 2}"#).unwrap_err() {
            ApiError::Invalid { field, message } => {
                assert_eq!(field, "x");
                assert!(message.contains("unknown field `x`"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_json::<Req>(br#"{"name": "a", "inner": {"n": 1}} trailing"#).is_err());
    }
}
