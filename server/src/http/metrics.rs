//! `GET /api/v1/runs/{id}/metrics`: a run's metric history, optionally downsampled.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use super::extract::{find_run, P, Q};
use super::AppState;
use crate::store::metrics::{self, MetricPoint};
use crate::store::rollup;

/// The most keys in `keys`.
pub const MAX_KEYS: usize = 100;
/// The largest `points` (per key).
pub const MAX_POINTS: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricQuery {
    /// Comma-separated keys; default all.
    keys: Option<String>,
    /// Most points per key (at least 3); default all points. A longer history is cut into
    /// equal step buckets, each giving its minimum, maximum and last point.
    points: Option<usize>,
}

#[derive(Serialize)]
struct MetricSeries {
    /// Points stored for this key.
    total: usize,
    downsampled: bool,
    points: Vec<MetricPoint>,
}

#[derive(Serialize)]
pub(super) struct MetricHistory {
    run_id: i64,
    metrics: BTreeMap<String, MetricSeries>,
}

pub(super) async fn metric_history(
    State(app): State<AppState>,
    P(id): P<i64>,
    Q(q): Q<MetricQuery>,
) -> Result<Json<MetricHistory>, ApiError> {
    find_run(&app, id).await?;
    if let Some(points) = q.points.filter(|p| *p > MAX_POINTS) {
        return Err(super::runs::too_large("points", format!("must be at most {MAX_POINTS} (got {points})")));
    }
    if q.points.is_some_and(|p| p < 3) {
        return Err(ApiError::bad_param(
            "points",
            "must be at least 3 (each bucket keeps its min, max and last point)",
        ));
    }
    let known = metrics::keys(&app.store.pool, id).await?;
    let mut keys: Vec<String> = match &q.keys {
        Some(list) => list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect(),
        None => known.clone(),
    };
    if keys.len() > MAX_KEYS {
        return Err(super::runs::too_large("keys", format!("must list at most {MAX_KEYS} keys (got {})", keys.len())));
    }
    if let Some(unknown) = keys.iter().find(|k| !known.contains(k)) {
        return Err(ApiError::bad_param(
            "keys",
            format!(
                "run {id} has no metric '{unknown}'; it has: {}",
                if known.is_empty() { "none yet".into() } else { known.join(", ") }
            ),
        ));
    }
    // A key asked twice is answered once (the answer is a map by key).
    keys.sort();
    keys.dedup();
    let thinned: Vec<Option<rollup::Thinned>> = match q.points {
        Some(p) => {
            let asked: Vec<&str> = keys.iter().map(String::as_str).collect();
            rollup::read_many(&app.store.pool, id, &asked, p).await?.into_iter().map(Some).collect()
        }
        None => keys.iter().map(|_| None).collect(),
    };
    let mut out = BTreeMap::new();
    for (key, thinned) in keys.into_iter().zip(thinned) {
        let series = match thinned.and_then(|t| t.points.map(|points| (t.total, points))) {
            Some((total, points)) => MetricSeries { total: total as usize, downsampled: true, points },
            None => {
                let points = metrics::history(&app.store.pool, id, &key).await?;
                MetricSeries { total: points.len(), downsampled: false, points }
            }
        };
        out.insert(key, series);
    }
    Ok(Json(MetricHistory { run_id: id, metrics: out }))
}
