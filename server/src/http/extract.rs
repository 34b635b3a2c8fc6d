//! What the JSON API's handlers share: path and query extractors whose failures are JSON
//! `ApiError`s, and the lookups that turn an unknown id into a 404.

use axum::extract::FromRequestParts;

use super::errors::ApiError;
use super::AppState;
use crate::store::experiments::{self, Experiment};
use crate::store::runs::Run;

/// Path segments (`P<i64>`, `P<(i64, String)>`), with failures as JSON `ApiError`s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct P<T>(pub T);

/// Query parameters, with failures as JSON `ApiError`s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Q<T>(pub T);

/// Text that the database stores may not contain NUL characters (PostgreSQL's `text` cannot hold
/// them: storing one was an internal error). 422 naming the field.
pub fn no_nul(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::Invalid {
            field: field.to_string(),
            message: "must not contain NUL characters (\\u0000)".into(),
        });
    }
    Ok(())
}

/// A query parameter that must be one of `allowed`.
pub fn one_of(field: &str, value: Option<String>, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(ApiError::bad_param(field, format!("unknown value '{v}'; expected one of {}", allowed.join(", "))))
        }
        other => Ok(other),
    }
}

pub async fn find_experiment(app: &AppState, id: i64) -> Result<Experiment, ApiError> {
    experiments::get(&app.store.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("experiment {id} does not exist")))
}

pub async fn find_run(app: &AppState, id: i64) -> Result<Run, ApiError> {
    Ok(app.manager.get(id).await?)
}
