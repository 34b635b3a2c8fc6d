//! Runs: one trainer job each, with its config, status, parents and process bookkeeping.

use std::collections::HashMap;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use sqlx::{any::AnyRow, AnyConnection, AnyPool, Row};

use crt_trainer::config::RunKind;

use crate::devices::{Device, DeviceRequest};
use crate::launch::slurm::SlurmResources;
use crate::launch::{BackendKind, Handle};
use crate::record::{Cursor, Terminal};
use crate::runs::RunStatus;

#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub phase: String,
    pub done: i64,
    pub total: i64,
    pub unit: String,
}

/// A run's database row. The API shows it as `http::runs::RunView`.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: i64,
    pub experiment_id: i64,
    pub name: String,
    pub kind: RunKind,
    pub status: RunStatus,
    /// The config the trainer is given (server paths filled in).
    pub config: Value,
    /// The config as the trainer resolved it (all defaults), from its `started` event.
    pub resolved_config: Option<Value>,
    pub arch: Option<String>,
    pub method: Option<String>,
    pub dataset: Option<String>,
    pub sigma: Option<f64>,
    pub parents: Vec<i64>,
    pub out_dir: String,
    pub created_at: f64,
    pub queued_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Seconds the trainer ran, summed over all attempts (resumes).
    pub wall_time_s: f64,
    /// How many times a trainer process was started for this run.
    pub attempt: i64,
    /// The local supervisor's pid (also its process group, which holds the trainer).
    pub pid: Option<i64>,
    pub pgid: Option<i64>,
    /// Where the run executes.
    pub backend: BackendKind,
    /// The Slurm resources it asked for (None: the server's defaults).
    pub resources: Option<SlurmResources>,
    /// The launcher's handle of the current attempt.
    pub handle: Option<Handle>,
    /// What the backend last said (Slurm: state, reason, node).
    pub backend_state: Option<Value>,
    /// Bytes of the attempt's events.jsonl and stderr.log recorded so far.
    pub cursor: Cursor,
    /// When a stop was asked through CRT Lab, for the current attempt.
    pub stop_requested_at: Option<f64>,
    /// The trainer's last terminal event in this attempt.
    pub terminal: Option<Terminal>,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
    pub error: Option<String>,
    /// The device the run asked for.
    pub device_request: DeviceRequest,
    /// Where its latest attempt ran; None until it first starts.
    pub device: Option<Device>,
    /// The final metrics of a finished run.
    pub summary: Option<Value>,
    pub progress: Option<Progress>,
    /// When an external client last wrote to this run (MLflow API); None for trainer runs.
    pub last_write_at: Option<f64>,
}

impl Run {
    /// A queued local run of `kind` with every optional field empty: a starting point for tests.
    #[cfg(test)]
    pub fn example(id: i64, kind: RunKind) -> Run {
        Run {
            id,
            experiment_id: 1,
            name: format!("run {id}"),
            kind,
            status: RunStatus::Queued,
            config: serde_json::json!({ "kind": kind.as_str() }),
            resolved_config: None,
            arch: None,
            method: None,
            dataset: None,
            sigma: None,
            parents: vec![],
            out_dir: format!("/data/runs/{id}"),
            created_at: 0.0,
            queued_at: 0.0,
            started_at: None,
            finished_at: None,
            wall_time_s: 0.0,
            attempt: 0,
            pid: None,
            pgid: None,
            backend: BackendKind::Local,
            resources: None,
            handle: None,
            backend_state: None,
            cursor: Cursor::default(),
            stop_requested_at: None,
            terminal: None,
            exit_code: None,
            exit_signal: None,
            error: None,
            device_request: DeviceRequest::Auto,
            device: None,
            summary: None,
            progress: None,
            last_write_at: None,
        }
    }
}

/// Columns copied out of the config so runs can be filtered without JSON functions.
#[derive(Debug, Clone, Default)]
pub struct ConfigColumns {
    pub arch: Option<String>,
    pub method: Option<String>,
    pub dataset: Option<String>,
    pub sigma: Option<f64>,
}

