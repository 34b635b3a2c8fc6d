//! HTTP: the JSON API (`/api/v1`), live event streams, the OpenAPI document and static files.

pub mod artifacts;
pub mod certificates;
pub mod devices;
pub mod errors;
pub mod experiments;
pub mod extract;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod runs;
pub mod sse;
pub mod study;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::cli::Settings;
use crate::runs::RunManager;
use crate::store::Store;

pub use errors::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub manager: Arc<RunManager>,
    pub settings: Arc<Settings>,
    /// Cancelled at shutdown; ends the event streams.
    pub shutdown: CancellationToken,
    /// The Slurm cluster's nodes, when Slurm is the server's backend.
    pub cluster: Option<Arc<crate::devices::cluster::ClusterMonitor>>,
}

/// The JSON API under `/api/v1` (documented in docs/api.md and at /api/openapi.json): one
/// module per resource, each contributing its routes.
fn api() -> Router<AppState> {
    Router::new()
        .merge(health::routes())
        .route("/devices", get(devices::get_devices))
        .merge(experiments::routes())
        .merge(runs::routes())
        .merge(metrics::routes())
        .merge(logs::routes())
        .merge(artifacts::routes())
        .merge(certificates::routes())
        .merge(sse::routes())
}

/// The whole application: each part (the API's resources, `pages`, …) contributes a `Router<AppState>`.
pub fn router(state: AppState) -> Router {
    let static_dir = state.settings.static_dir.clone();
    Router::new()
        .nest("/api/v1", api())
        .merge(pages::routes())
        .merge(study::routes())
        .route("/api/openapi.json", get(openapi::document))
        .nest_service("/static", ServeDir::new(static_dir))
        .fallback(not_found)
        .with_state(state)
        .layer(TraceLayer::new_for_http())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}
