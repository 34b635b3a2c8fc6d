//! What a client logs to a run: metrics (every value kept), params (never changed once logged),
//! tags, dataset inputs; and a metric's history, paged. Each request is one call of the
//! recording entry point, so one transaction and one live event.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::protocol::{
    check_key, check_len, page_token, parse_page_token, MlResult, MlflowError, MAX_BATCH_METRICS, MAX_BATCH_PARAMS,
    MAX_BATCH_TAGS, MAX_BATCH_TOTAL, MAX_HISTORY_PAGE, MAX_PARAM_VALUE_CHARS,
};
use super::runs::{check_tag, find, find_writable, recorder};
use super::{double, int64, run_id_param, MlJson, MlQuery};
use crate::http::AppState;
use crate::record::Incoming;
use crate::store::metrics::{finite_or_name, Logged};
use crate::store::mlflow as ml;

#[derive(Debug, Deserialize)]
pub struct MetricReq {
    pub key: String,
    #[serde(deserialize_with = "double")]
    pub value: f64,
    #[serde(default, deserialize_with = "int64")]
    pub timestamp: Option<i64>,
    #[serde(default, deserialize_with = "int64")]
    pub step: Option<i64>,
}

impl MetricReq {
    /// MLflow's semantics: a value without a step is at step 0; the timestamp is milliseconds.
    fn logged(&self) -> MlResult<Incoming> {
        check_key("metric", &self.key)?;
        let ts = self.timestamp.map(|t| t as f64 / 1000.0).unwrap_or_else(crt_trainer::events::unix_now);
        Ok(Incoming::Logged(Logged { key: self.key.clone(), step: self.step.unwrap_or(0), ts, value: self.value }))
    }
}

#[derive(Debug, Deserialize)]
pub struct ParamReq {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Deserialize)]
pub struct TagReq {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Deserialize)]
pub struct LogMetric {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(flatten)]
    metric: MetricReq,
}

pub async fn log_metric(State(app): State<AppState>, MlJson(req): MlJson<LogMetric>) -> MlResult<Json<Value>> {
    let run = find_writable(&app, &run_id_param(req.run_id, req.run_uuid)?).await?;
    recorder(&app, &run).record(&[req.metric.logged()?], None).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct LogParam {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(flatten)]
    param: ParamReq,
}

/// MLflow refuses to change a logged param; logging the same value again is fine.
async fn checked_params(app: &AppState, run_id: i64, params: &[ParamReq]) -> MlResult<Vec<Incoming>> {
    let existing = ml::key_values(&app.store.pool, ml::KvTable::Params, run_id).await?;
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        check_key("param", &p.key)?;
        check_len("a param value", &p.value, MAX_PARAM_VALUE_CHARS)?;
        if let Some(old) = existing.get(&p.key).filter(|old| **old != p.value) {
            return Err(MlflowError::invalid(format!(
                "Changing param values is not allowed. Param with key='{}' was already logged with value='{old}' for run ID='{run_id}'. Attempted logging new value '{}'.",
                p.key, p.value
            )));
        }
        out.push(Incoming::Param { key: p.key.clone(), value: p.value.clone() });
    }
    Ok(out)
}

pub async fn log_param(State(app): State<AppState>, MlJson(req): MlJson<LogParam>) -> MlResult<Json<Value>> {
    let run = find_writable(&app, &run_id_param(req.run_id, req.run_uuid)?).await?;
    let batch = checked_params(&app, run.id, std::slice::from_ref(&req.param)).await?;
    recorder(&app, &run).record(&batch, None).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct SetTag {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(flatten)]
    tag: TagReq,
}