const COLUMNS: &str = "r.id, r.experiment_id, r.name, r.kind, r.status, r.config, r.resolved_config, r.arch, \
    r.method, r.dataset, r.sigma, r.out_dir, r.created_at, r.queued_at, r.started_at, r.finished_at, \
    r.wall_time_s, r.attempt, r.pid, r.pgid, r.exit_code, r.exit_signal, r.error, r.summary, \
    r.progress_phase, r.progress_done, r.progress_total, r.progress_unit, r.device_request, r.device, \
    r.backend, r.resources, r.handle, r.backend_state, r.events_offset, r.stderr_offset, r.stop_requested_at, \
    r.terminal, r.last_write_at";

fn json_column(r: &AnyRow, name: &str) -> anyhow::Result<Option<Value>> {
    let text: Option<String> = r.try_get(name)?;
    text.map(|t| serde_json::from_str(&t).with_context(|| format!("corrupt JSON in runs.{name}"))).transpose()
}

fn typed_column<T: serde::de::DeserializeOwned>(r: &AnyRow, name: &str) -> anyhow::Result<Option<T>> {
    json_column(r, name)?.map(|v| serde_json::from_value(v).with_context(|| format!("corrupt runs.{name}"))).transpose()
}

/// A text column holding a [`RunKind`], [`Device`], [`DeviceRequest`] or [`BackendKind`].
fn parsed<T: std::str::FromStr<Err = String>>(text: &str, column: &str) -> anyhow::Result<T> {
    text.parse().map_err(|e| anyhow::anyhow!("corrupt runs.{column}: {e}"))
}

