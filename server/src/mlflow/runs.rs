//! `runs/…`: create, get, update, delete, restore and search. MLflow's runs are CRT Lab runs of
//! kind `external`; search also finds CRT Lab's own runs of the experiments searched.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crt_trainer::config::RunKind;
use crt_trainer::events::unix_now;

use super::experiments::KeyValue;
use super::protocol::{
    check_key, check_len, page_token, parse_page_token, run_info, run_json, status_from_mlflow, status_to_mlflow,
    MlResult, MlflowError, RunExtra, RunRecord, MAX_SEARCH_RESULTS, MAX_TAG_VALUE_CHARS,
};
use super::search::{parse_filter, parse_order_by, sort_by_record};
use super::{int64, ms, parse_id, run_id_param, MlJson, MlQuery};
use crate::http::AppState;
use crate::record::{Incoming, Recorder};
use crate::runs::validate::MAX_RUN_NAME_CHARS;
use crate::store::mlflow::{self as ml, MlRun};
use crate::store::{self, runs::Placement};

/// MLflow's view of a stored run.
pub fn view(r: &MlRun) -> (RunRecord, RunExtra) {
    let record = RunRecord {
        run_id: r.id.to_string(),
        run_name: r.name.clone(),
        status: status_to_mlflow(&r.status).to_string(),
        user_id: r.tags.get("mlflow.user").cloned().unwrap_or_default(),
        artifact_uri: format!("mlflow-artifacts:/{}/{}/artifacts", r.experiment_id, r.id),
        start_time: r.started_at.or(Some(r.created_at)).map(ms),
        end_time: r.finished_at.map(ms),
        metrics: r.latest.iter().map(|(k, (v, _, _))| (k.clone(), *v)).collect(),
        params: r.params.clone(),
        tags: r.tags.clone(),
    };
    let extra = RunExtra {
        experiment_id: r.experiment_id.to_string(),
        deleted: r.deleted,
        latest: r.latest.iter().map(|(k, (v, ts, step))| (k.clone(), (*v, ms(*ts), *step))).collect(),
        inputs: r.inputs.clone(),
    };
    (record, extra)
}

/// The run behind an MLflow run id.
pub async fn find(app: &AppState, raw: &str) -> MlResult<MlRun> {
    let id = parse_id("run", raw)?;
    ml::runs(&app.store.pool, None, Some(&[id]))
        .await?
        .pop()
        .ok_or_else(|| MlflowError::not_found(format!("Run with id={raw} not found")))
}

/// A run an external client may log to: kind `external`, not deleted.
pub async fn find_writable(app: &AppState, raw: &str) -> MlResult<MlRun> {
    let run = find(app, raw).await?;
    if run.kind != RunKind::External.as_str() {
        return Err(MlflowError::invalid_state(format!(
            "run {raw} is a CRT Lab {} run: only runs created through this API can be logged to",
            run.kind
        )));
    }
    if run.deleted {
        return Err(MlflowError::invalid_state(format!(
            "The run {raw} must be in the 'active' state. Current state is deleted."
        )));
    }
    if run.tags.contains_key(crate::http::imports::IMPORTED_TAG) {
        return Err(MlflowError::invalid_state(format!(
            "run {raw} is an imported certification: its results are final and cannot be logged to"
        )));
    }
    Ok(run)
}

pub fn recorder(app: &AppState, run: &MlRun) -> Recorder {
    Recorder::new(app.store.clone(), run.id, run.experiment_id, app.settings.run_dir(run.id))
}

