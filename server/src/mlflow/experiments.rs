//! `experiments/…`: MLflow experiments are CRT Lab experiments (the same rows; ids as strings).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::protocol::{check_key, check_len, page_token, parse_page_token, ExperimentJson, MlResult, MlflowError};
use super::{int64, ms, parse_id, MlJson, MlQuery};
use crate::http::AppState;
use crate::store::experiments;
use crate::store::mlflow::{self as ml, MlExperiment, DEFAULT_EXPERIMENT};

/// The longest experiment name: the bound of the rest of the API.
use crate::http::experiments::MAX_NAME_CHARS as MAX_EXPERIMENT_NAME;

fn to_json(e: &MlExperiment) -> ExperimentJson {
    ExperimentJson {
        experiment_id: e.id.to_string(),
        name: e.name.clone(),
        artifact_location: format!("mlflow-artifacts:/{}", e.id),
        lifecycle_stage: if e.deleted { "deleted" } else { "active" },
        creation_time: ms(e.created_at),
        last_update_time: ms(e.updated_at),
        tags: e.tags.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect(),
    }
}

/// The experiment behind an MLflow id ("0" is created on first use, as MLflow's Default is).
pub async fn find(app: &AppState, raw: &str) -> MlResult<MlExperiment> {
    let id = parse_id("experiment", raw)?;
    if id == DEFAULT_EXPERIMENT {
        ml::ensure_default_experiment(&app.store).await?;
    }
    ml::experiment(&app.store.pool, id)
        .await?
        .ok_or_else(|| MlflowError::not_found(format!("No Experiment with id={raw} exists")))
}

#[derive(Debug, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Deserialize)]
pub struct CreateReq {
    name: Option<String>,
    #[serde(default)]
    tags: Vec<KeyValue>,
}

pub async fn create(State(app): State<AppState>, MlJson(req): MlJson<CreateReq>) -> MlResult<Json<Value>> {
    let name = req.name.as_deref().map(str::trim).unwrap_or("");
    if name.is_empty() {
        return Err(MlflowError::invalid("Missing value for required parameter 'name'"));
    }
    check_len("the experiment name", name, MAX_EXPERIMENT_NAME)?;
    for t in &req.tags {
        check_key("tag", &t.key)?;
    }
    ml::ensure_default_experiment(&app.store).await?;
    if ml::experiments(&app.store.pool).await?.iter().any(|e| e.name == name) {
        return Err(MlflowError::exists(format!("Experiment '{name}' already exists.")));
    }
    let exp = experiments::create(&app.store, name, "", &[]).await?;
    for t in &req.tags {
        ml::set_experiment_tag(&app.store, exp.id, &t.key, &t.value).await?;
    }
    Ok(Json(json!({ "experiment_id": exp.id.to_string() })))
}

#[derive(Debug, Deserialize)]
pub struct GetReq {
    experiment_id: Option<String>,
}

pub async fn get(State(app): State<AppState>, MlQuery(q): MlQuery<GetReq>) -> MlResult<Json<Value>> {
    let raw =
        q.experiment_id.ok_or_else(|| MlflowError::invalid("Missing value for required parameter 'experiment_id'"))?;
    let exp = find(&app, &raw).await?;
    Ok(Json(json!({ "experiment": to_json(&exp) })))
}

#[derive(Debug, Deserialize)]
pub struct ByNameReq {
    experiment_name: Option<String>,
}

pub async fn get_by_name(State(app): State<AppState>, MlQuery(q): MlQuery<ByNameReq>) -> MlResult<Json<Value>> {
    let name = q
        .experiment_name
        .ok_or_else(|| MlflowError::invalid("Missing value for required parameter 'experiment_name'"))?;
    if name == "Default" {
        ml::ensure_default_experiment(&app.store).await?;
    }
    let all = ml::experiments(&app.store.pool).await?;
    // Names are unique among MLflow-made experiments; for CRT Lab's own (not unique), the oldest.
    let exp = all
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| MlflowError::not_found(format!("Could not find experiment with name '{name}'")))?;
    Ok(Json(json!({ "experiment": to_json(exp) })))
}

#[derive(Debug, Deserialize, Default)]
pub struct SearchReq {
    #[serde(default, deserialize_with = "int64")]
    max_results: Option<i64>,
    page_token: Option<String>,
    filter: Option<String>,
    #[serde(default)]
    order_by: Vec<String>,
    view_type: Option<String>,
}

/// `name = 'x'`, `name LIKE 'x%'`, `tags.k = 'v'`, `creation_time > t`… joined by AND, through
/// the run filter's machinery (an experiment read as a record: name → run_name, times → start/end).
fn experiment_matches(e: &MlExperiment, filter: &super::search::Filter) -> bool {
    let record = super::protocol::RunRecord {
        run_id: e.id.to_string(),
        run_name: e.name.clone(),
        status: String::new(),
        user_id: String::new(),
        artifact_uri: String::new(),
        start_time: Some(ms(e.created_at)),
        end_time: Some(ms(e.updated_at)),
        metrics: Default::default(),
        params: Default::default(),
        tags: e.tags.clone(),
    };
    filter.matches(&record)
}