pub async fn set_tag(State(app): State<AppState>, MlJson(req): MlJson<SetTag>) -> MlResult<Json<Value>> {
    let run = find_writable(&app, &run_id_param(req.run_id, req.run_uuid)?).await?;
    check_tag(&req.tag.key, &req.tag.value)?;
    recorder(&app, &run).record(&[Incoming::Tag { key: req.tag.key, value: req.tag.value }], None).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct DeleteTag {
    run_id: Option<String>,
    key: String,
}

pub async fn delete_tag(State(app): State<AppState>, MlJson(req): MlJson<DeleteTag>) -> MlResult<Json<Value>> {
    let run = find_writable(&app, &run_id_param(req.run_id, None)?).await?;
    if !run.tags.contains_key(&req.key) {
        return Err(MlflowError::not_found(format!("No tag with name: {} in run with id {}", req.key, run.id)));
    }
    recorder(&app, &run).record(&[Incoming::DeleteTag { key: req.key }], None).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct LogBatch {
    run_id: Option<String>,
    #[serde(default)]
    metrics: Vec<MetricReq>,
    #[serde(default)]
    params: Vec<ParamReq>,
    #[serde(default)]
    tags: Vec<TagReq>,
}

pub async fn log_batch(State(app): State<AppState>, MlJson(req): MlJson<LogBatch>) -> MlResult<Json<Value>> {
    let (m, p, t) = (req.metrics.len(), req.params.len(), req.tags.len());
    if m > MAX_BATCH_METRICS || p > MAX_BATCH_PARAMS || t > MAX_BATCH_TAGS || m + p + t > MAX_BATCH_TOTAL {
        return Err(MlflowError::invalid(format!(
            "A batch logging request can contain at most {MAX_BATCH_METRICS} metrics, {MAX_BATCH_PARAMS} params and \
             {MAX_BATCH_TAGS} tags ({MAX_BATCH_TOTAL} in all); got {m} metrics, {p} params and {t} tags"
        )));
    }
    let run = find_writable(&app, &run_id_param(req.run_id, None)?).await?;
    let mut batch = checked_params(&app, run.id, &req.params).await?;
    for tag in &req.tags {
        check_tag(&tag.key, &tag.value)?;
        batch.push(Incoming::Tag { key: tag.key.clone(), value: tag.value.clone() });
    }
    for metric in &req.metrics {
        batch.push(metric.logged()?);
    }
    recorder(&app, &run).record(&batch, None).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct LogInputs {
    run_id: Option<String>,
    #[serde(default)]
    datasets: Vec<Value>,
}

/// Most dataset inputs in one request.
const MAX_INPUTS: usize = 1000;

pub async fn log_inputs(State(app): State<AppState>, MlJson(req): MlJson<LogInputs>) -> MlResult<Json<Value>> {
    if req.datasets.len() > MAX_INPUTS {
        return Err(MlflowError::invalid(format!("at most {MAX_INPUTS} dataset inputs per request")));
    }
    let run = find_writable(&app, &run_id_param(req.run_id, None)?).await?;
    let batch: Vec<Incoming> = req.datasets.into_iter().map(Incoming::Input).collect();
    recorder(&app, &run).record(&batch, None).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub struct HistoryReq {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: Option<String>,
    page_token: Option<String>,
    #[serde(default, deserialize_with = "int64")]
    max_results: Option<i64>,
}

pub async fn history(
    State(app): State<AppState>,
    MlQuery(q): MlQuery<HistoryReq>,
) -> MlResult<axum::response::Response> {
    let run = find(&app, &run_id_param(q.run_id, q.run_uuid)?).await?;
    let key = q.metric_key.ok_or_else(|| MlflowError::invalid("Missing value for required parameter 'metric_key'"))?;
    let max = q.max_results.unwrap_or(MAX_HISTORY_PAGE as i64);
    if !(1..=MAX_HISTORY_PAGE as i64).contains(&max) {
        return Err(MlflowError::invalid(format!("max_results must be 1 to {MAX_HISTORY_PAGE}, got {max}")));
    }
    let offset = parse_page_token(q.page_token.as_deref())?;
    // One row more than the page tells whether another page follows.
    let mut rows = ml::history_page(&app.store.pool, run.id, &key, offset, max as usize + 1).await?;
    let more = rows.len() > max as usize;
    rows.truncate(max as usize);
    let metrics: Vec<HistoryPoint> = rows
        .iter()
        .map(|&(step, ts, value)| HistoryPoint { key: &key, value, timestamp: super::ms(ts), step })
        .collect();
    let next_page_token = more.then(|| page_token(offset + max as usize));
    Ok(axum::response::IntoResponse::into_response(Json(HistoryPage { metrics, next_page_token })))
}

/// A history page as MLflow's client reads it, serialized straight from the rows (a JSON map
/// per point costs more than the query on a 25,000-point page).
#[derive(Serialize)]
struct HistoryPage<'a> {
    metrics: Vec<HistoryPoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

#[derive(Serialize)]
struct HistoryPoint<'a> {
    key: &'a str,
    #[serde(serialize_with = "finite_or_name")]
    value: f64,
    timestamp: i64,
    step: i64,
}
