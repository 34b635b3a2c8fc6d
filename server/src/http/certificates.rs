//! `GET /api/v1/runs/{id}/certificates` and `…/certificates/summary`: a certification's
//! per-image results and its certified accuracy by radius.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::errors::ApiError;
use super::extract::{find_run, P, Q};
use super::AppState;
use crate::certified;
use crate::store::certificates;

/// The largest page of per-image results (`limit`).
pub const MAX_CERTIFICATES_PAGE: i64 = 100_000;
/// The most radii in `radii`.
pub const MAX_RADII: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertQuery {
    /// Images with index greater than this.
    after: Option<i64>,
    limit: Option<i64>,
}

pub(super) async fn list_certificates(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<CertQuery>,
) -> Result<Json<Vec<crt_trainer::events::Certificate>>, ApiError> {
    find_run(&app, id).await?;
    let limit = q.limit.unwrap_or(10_000);
    if limit < 1 {
        return Err(ApiError::bad_param("limit", format!("must be between 1 and {MAX_CERTIFICATES_PAGE}")));
    }
    if limit > MAX_CERTIFICATES_PAGE {
        return Err(super::runs::too_large("limit", format!("must be at most {MAX_CERTIFICATES_PAGE} (got {limit})")));
    }
    Ok(Json(certificates::list(&app.store.pool, id, q.after.unwrap_or(-1), limit).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SummaryQuery {
    /// Comma-separated radii; default 0, 0.25, … up to the largest radius (at least 1).
    radii: Option<String>,
}

pub(super) async fn certificate_summary(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<SummaryQuery>,
) -> Result<Json<certified::CertSummary>, ApiError> {
    find_run(&app, id).await?;
    let certs = certificates::list(&app.store.pool, id, -1, i64::MAX).await?;
    let radii = match q.radii {
        Some(list) if list.split(',').count() > MAX_RADII => {
            return Err(super::runs::too_large(
                "radii",
                format!("must list at most {MAX_RADII} radii (got {})", list.split(',').count()),
            ));
        }
        Some(list) => list
            .split(',')
            .map(|r| r.trim().parse::<f64>().ok().filter(|r| r.is_finite() && *r >= 0.0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_param("radii", "expected comma-separated numbers >= 0, e.g. 0,0.25,0.5"))?,
        None => certified::default_radii(&certs),
    };
    Ok(Json(certified::summarize(&certs, &radii)))
}
