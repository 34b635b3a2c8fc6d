//! `GET /api/v1/runs/{id}/logs`: a page of a run's log lines.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use super::extract::{find_run, one_of, P, Q};
use super::AppState;
use crate::store::logs;

/// The largest page of log lines (`limit`).
pub const MAX_LOG_PAGE: i64 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogParams {
    after: Option<i64>,
    before: Option<i64>,
    stream: Option<String>,
    /// The newest `limit` lines instead of the oldest.
    #[serde(default)]
    tail: bool,
    limit: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct LogPage {
    lines: Vec<logs::LogLine>,
    /// Pass as `after` to read the following lines (the last id returned, or `after`).
    next_after: i64,
}

pub(super) async fn run_logs(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<LogParams>,
) -> Result<Json<LogPage>, ApiError> {
    find_run(&app, id).await?;
    let limit = q.limit.unwrap_or(500);
    if limit < 1 {
        return Err(ApiError::bad_param("limit", format!("must be between 1 and {MAX_LOG_PAGE}")));
    }
    if limit > MAX_LOG_PAGE {
        return Err(super::runs::too_large("limit", format!("must be at most {MAX_LOG_PAGE} (got {limit})")));
    }
    let stream = one_of("stream", q.stream, &["stdout", "stderr", "trainer", "server"])?;
    let query = logs::LogQuery { after: q.after, before: q.before, stream, tail: q.tail, limit };
    let lines = logs::read(&app.store.pool, id, &query).await?;
    let next_after = lines.last().map(|l| l.id).or(q.after).unwrap_or(0);
    Ok(Json(LogPage { lines, next_after }))
}