#[derive(Debug, Deserialize)]
pub struct CreateReq {
    experiment_id: Option<String>,
    user_id: Option<String>,
    run_name: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    start_time: Option<i64>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub async fn create(State(app): State<AppState>, MlJson(req): MlJson<CreateReq>) -> MlResult<Json<Value>> {
    let exp = super::experiments::find(&app, req.experiment_id.as_deref().unwrap_or("0")).await?;
    if exp.deleted {
        return Err(MlflowError::invalid_state(format!("The experiment {} must be in the 'active' state.", exp.id)));
    }
    for t in &req.tags {
        check_key("tag", &t.key)?;
        check_len("a tag value", &t.value, MAX_TAG_VALUE_CHARS)?;
    }
    let tag_name = req.tags.iter().find(|t| t.key == "mlflow.runName").map(|t| t.value.clone());
    let name = req.run_name.clone().filter(|n| !n.trim().is_empty()).or(tag_name);
    if let Some(n) = &name {
        check_len("the run name", n, MAX_RUN_NAME_CHARS)?;
    }
    let started = req.start_time.map(|t| t as f64 / 1000.0).unwrap_or_else(unix_now);
    let now = unix_now();
    let mut w = app.store.write().await?;
    let columns = store::runs::ConfigColumns::default();
    let id = store::runs::insert(w.conn(), exp.id, "", RunKind::External, &columns, &Placement::default(), now).await?;
    let name = name.unwrap_or_else(|| format!("run-{id}"));
    let out_dir = app.settings.run_dir(id);
    store::runs::set_config(w.conn(), id, &name, &json!({}), &out_dir.display().to_string()).await?;
    store::runs::set_running(w.conn(), id, started).await?;
    w.journal(id, exp.id, "status", json!({ "status": "running", "external": true })).await?;
    w.commit().await?;
    std::fs::create_dir_all(out_dir.join("artifacts")).map_err(anyhow::Error::from)?;

    let mut batch: Vec<Incoming> =
        req.tags.iter().map(|t| Incoming::Tag { key: t.key.clone(), value: t.value.clone() }).collect();
    batch.push(Incoming::Tag { key: "mlflow.runName".into(), value: name });
    if let Some(user) = req.user_id.filter(|u| !u.is_empty()) {
        if !req.tags.iter().any(|t| t.key == "mlflow.user") {
            batch.push(Incoming::Tag { key: "mlflow.user".into(), value: user });
        }
    }
    Recorder::new(app.store.clone(), id, exp.id, out_dir).record(&batch, None).await?;
    let run = find(&app, &id.to_string()).await?;
    let (record, extra) = view(&run);
    Ok(Json(json!({ "run": run_json(&record, &extra) })))
}

#[derive(Debug, Deserialize)]
pub struct GetReq {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

pub async fn get(State(app): State<AppState>, MlQuery(q): MlQuery<GetReq>) -> MlResult<Json<Value>> {
    let run = find(&app, &run_id_param(q.run_id, q.run_uuid)?).await?;
    let (record, extra) = view(&run);
    Ok(Json(json!({ "run": run_json(&record, &extra) })))
}

#[derive(Debug, Deserialize)]
pub struct UpdateReq {
    run_id: Option<String>,
    run_uuid: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    end_time: Option<i64>,
    run_name: Option<String>,
}

pub async fn update(State(app): State<AppState>, MlJson(req): MlJson<UpdateReq>) -> MlResult<Json<Value>> {
    let run = find_writable(&app, &run_id_param(req.run_id, req.run_uuid)?).await?;
    let status = req.status.as_deref().map(status_from_mlflow).transpose()?;
    if let Some(n) = &req.run_name {
        check_len("the run name", n, MAX_RUN_NAME_CHARS)?;
    }
    let mut w = app.store.write().await?;
    if let Some(status) = status {
        let ends = matches!(status, "finished" | "failed" | "stopped");
        let finished_at = ends.then(|| req.end_time.map(|t| t as f64 / 1000.0).unwrap_or_else(unix_now));
        // A literal NULL: sqlx's Any driver cannot bind a typed NULL double for Postgres.
        let sql = match finished_at {
            Some(_) => "UPDATE runs SET status = $2, finished_at = $3 WHERE id = $1",
            None => "UPDATE runs SET status = $2, finished_at = NULL WHERE id = $1",
        };
        let mut query = sqlx::query(sql).bind(run.id).bind(status);
        if let Some(t) = finished_at {
            query = query.bind(t);
        }
        query.execute(w.conn()).await.map_err(anyhow::Error::from)?;
        w.journal(run.id, run.experiment_id, "status", json!({ "status": status, "external": true })).await?;
    }
    if let Some(name) = req.run_name.as_deref().filter(|n| !n.trim().is_empty()) {
        sqlx::query("UPDATE runs SET name = $2 WHERE id = $1")
            .bind(run.id)
            .bind(name)
            .execute(w.conn())
            .await
            .map_err(anyhow::Error::from)?;
        ml::upsert(w.conn(), ml::KvTable::Tags, run.id, "mlflow.runName", name).await?;
    }
    store::mlflow::touch(w.conn(), run.id, unix_now()).await?;
    w.commit().await?;
    let run = find(&app, &run.id.to_string()).await?;
    let (record, extra) = view(&run);
    Ok(Json(json!({ "run_info": run_info(&record, &extra) })))
}

#[derive(Debug, Deserialize)]
pub struct IdReq {
    run_id: Option<String>,
}

pub async fn delete(State(app): State<AppState>, MlJson(req): MlJson<IdReq>) -> MlResult<Json<Value>> {
    let run = find(&app, &run_id_param(req.run_id, None)?).await?;
    ml::set_run_deleted(&app.store, run.id, true).await?;
    Ok(Json(json!({})))
}

pub async fn restore(State(app): State<AppState>, MlJson(req): MlJson<IdReq>) -> MlResult<Json<Value>> {
    let run = find(&app, &run_id_param(req.run_id, None)?).await?;
    ml::set_run_deleted(&app.store, run.id, false).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize, Default)]
pub struct SearchReq {
    #[serde(default)]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    run_view_type: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    max_results: Option<i64>,
    #[serde(default)]
    order_by: Vec<String>,
    page_token: Option<String>,
}

pub async fn search(State(app): State<AppState>, MlJson(req): MlJson<SearchReq>) -> MlResult<Json<Value>> {
    let max = req.max_results.unwrap_or(1000);
    if !(1..=MAX_SEARCH_RESULTS as i64).contains(&max) {
        return Err(MlflowError::invalid(format!("max_results must be 1 to {MAX_SEARCH_RESULTS}, got {max}")));
    }
    let filter = parse_filter(req.filter.as_deref().unwrap_or(""))?;
    let order: Vec<_> = req.order_by.iter().map(|o| parse_order_by(o)).collect::<MlResult<_>>()?;
    let mut ids = Vec::new();
    for raw in &req.experiment_ids {
        // An unknown experiment finds nothing (as in MLflow), but a malformed id is an error.
        ids.push(
            raw.trim().parse::<i64>().map_err(|_| MlflowError::invalid(format!("invalid experiment id '{raw}'")))?,
        );
    }
    let view_type = req.run_view_type.as_deref().unwrap_or("ACTIVE_ONLY");
    let runs = ml::runs(&app.store.pool, Some(&ids), None).await?;
    let mut found: Vec<(RunRecord, RunExtra)> = runs
        .iter()
        .filter(|r| match view_type {
            "DELETED_ONLY" => r.deleted,
            "ALL" => true,
            _ => !r.deleted,
        })
        .map(view)
        .filter(|(record, _)| filter.matches(record))
        .collect();
    sort_by_record(&mut found, |(r, _)| r, &order);
    let total = found.len();
    let offset = parse_page_token(req.page_token.as_deref())?;
    let page: Vec<Value> = found.iter().skip(offset).take(max as usize).map(|(r, e)| run_json(r, e)).collect();
    let mut out = json!({ "runs": page });
    if offset + (max as usize) < total {
        out["next_page_token"] = json!(page_token(offset + max as usize));
    }
    Ok(Json(out))
}

/// MLflow's tag rule for `set-tag` and `log-batch`.
pub fn check_tag(key: &str, value: &str) -> MlResult<()> {
    check_key("tag", key)?;
    check_len("a tag value", value, MAX_TAG_VALUE_CHARS)
}

/// `logged-models/search`: MLflow 3's clients ask for a run's logged models while listing its
/// artifacts. CRT Lab keeps no logged models (its models are runs), so there are none.
pub async fn search_logged_models() -> Json<Value> {
    Json(json!({ "models": [] }))
}
