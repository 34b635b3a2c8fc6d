//! What the MLflow-compatible API stores beyond runs and metrics: params, tags, dataset inputs,
//! experiment tags, soft deletion, and the reads that assemble MLflow's view of runs.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AnyConnection, AnyPool, Row};

use super::Store;
use crt_trainer::events::unix_now;

/// The experiment MLflow clients log to when they name none (MLflow's "Default", id 0).
pub const DEFAULT_EXPERIMENT: i64 = 0;

/// Creates MLflow's Default experiment (id 0) unless it exists.
pub async fn ensure_default_experiment(store: &Store) -> anyhow::Result<()> {
    let exists = sqlx::query("SELECT 1 AS one FROM experiments WHERE id = $1")
        .bind(DEFAULT_EXPERIMENT)
        .fetch_optional(&store.pool)
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let now = unix_now();
    let mut w = store.write().await?;
    sqlx::query(
        "INSERT INTO experiments (id, name, description, tags, created_at, updated_at) \
         VALUES ($1, 'Default', 'MLflow clients log here when they name no experiment', '[]', $2, $2) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(DEFAULT_EXPERIMENT)
    .bind(now)
    .execute(w.conn())
    .await?;
    w.commit().await
}

/// An experiment as MLflow sees it.
#[derive(Debug, Clone)]
pub struct MlExperiment {
    pub id: i64,
    pub name: String,
    pub created_at: f64,
    pub updated_at: f64,
    pub deleted: bool,
    pub tags: BTreeMap<String, String>,
}

async fn experiment_tags(pool: &AnyPool, ids: &[i64]) -> anyhow::Result<HashMap<i64, BTreeMap<String, String>>> {
    let mut out: HashMap<i64, BTreeMap<String, String>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let sql =
        format!("SELECT experiment_id, key, value FROM experiment_tags WHERE experiment_id IN ({})", id_list(ids));
    for r in sqlx::query(&sql).fetch_all(pool).await? {
        out.entry(r.try_get("experiment_id")?).or_default().insert(r.try_get("key")?, r.try_get("value")?);
    }
    Ok(out)
}

fn id_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// Every experiment, deleted ones included (the caller filters by lifecycle).
pub async fn experiments(pool: &AnyPool) -> anyhow::Result<Vec<MlExperiment>> {
    experiments_where(pool, None).await
}

pub async fn experiment(pool: &AnyPool, id: i64) -> anyhow::Result<Option<MlExperiment>> {
    Ok(experiments_where(pool, Some(id)).await?.pop())
}

async fn experiments_where(pool: &AnyPool, id: Option<i64>) -> anyhow::Result<Vec<MlExperiment>> {
    let cond = id.map(|id| format!("WHERE id = {id}")).unwrap_or_default();
    let rows = sqlx::query(&format!(
        "SELECT id, name, created_at, updated_at, deleted_at FROM experiments {cond} ORDER BY id"
    ))
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
    let mut tags = experiment_tags(pool, &ids).await?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get("id")?;
            Ok(MlExperiment {
                id,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
                deleted: r.try_get::<Option<f64>, _>("deleted_at")?.is_some(),
                tags: tags.remove(&id).unwrap_or_default(),
            })
        })
        .collect()
}

pub async fn set_experiment_deleted(store: &Store, id: i64, deleted: bool) -> anyhow::Result<()> {
    let now = unix_now();
    let mut w = store.write().await?;
    // Literal NULLs: sqlx's Any driver cannot bind a typed NULL double for Postgres.
    let sql = if deleted {
        "UPDATE experiments SET deleted_at = $2, updated_at = $2 WHERE id = $1"
    } else {
        "UPDATE experiments SET deleted_at = NULL, updated_at = $2 WHERE id = $1"
    };
    sqlx::query(sql).bind(id).bind(now).execute(w.conn()).await?;
    w.commit().await
}

