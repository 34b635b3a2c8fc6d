//! HTTP: the JSON API (`/api/v1`), live event streams, the OpenAPI document and static files.

pub mod artifacts;
pub mod certificates;
pub mod devices;
pub mod errors;
pub mod experiments;
pub mod extract;
pub mod guard;
pub mod health;
pub mod import_model;
pub mod imports;
pub mod login;
pub mod logs;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod routes;
pub mod runs;
pub mod sse;
pub mod study;
pub mod tokens;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::auth::Auth;
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
    pub auth: Auth,
}

/// Largest request body accepted (JSON documents; file uploads will have their own limit).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The whole application: the route table (`routes`), each route behind the auth guard, plus the
/// static files. A panicking handler answers like any internal error (an id, no text).
pub fn router(state: AppState) -> Router {
    let static_dir = state.settings.static_dir.clone();
    routes::router(&state)
        .nest_service("/static", ServeDir::new(static_dir))
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .layer(TraceLayer::new_for_http())
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/api/2.0/") {
        // MLflow's clients read MLflow's error shape.
        let body = serde_json::json!({ "error_code": "ENDPOINT_NOT_FOUND", "message": format!("no such endpoint: {}", uri.path()) });
        return (axum::http::StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    ApiError::NotFound(format!("no such endpoint: {}", uri.path())).into_response()
}