pub async fn search(State(app): State<AppState>, MlJson(req): MlJson<SearchReq>) -> MlResult<Json<Value>> {
    search_with(app, req).await
}

pub async fn search_get(State(app): State<AppState>, MlQuery(req): MlQuery<SearchReq>) -> MlResult<Json<Value>> {
    search_with(app, req).await
}

async fn search_with(app: AppState, req: SearchReq) -> MlResult<Json<Value>> {
    let max = req.max_results.unwrap_or(1000);
    if !(1..=super::protocol::MAX_SEARCH_RESULTS as i64).contains(&max) {
        return Err(MlflowError::invalid(format!(
            "max_results must be 1 to {}, got {max}",
            super::protocol::MAX_SEARCH_RESULTS
        )));
    }
    let view = req.view_type.as_deref().unwrap_or("ACTIVE_ONLY");
    let wanted = |e: &MlExperiment| match view {
        "DELETED_ONLY" => e.deleted,
        "ALL" => true,
        _ => !e.deleted,
    };
    ml::ensure_default_experiment(&app.store).await?;
    let mut all: Vec<MlExperiment> = ml::experiments(&app.store.pool).await?.into_iter().filter(wanted).collect();
    if let Some(f) = req.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        let filter = super::search::parse_filter_for(f, super::search::Target::Experiments)?;
        all.retain(|e| experiment_matches(e, &filter));
    }
    sort_experiments(&mut all, &req.order_by)?;
    let offset = parse_page_token(req.page_token.as_deref())?;
    let page: Vec<ExperimentJson> = all.iter().skip(offset).take(max as usize).map(to_json).collect();
    let mut out = json!({ "experiments": page });
    if offset + (max as usize) < all.len() {
        out["next_page_token"] = json!(page_token(offset + max as usize));
    }
    Ok(Json(out))
}

fn sort_experiments(all: &mut [MlExperiment], order_by: &[String]) -> MlResult<()> {
    let mut keys = Vec::new();
    for clause in order_by {
        let mut parts = clause.split_whitespace();
        let field = parts.next().unwrap_or("").trim_start_matches("attributes.").trim_start_matches("attribute.");
        let desc = parts.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
        if !["name", "experiment_id", "creation_time", "last_update_time"].contains(&field) {
            return Err(MlflowError::invalid(format!(
                "invalid order_by '{clause}': expected name, experiment_id, creation_time or last_update_time"
            )));
        }
        keys.push((field.to_string(), desc));
    }
    if keys.is_empty() {
        // MLflow's default: newest first.
        keys.push(("creation_time".into(), true));
    }
    all.sort_by(|a, b| {
        for (field, desc) in &keys {
            let ord = match field.as_str() {
                "name" => a.name.cmp(&b.name),
                "experiment_id" => a.id.cmp(&b.id),
                "creation_time" => a.created_at.total_cmp(&b.created_at),
                _ => a.updated_at.total_cmp(&b.updated_at),
            };
            let ord = if *desc { ord.reverse() } else { ord };
            if ord.is_ne() {
                return ord;
            }
        }
        b.id.cmp(&a.id)
    });
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct UpdateReq {
    experiment_id: String,
    new_name: Option<String>,
}

pub async fn update(State(app): State<AppState>, MlJson(req): MlJson<UpdateReq>) -> MlResult<Json<Value>> {
    let exp = find(&app, &req.experiment_id).await?;
    if let Some(name) = req.new_name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        check_len("the experiment name", name, MAX_EXPERIMENT_NAME)?;
        if ml::experiments(&app.store.pool).await?.iter().any(|e| e.name == name && e.id != exp.id) {
            return Err(MlflowError::exists(format!("Experiment '{name}' already exists.")));
        }
        let patch = experiments::ExperimentPatch { name: Some(name.to_string()), ..Default::default() };
        experiments::update(&app.store, exp.id, patch).await?;
    }
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct IdReq {
    experiment_id: String,
}

pub async fn delete(State(app): State<AppState>, MlJson(req): MlJson<IdReq>) -> MlResult<Json<Value>> {
    let exp = find(&app, &req.experiment_id).await?;
    if exp.id == DEFAULT_EXPERIMENT {
        return Err(MlflowError::invalid("Cannot delete the default experiment '0'."));
    }
    ml::set_experiment_deleted(&app.store, exp.id, true).await?;
    Ok(Json(json!({})))
}

pub async fn restore(State(app): State<AppState>, MlJson(req): MlJson<IdReq>) -> MlResult<Json<Value>> {
    let exp = find(&app, &req.experiment_id).await?;
    ml::set_experiment_deleted(&app.store, exp.id, false).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct TagReq {
    experiment_id: String,
    key: String,
    #[serde(default)]
    value: String,
}

pub async fn set_tag(State(app): State<AppState>, MlJson(req): MlJson<TagReq>) -> MlResult<Json<Value>> {
    let exp = find(&app, &req.experiment_id).await?;
    check_key("tag", &req.key)?;
    check_len("the tag value", &req.value, super::protocol::MAX_TAG_VALUE_CHARS)?;
    ml::set_experiment_tag(&app.store, exp.id, &req.key, &req.value).await?;
    Ok(Json(json!({})))
}