pub async fn set_experiment_tag(store: &Store, id: i64, key: &str, value: &str) -> anyhow::Result<()> {
    let mut w = store.write().await?;
    sqlx::query(
        "INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3) \
         ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(id)
    .bind(key)
    .bind(value)
    .execute(w.conn())
    .await?;
    w.commit().await
}

pub async fn set_run_deleted(store: &Store, id: i64, deleted: bool) -> anyhow::Result<()> {
    let mut w = store.write().await?;
    if deleted {
        sqlx::query("UPDATE runs SET deleted_at = $2 WHERE id = $1")
            .bind(id)
            .bind(unix_now())
            .execute(w.conn())
            .await?;
    } else {
        sqlx::query("UPDATE runs SET deleted_at = NULL WHERE id = $1").bind(id).execute(w.conn()).await?;
    }
    w.commit().await
}

/// A run's row as MLflow needs it.
#[derive(Debug, Clone)]
pub struct MlRun {
    pub id: i64,
    pub experiment_id: i64,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub created_at: f64,
    pub deleted: bool,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// Latest point per key: (value, ts seconds, step).
    pub latest: BTreeMap<String, (f64, f64, i64)>,
    pub inputs: Vec<serde_json::Value>,
}

/// Runs of the given experiments (or the given run ids), with params, tags and latest metrics.
pub async fn runs(pool: &AnyPool, experiments: Option<&[i64]>, run_ids: Option<&[i64]>) -> anyhow::Result<Vec<MlRun>> {
    let mut conds = Vec::new();
    if let Some(e) = experiments {
        if e.is_empty() {
            return Ok(Vec::new());
        }
        conds.push(format!("experiment_id IN ({})", id_list(e)));
    }
    if let Some(r) = run_ids {
        if r.is_empty() {
            return Ok(Vec::new());
        }
        conds.push(format!("id IN ({})", id_list(r)));
    }
    let cond = if conds.is_empty() { "1 = 1".to_string() } else { conds.join(" AND ") };
    let rows = sqlx::query(&format!(
        "SELECT id, experiment_id, name, kind, status, started_at, finished_at, created_at, deleted_at FROM runs WHERE {cond}"
    ))
    .fetch_all(pool)
    .await?;
    let mut runs: Vec<MlRun> = rows
        .iter()
        .map(|r| {
            Ok(MlRun {
                id: r.try_get("id")?,
                experiment_id: r.try_get("experiment_id")?,
                name: r.try_get("name")?,
                kind: r.try_get("kind")?,
                status: r.try_get("status")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                created_at: r.try_get("created_at")?,
                deleted: r.try_get::<Option<f64>, _>("deleted_at")?.is_some(),
                params: BTreeMap::new(),
                tags: BTreeMap::new(),
                latest: BTreeMap::new(),
                inputs: Vec::new(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if runs.is_empty() {
        return Ok(runs);
    }
    let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let list = id_list(&ids);
    for table in [KvTable::Params, KvTable::Tags] {
        let sql = format!("SELECT run_id, key, value FROM {} WHERE run_id IN ({list})", table.name());
        for r in sqlx::query(&sql).fetch_all(pool).await? {
            let run = &mut runs[index[&r.try_get::<i64, _>("run_id")?]];
            let map = match table {
                KvTable::Params => &mut run.params,
                KvTable::Tags => &mut run.tags,
            };
            map.insert(r.try_get("key")?, r.try_get("value")?);
        }
    }
    for r in sqlx::query(&format!("SELECT run_id, key, step, ts, value FROM metric_latest WHERE run_id IN ({list})"))
        .fetch_all(pool)
        .await?
    {
        let value = r.try_get::<Option<f64>, _>("value")?.unwrap_or(f64::NAN);
        runs[index[&r.try_get::<i64, _>("run_id")?]]
            .latest
            .insert(r.try_get("key")?, (value, r.try_get("ts")?, r.try_get("step")?));
    }
    for r in sqlx::query(&format!("SELECT run_id, input FROM run_inputs WHERE run_id IN ({list}) ORDER BY run_id, n"))
        .fetch_all(pool)
        .await?
    {
        let input: String = r.try_get("input")?;
        runs[index[&r.try_get::<i64, _>("run_id")?]].inputs.push(serde_json::from_str(&input)?);
    }
    Ok(runs)
}

// ---------- writes used by the recorder ----------

/// A run's key-value table: MLflow params or tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvTable {
    Params,
    Tags,
}

impl KvTable {
    fn name(self) -> &'static str {
        match self {
            KvTable::Params => "run_params",
            KvTable::Tags => "run_tags",
        }
    }
}

pub async fn upsert(
    conn: &mut AnyConnection,
    table: KvTable,
    run_id: i64,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO {} (run_id, key, value) VALUES ($1, $2, $3) ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
        table.name()
    );
    sqlx::query(&sql).bind(run_id).bind(key).bind(value).execute(conn).await?;
    Ok(())
}

pub async fn delete_tag(conn: &mut AnyConnection, run_id: i64, key: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM run_tags WHERE run_id = $1 AND key = $2").bind(run_id).bind(key).execute(conn).await?;
    Ok(())
}

pub async fn add_input(conn: &mut AnyConnection, run_id: i64, input: &serde_json::Value) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO run_inputs (run_id, n, input) VALUES ($1, (SELECT COALESCE(MAX(n) + 1, 0) FROM run_inputs WHERE run_id = $1), $2)",
    )
    .bind(run_id)
    .bind(input.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn touch(conn: &mut AnyConnection, run_id: i64, now: f64) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET last_write_at = $2 WHERE id = $1").bind(run_id).bind(now).execute(conn).await?;
    Ok(())
}

/// A run's params or tags (MLflow's rule that a logged param never changes reads them; so do the
/// run views of external runs).
pub async fn key_values(pool: &AnyPool, table: KvTable, run_id: i64) -> anyhow::Result<BTreeMap<String, String>> {
    sqlx::query(&format!("SELECT key, value FROM {} WHERE run_id = $1", table.name()))
        .bind(run_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
        .collect()
}

/// A page of a key's history in MLflow's order (step, then the order values were logged).
pub async fn history_page(
    pool: &AnyPool,
    run_id: i64,
    key: &str,
    offset: usize,
    limit: usize,
) -> anyhow::Result<Vec<(i64, f64, f64)>> {
    sqlx::query(
        "SELECT step, ts, value FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step, n LIMIT $3 OFFSET $4",
    )
    .bind(run_id)
    .bind(key)
    .bind(limit as i64)
    .bind(offset as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("step")?, r.try_get("ts")?, r.try_get::<Option<f64>, _>("value")?.unwrap_or(f64::NAN))))
    .collect()
}
