//! The one table of routes: method, path, the access each requires, and the handler. The router
//! is built from it (every route behind the same guard), the auth tests walk it, and a unit test
//! checks it against the OpenAPI document, so a route can be neither unguarded nor undocumented.

use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;

use super::*;
use crate::auth::{Access, Scope};

/// A route as the table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// Axum's path syntax (`{id}`, `{*path}`).
    pub path: &'static str,
    pub access: Access,
}

pub struct Entry {
    pub route: Route,
    handler: MethodRouter<AppState>,
}

fn entry<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Entry
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a routable method");
    Entry { route: Route { method, path, access }, handler: on(filter, handler) }
}

const PUBLIC: Access = Access::Public;
const READ: Access = Access::Needs(Scope::Read);
const WRITE: Access = Access::Needs(Scope::Write);
const ADMIN: Access = Access::Needs(Scope::Admin);

/// Every route of the server except the static files (`/static/…`, public).
pub fn table() -> Vec<Entry> {
    use crate::mlflow::{artifacts as mla, experiments as mlx, logging as mll, runs as mlr};
    use Method as M;
    vec![
        // The JSON API.
        entry(M::GET, "/api/openapi.json", PUBLIC, openapi::document),
        entry(M::GET, "/api/v1/health", PUBLIC, health::health),
        entry(M::GET, "/api/v1/devices", READ, devices::get_devices),
        entry(M::GET, "/api/v1/experiments", READ, experiments::list_experiments),
        entry(M::POST, "/api/v1/experiments", WRITE, experiments::create_experiment),
        entry(M::GET, "/api/v1/experiments/{id}", READ, experiments::get_experiment),
        entry(M::PATCH, "/api/v1/experiments/{id}", WRITE, experiments::update_experiment),
        entry(M::DELETE, "/api/v1/experiments/{id}", WRITE, experiments::delete_experiment),
        entry(M::GET, "/api/v1/experiments/{id}/runs", READ, runs::list_experiment_runs),
        entry(M::GET, "/api/v1/experiments/{id}/events", READ, sse::experiment_events),
        entry(M::POST, "/api/v1/experiments/{id}/imports/certification", WRITE, imports::import_certification),
        entry(M::POST, "/api/v1/experiments/{id}/imports/model", WRITE, import_model::import_model),
        entry(M::GET, "/api/v1/runs", READ, runs::list_runs),
        entry(M::POST, "/api/v1/runs", WRITE, runs::create_run),
        entry(M::GET, "/api/v1/runs/{id}", READ, runs::get_run),
        entry(M::POST, "/api/v1/runs/{id}/stop", WRITE, runs::stop_run),
        entry(M::POST, "/api/v1/runs/{id}/resume", WRITE, runs::resume_run),
        entry(M::GET, "/api/v1/runs/{id}/metrics", READ, metrics::metric_history),
        entry(M::GET, "/api/v1/runs/{id}/logs", READ, logs::run_logs),
        entry(M::GET, "/api/v1/runs/{id}/artifacts", READ, artifacts::list_artifacts),
        entry(M::GET, "/api/v1/runs/{id}/artifacts/{*path}", READ, artifacts::download_artifact),
        entry(M::GET, "/api/v1/runs/{id}/certificates", READ, certificates::list_certificates),
        entry(M::GET, "/api/v1/runs/{id}/certificates/summary", READ, certificates::certificate_summary),
        entry(M::GET, "/api/v1/runs/{id}/events", READ, sse::run_events),
        entry(M::POST, "/api/v1/studies", WRITE, study::create),
        entry(M::GET, "/api/v1/studies/{id}", READ, study::table),
        entry(M::GET, "/api/v1/studies/{id}/table.csv", READ, study::csv),
        entry(M::GET, "/api/v1/tokens", ADMIN, tokens::list),
        entry(M::POST, "/api/v1/tokens", ADMIN, tokens::create),
        entry(M::DELETE, "/api/v1/tokens/{id}", ADMIN, tokens::revoke),
        // The MLflow-compatible tracking API (searches are POSTs that change nothing: read).
        entry(M::POST, "/api/2.0/mlflow/experiments/create", WRITE, mlx::create),
        entry(M::GET, "/api/2.0/mlflow/experiments/get", READ, mlx::get),
        entry(M::GET, "/api/2.0/mlflow/experiments/get-by-name", READ, mlx::get_by_name),
        entry(M::POST, "/api/2.0/mlflow/experiments/search", READ, mlx::search),
        entry(M::GET, "/api/2.0/mlflow/experiments/search", READ, mlx::search_get),
        entry(M::POST, "/api/2.0/mlflow/experiments/update", WRITE, mlx::update),
        entry(M::POST, "/api/2.0/mlflow/experiments/delete", WRITE, mlx::delete),
        entry(M::POST, "/api/2.0/mlflow/experiments/restore", WRITE, mlx::restore),
        entry(M::POST, "/api/2.0/mlflow/experiments/set-experiment-tag", WRITE, mlx::set_tag),
        entry(M::POST, "/api/2.0/mlflow/runs/create", WRITE, mlr::create),
        entry(M::GET, "/api/2.0/mlflow/runs/get", READ, mlr::get),
        entry(M::POST, "/api/2.0/mlflow/runs/update", WRITE, mlr::update),
        entry(M::POST, "/api/2.0/mlflow/runs/delete", WRITE, mlr::delete),
        entry(M::POST, "/api/2.0/mlflow/runs/restore", WRITE, mlr::restore),
        entry(M::POST, "/api/2.0/mlflow/runs/search", READ, mlr::search),
        entry(M::POST, "/api/2.0/mlflow/runs/log-metric", WRITE, mll::log_metric),
        entry(M::POST, "/api/2.0/mlflow/runs/log-parameter", WRITE, mll::log_param),
        entry(M::POST, "/api/2.0/mlflow/runs/set-tag", WRITE, mll::set_tag),
        entry(M::POST, "/api/2.0/mlflow/runs/delete-tag", WRITE, mll::delete_tag),
        entry(M::POST, "/api/2.0/mlflow/runs/log-batch", WRITE, mll::log_batch),
        entry(M::POST, "/api/2.0/mlflow/runs/log-inputs", WRITE, mll::log_inputs),
        entry(M::GET, "/api/2.0/mlflow/metrics/get-history", READ, mll::history),
        entry(M::POST, "/api/2.0/mlflow/logged-models/search", READ, mlr::search_logged_models),
        entry(M::GET, "/api/2.0/mlflow-artifacts/artifacts", READ, mla::list),
        entry(M::GET, "/api/2.0/mlflow-artifacts/artifacts/{*path}", READ, mla::download),
        entry(M::PUT, "/api/2.0/mlflow-artifacts/artifacts/{*path}", WRITE, mla::upload),
        // The dashboard.
        entry(M::GET, "/login", PUBLIC, login::page),
        entry(M::POST, "/login", PUBLIC, login::login),
        entry(M::POST, "/logout", PUBLIC, login::logout),
        entry(M::GET, "/", READ, pages::experiments_page),
        entry(M::GET, "/experiments/{id}", READ, pages::experiment_page),
        entry(M::GET, "/experiments/{id}/launch", READ, pages::launch_page),
        entry(M::GET, "/runs/{id}", READ, pages::run_page),
        entry(M::GET, "/compare", READ, pages::compare_page),
        entry(M::GET, "/studies/new", READ, study::new_page),
        entry(M::GET, "/studies/{id}", READ, study::study_page),
    ]
}