fn from_row(r: &AnyRow) -> anyhow::Result<Run> {
    let status: String = r.try_get("status")?;
    let phase: Option<String> = r.try_get("progress_phase")?;
    let progress = match phase {
        Some(phase) => Some(Progress {
            phase,
            done: r.try_get::<Option<i64>, _>("progress_done")?.unwrap_or(0),
            total: r.try_get::<Option<i64>, _>("progress_total")?.unwrap_or(0),
            unit: r.try_get::<Option<String>, _>("progress_unit")?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Run {
        id: r.try_get("id")?,
        experiment_id: r.try_get("experiment_id")?,
        name: r.try_get("name")?,
        kind: parsed(&r.try_get::<String, _>("kind")?, "kind")?,
        status: status.parse().map_err(anyhow::Error::msg)?,
        config: json_column(r, "config")?.unwrap_or(Value::Null),
        resolved_config: json_column(r, "resolved_config")?,
        arch: r.try_get("arch")?,
        method: r.try_get("method")?,
        dataset: r.try_get("dataset")?,
        sigma: r.try_get("sigma")?,
        parents: Vec::new(),
        out_dir: r.try_get("out_dir")?,
        created_at: r.try_get("created_at")?,
        queued_at: r.try_get("queued_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        wall_time_s: r.try_get("wall_time_s")?,
        attempt: r.try_get("attempt")?,
        pid: r.try_get("pid")?,
        pgid: r.try_get("pgid")?,
        exit_code: r.try_get("exit_code")?,
        exit_signal: r.try_get("exit_signal")?,
        error: r.try_get("error")?,
        device_request: parsed(&r.try_get::<String, _>("device_request")?, "device_request")?,
        device: r.try_get::<Option<String>, _>("device")?.map(|d| parsed(&d, "device")).transpose()?,
        summary: json_column(r, "summary")?,
        progress,
        backend: parsed(&r.try_get::<String, _>("backend")?, "backend")?,
        resources: typed_column(r, "resources")?,
        handle: typed_column(r, "handle")?,
        backend_state: json_column(r, "backend_state")?,
        cursor: Cursor {
            events: r.try_get::<i64, _>("events_offset")? as u64,
            stderr: r.try_get::<i64, _>("stderr_offset")? as u64,
        },
        stop_requested_at: r.try_get("stop_requested_at")?,
        terminal: r.try_get::<Option<String>, _>("terminal")?.and_then(|t| Terminal::from_column(&t)),
        last_write_at: r.try_get("last_write_at")?,
    })
}

/// Where a new run is to execute: the device it asks for, the backend and its resources.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub device: DeviceRequest,
    pub backend: BackendKind,
    pub resources: Option<SlurmResources>,
}

/// Inserts a queued run with an empty config; the caller sets the config once the id (and
/// so the output directory) is known.
pub async fn insert(
    conn: &mut AnyConnection,
    experiment_id: i64,
    name: &str,
    kind: RunKind,
    columns: &ConfigColumns,
    placement: &Placement,
    now: f64,
) -> anyhow::Result<i64> {
    let id: i64 = sqlx::query(
        "INSERT INTO runs (experiment_id, name, kind, status, config, arch, method, dataset, sigma, out_dir, \
         created_at, queued_at, device_request, backend, resources) \
         VALUES ($1, $2, $3, $4, '{}', $5, $6, $7, $8, '', $9, $9, $10, $11, $12) RETURNING id",
    )
    .persistent(super::cacheable(columns.sigma.is_none()))
    .bind(experiment_id)
    .bind(name)
    .bind(kind.as_str())
    .bind(RunStatus::Queued.as_str())
    .bind(columns.arch.clone())
    .bind(columns.method.clone())
    .bind(columns.dataset.clone())
    .bind(columns.sigma)
    .bind(now)
    .bind(placement.device.to_string())
    .bind(placement.backend.as_str())
    .bind(placement.resources.as_ref().map(|r| serde_json::to_string(r).expect("resources serialize")))
    .fetch_one(&mut *conn)
    .await?
    .try_get("id")?;
    Ok(id)
}

pub async fn set_config(
    conn: &mut AnyConnection,
    id: i64,
    name: &str,
    config: &Value,
    out_dir: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET name = $1, config = $2, out_dir = $3 WHERE id = $4")
        .bind(name)
        .bind(config.to_string())
        .bind(out_dir)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn insert_parents(conn: &mut AnyConnection, id: i64, parents: &[i64]) -> anyhow::Result<()> {
    for (position, parent) in parents.iter().enumerate() {
        sqlx::query("INSERT INTO run_parents (run_id, parent_id, position) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(*parent)
            .bind(position as i64)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn get(pool: &AnyPool, id: i64) -> anyhow::Result<Option<Run>> {
    let row =
        sqlx::query(&format!("SELECT {COLUMNS} FROM runs r WHERE r.id = $1")).bind(id).fetch_optional(pool).await?;
    let Some(row) = row else { return Ok(None) };
    let mut run = from_row(&row)?;
    run.parents = parents_of(pool, &[id]).await?.remove(&id).unwrap_or_default();
    Ok(Some(run))
}

/// Parents of each of `ids`, in the order given at creation.
async fn parents_of(pool: &AnyPool, ids: &[i64]) -> anyhow::Result<HashMap<i64, Vec<i64>>> {
    let mut out: HashMap<i64, Vec<i64>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let sql = format!("SELECT run_id, parent_id FROM run_parents WHERE run_id IN ({list}) ORDER BY run_id, position");
    for r in sqlx::query(&sql).fetch_all(pool).await? {
        out.entry(r.try_get("run_id")?).or_default().push(r.try_get("parent_id")?);
    }
    Ok(out)
}

/// Run ids that name `id` as a parent.
pub async fn children_of(pool: &AnyPool, id: i64) -> anyhow::Result<Vec<i64>> {
    sqlx::query("SELECT run_id FROM run_parents WHERE parent_id = $1 ORDER BY run_id")
        .bind(id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("run_id")?))
        .collect()
}

/// How to order a run list: a run column or a metric's latest value.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Column(&'static str),
    Metric(String),
}

#[derive(Debug, Clone)]
pub struct RunFilter {
    pub experiment_id: Option<i64>,
    pub status: Option<RunStatus>,
    pub kind: Option<RunKind>,
    pub arch: Option<String>,
    pub method: Option<String>,
    pub dataset: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    pub limit: i64,
    pub offset: i64,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            experiment_id: None,
            status: None,
            kind: None,
            arch: None,
            method: None,
            dataset: None,
            sort: SortKey::Column("id"),
            descending: false,
            limit: 100,
            offset: 0,
        }
    }
}

/// Sortable run columns, by API name.
pub const SORT_COLUMNS: [&str; 9] =
    ["id", "name", "status", "kind", "created_at", "started_at", "finished_at", "wall_time_s", "sigma"];

pub async fn list(pool: &AnyPool, f: &RunFilter) -> anyhow::Result<Vec<Run>> {
    enum Bind {
        I(i64),
        S(String),
    }
    let mut sql = format!("SELECT {COLUMNS} FROM runs r");
    let mut binds: Vec<Bind> = Vec::new();
    if let SortKey::Metric(key) = &f.sort {
        binds.push(Bind::S(key.clone()));
        sql.push_str(" LEFT JOIN metric_latest ml ON ml.run_id = r.id AND ml.key = $1");
    }
    // Runs an MLflow client deleted are out of sight (restorable through that API).
    let mut conds: Vec<String> = vec!["r.deleted_at IS NULL".to_string()];
    if let Some(id) = f.experiment_id {
        binds.push(Bind::I(id));
        conds.push(format!("r.experiment_id = ${}", binds.len()));
    }
    let text_filters = [
        ("status", f.status.map(|s| s.as_str().to_string())),
        ("kind", f.kind.map(|k| k.as_str().to_string())),
        ("arch", f.arch.clone()),
        ("method", f.method.clone()),
        ("dataset", f.dataset.clone()),
    ];
    for (column, value) in text_filters {
        if let Some(v) = value {
            binds.push(Bind::S(v));
            conds.push(format!("r.{column} = ${}", binds.len()));
        }
    }
    sql.push_str(" WHERE ");
    sql.push_str(&conds.join(" AND "));
    let dir = if f.descending { "DESC" } else { "ASC" };
    // NULLs last in both directions and both dialects.
    let order = match &f.sort {
        SortKey::Column(c) => format!("r.{c}"),
        SortKey::Metric(_) => "ml.value".to_string(),
    };
    sql.push_str(&format!(" ORDER BY ({order} IS NULL), {order} {dir}, r.id {dir}"));
    binds.push(Bind::I(f.limit));
    sql.push_str(&format!(" LIMIT ${}", binds.len()));
    binds.push(Bind::I(f.offset));
    sql.push_str(&format!(" OFFSET ${}", binds.len()));

    let mut query = sqlx::query(&sql);
    for b in binds {
        query = match b {
            Bind::I(i) => query.bind(i),
            Bind::S(s) => query.bind(s),
        };
    }
    let rows = query.fetch_all(pool).await?;
    let mut runs = rows.iter().map(from_row).collect::<anyhow::Result<Vec<_>>>()?;
    let mut parents = parents_of(pool, &runs.iter().map(|r| r.id).collect::<Vec<_>>()).await?;
    for run in &mut runs {
        run.parents = parents.remove(&run.id).unwrap_or_default();
    }
    Ok(runs)
}

/// All runs in a status, oldest queued first.
pub async fn with_status(pool: &AnyPool, status: RunStatus) -> anyhow::Result<Vec<Run>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM runs r WHERE r.status = $1 ORDER BY r.queued_at, r.id"))
        .bind(status.as_str())
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Queued runs whose parents have all finished, in queue order, with the device each asks for.
pub async fn ready(pool: &AnyPool) -> anyhow::Result<Vec<(i64, DeviceRequest)>> {
    sqlx::query(
        "SELECT r.id, r.device_request FROM runs r WHERE r.status = 'queued' AND r.handle IS NULL \
         AND r.kind <> 'external' AND NOT EXISTS (\
           SELECT 1 FROM run_parents rp JOIN runs p ON p.id = rp.parent_id \
           WHERE rp.run_id = r.id AND p.status <> 'finished') \
         ORDER BY r.queued_at, r.id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("id")?, parsed(&r.try_get::<String, _>("device_request")?, "device_request")?)))
    .collect()
}

/// (queued run, failed parent, parent's error) for queued runs that can never start.
pub async fn orphaned(pool: &AnyPool) -> anyhow::Result<Vec<(i64, i64, Option<String>)>> {
    sqlx::query(
        "SELECT r.id AS run_id, p.id AS parent_id, p.error AS error FROM runs r \
         JOIN run_parents rp ON rp.run_id = r.id JOIN runs p ON p.id = rp.parent_id \
         WHERE r.status = 'queued' AND p.status = 'failed' ORDER BY r.id, rp.position",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("run_id")?, r.try_get("parent_id")?, r.try_get("error")?)))
    .collect()
}

/// Records a new attempt's handle (the run stays `queued` until it runs: a Slurm job may wait),
/// with the attempt counted and its read positions, terminal event and stop request reset.
pub async fn set_launched(conn: &mut AnyConnection, id: i64, handle: &Handle, device: Device) -> anyhow::Result<()> {
    let pid = match handle {
        Handle::Local { pid, .. } => Some(i64::from(*pid)),
        Handle::Slurm { .. } => None,
    };
    sqlx::query(
        "UPDATE runs SET handle = $1, pid = $2, pgid = $2, device = $3, attempt = attempt + 1, events_offset = 0, \
         stderr_offset = 0, terminal = NULL, stop_requested_at = NULL, backend_state = NULL, finished_at = NULL, \
         exit_code = NULL, exit_signal = NULL, error = NULL WHERE id = $4",
    )
    .bind(serde_json::to_string(handle)?)
    .bind(pid)
    .bind(device.to_string())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The launched attempt is executing now.
pub async fn set_running(conn: &mut AnyConnection, id: i64, now: f64) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET status = 'running', started_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_backend_state(conn: &mut AnyConnection, id: i64, state: &Value) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET backend_state = $1 WHERE id = $2")
        .bind(state.to_string())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_offsets(conn: &mut AnyConnection, id: i64, cursor: Cursor) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET events_offset = $1, stderr_offset = $2 WHERE id = $3")
        .bind(cursor.events as i64)
        .bind(cursor.stderr as i64)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_terminal(conn: &mut AnyConnection, id: i64, terminal: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET terminal = $1 WHERE id = $2").bind(terminal).bind(id).execute(conn).await?;
    Ok(())
}

pub async fn request_stop(conn: &mut AnyConnection, id: i64, now: f64) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET stop_requested_at = $1 WHERE id = $2 AND stop_requested_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Runs with a launched attempt that has not been recorded as ended: the ones to supervise.
pub async fn launched(pool: &AnyPool) -> anyhow::Result<Vec<Run>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM runs r WHERE r.status IN ('queued', 'running') AND r.handle IS NOT NULL ORDER BY r.id"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub status: RunStatus,
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
    pub error: Option<String>,
    /// Seconds to add to the run's wall time.
    pub wall_time_s: f64,
}

pub async fn set_ended(conn: &mut AnyConnection, id: i64, end: &Ending, now: f64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE runs SET status = $1, exit_code = $2, exit_signal = $3, error = $4, \
         wall_time_s = wall_time_s + $5, finished_at = $6 WHERE id = $7",
    )
    .bind(end.status.as_str())
    .bind(end.exit_code)
    .bind(end.exit_signal)
    .bind(end.error.clone())
    .bind(end.wall_time_s)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts a stopped or crashed run back in the queue with a new config (resume: true).
pub async fn requeue(conn: &mut AnyConnection, id: i64, config: &Value, now: f64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE runs SET status = 'queued', config = $1, queued_at = $2, finished_at = NULL, pid = NULL, \
         pgid = NULL, exit_code = NULL, exit_signal = NULL, error = NULL, handle = NULL, backend_state = NULL, \
         stop_requested_at = NULL, terminal = NULL WHERE id = $3",
    )
    .bind(config.to_string())
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_resolved_config(conn: &mut AnyConnection, id: i64, config: &Value) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET resolved_config = $1 WHERE id = $2")
        .bind(config.to_string())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_progress(conn: &mut AnyConnection, id: i64, p: &Progress) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE runs SET progress_phase = $1, progress_done = $2, progress_total = $3, progress_unit = $4 WHERE id = $5",
    )
    .bind(p.phase.clone())
    .bind(p.done)
    .bind(p.total)
    .bind(p.unit.clone())
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_summary(conn: &mut AnyConnection, id: i64, summary: &Value) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET summary = $1 WHERE id = $2").bind(summary.to_string()).bind(id).execute(conn).await?;
    Ok(())
}

/// Queued or running runs of an experiment that a trainer executes (not external ones).
pub async fn active_trainer_runs(pool: &AnyPool, experiment_id: i64) -> anyhow::Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM runs WHERE experiment_id = $1 AND status IN ('queued', 'running') AND kind <> 'external'",
    )
    .bind(experiment_id)
    .fetch_one(pool)
    .await?;
    Ok(row.try_get("n")?)
}
