//! `/api/v1/tokens`: list, create and revoke API tokens (admin scope). The secret of a new token is
//! in the creation response only; the database keeps its hash.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::errors::{ApiError, JsonBody};
use super::extract::P;
use super::AppState;
use crate::auth::{self, Scope};
use crate::store::tokens::{self, Token};

/// Longest token name accepted.
pub const MAX_TOKEN_NAME: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
    scope: Scope,
}

#[derive(Debug, Serialize)]
pub(super) struct CreatedToken {
    #[serde(flatten)]
    record: Token,
    /// The secret: shown here once, never again.
    token: String,
}

pub(super) async fn list(State(app): State<AppState>) -> Result<Json<Vec<Token>>, ApiError> {
    Ok(Json(tokens::list(&app.store).await?))
}

pub(super) async fn create(
    State(app): State<AppState>,
    JsonBody(req): JsonBody<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let name = check_name(&req.name).map_err(|message| ApiError::Invalid { field: "name".into(), message })?;
    let (token, record) = auth::create_token(&app.store, name, req.scope).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { record, token })))
}

pub(super) async fn revoke(State(app): State<AppState>, P(id): P<i64>) -> Result<StatusCode, ApiError> {
    if tokens::revoke(&app.store, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("token {id} does not exist")))
    }
}

/// A token's name: 1 to `MAX_TOKEN_NAME` characters after trimming.
pub fn check_name(name: &str) -> Result<&str, String> {
    if name.contains('\0') {
        return Err("must not contain NUL characters (\\u0000)".into());
    }
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_TOKEN_NAME {
        return Err(format!("must be 1 to {MAX_TOKEN_NAME} characters (got {chars})"));
    }
    Ok(name)
}