/// MLflow's searches: POSTs that read.
pub fn is_search(r: &Route) -> bool {
    r.method == Method::POST && r.path.starts_with("/api/2.0/mlflow/") && r.path.ends_with("/search")
}

/// The routes without their handlers (for tests and the OpenAPI check).
pub fn list() -> Vec<Route> {
    table().into_iter().map(|e| e.route).collect()
}

/// The router of the whole table, each route behind the guard with its access.
pub fn router(state: &AppState) -> Router<AppState> {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for Entry { route, handler } in table() {
        let access = route.access;
        let guarded = handler
            .route_layer(from_fn_with_state(state.clone(), move |st, req, next| guard::check(st, access, req, next)));
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(guarded),
            None => by_path.push((route.path, guarded)),
        }
    }
    by_path.into_iter().fold(Router::new(), |router, (path, methods)| router.route(path, methods))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (METHOD, path) of every API route, in OpenAPI's path syntax.
    fn table_api() -> BTreeSet<(String, String)> {
        list()
            .into_iter()
            .filter(|r| r.path.starts_with("/api/v1/"))
            .map(|r| (r.method.as_str().to_string(), r.path.replace("{*", "{")))
            .collect()
    }

    fn documented() -> BTreeSet<(String, String)> {
        let spec = openapi::spec();
        let mut ops = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_api_route_is_documented_and_every_documented_route_exists() {
        let table = table_api();
        let doc = documented();
        let undocumented: Vec<_> = table.difference(&doc).collect();
        let phantom: Vec<_> = doc.difference(&table).collect();
        assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
        assert!(phantom.is_empty(), "documented but not routed: {phantom:?}");
    }

    #[test]
    fn every_change_needs_write_or_more_and_only_the_entry_points_are_public() {
        for r in list() {
            if r.method != Method::GET && r.access != PUBLIC && !is_search(&r) {
                assert!(r.access >= WRITE, "{} {} changes state with {:?}", r.method, r.path, r.access);
            }
            if r.access == PUBLIC {
                assert!(
                    ["/api/openapi.json", "/api/v1/health", "/login", "/logout"].contains(&r.path),
                    "{} {} is public",
                    r.method,
                    r.path
                );
            }
        }
    }

    #[test]
    fn no_route_is_listed_twice() {
        let routes = list();
        let distinct: BTreeSet<_> = routes.iter().map(|r| (r.method.as_str(), r.path)).collect();
        assert_eq!(distinct.len(), routes.len());
    }
}
