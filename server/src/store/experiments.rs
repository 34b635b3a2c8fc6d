//! Experiments: a named group of runs.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use sqlx::{any::AnyRow, AnyPool, Row};

use super::Store;
use crt_trainer::events::unix_now;

#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub created_at: f64,
    pub updated_at: f64,
    /// Number of runs by status.
    pub run_counts: BTreeMap<String, i64>,
}

/// The editable fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ExperimentPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
}

const COLUMNS: &str = "id, name, description, tags, created_at, updated_at";

fn from_row(r: &AnyRow) -> anyhow::Result<Experiment> {
    let tags: String = r.try_get("tags")?;
    Ok(Experiment {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        tags: serde_json::from_str(&tags).context("corrupt experiment tags")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        run_counts: BTreeMap::new(),
    })
}

pub async fn create(store: &Store, name: &str, description: &str, tags: &[String]) -> anyhow::Result<Experiment> {
    let now = unix_now();
    let mut w = store.write().await?;
    let row = sqlx::query(&format!(
        "INSERT INTO experiments (name, description, tags, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING {COLUMNS}"
    ))
    .bind(name)
    .bind(description)
    .bind(serde_json::to_string(tags)?)
    .bind(now)
    .fetch_one(w.conn())
    .await?;
    let exp = from_row(&row)?;
    w.commit().await?;
    Ok(exp)
}

pub async fn get(pool: &AnyPool, id: i64) -> anyhow::Result<Option<Experiment>> {
    let row =
        sqlx::query(&format!("SELECT {COLUMNS} FROM experiments WHERE id = $1")).bind(id).fetch_optional(pool).await?;
    let Some(row) = row else { return Ok(None) };
    let mut exp = from_row(&row)?;
    exp.run_counts = run_counts(pool, Some(id)).await?.remove(&id).unwrap_or_default();
    Ok(Some(exp))
}

pub async fn list(pool: &AnyPool) -> anyhow::Result<Vec<Experiment>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM experiments WHERE deleted_at IS NULL ORDER BY id"))
        .fetch_all(pool)
        .await?;
    let mut counts = run_counts(pool, None).await?;
    rows.iter()
        .map(|r| {
            let mut exp = from_row(r)?;
            exp.run_counts = counts.remove(&exp.id).unwrap_or_default();
            Ok(exp)
        })
        .collect()
}

async fn run_counts(pool: &AnyPool, only: Option<i64>) -> anyhow::Result<BTreeMap<i64, BTreeMap<String, i64>>> {
    let rows = match only {
        Some(id) => {
            sqlx::query(
                "SELECT experiment_id, status, COUNT(*) AS n FROM runs WHERE experiment_id = $1 \
                 GROUP BY experiment_id, status",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query("SELECT experiment_id, status, COUNT(*) AS n FROM runs GROUP BY experiment_id, status")
                .fetch_all(pool)
                .await?
        }
    };
    let mut out: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for r in rows {
        out.entry(r.try_get("experiment_id")?).or_default().insert(r.try_get("status")?, r.try_get("n")?);
    }
    Ok(out)
}

pub async fn update(store: &Store, id: i64, patch: ExperimentPatch) -> anyhow::Result<Option<Experiment>> {
    let Some(current) = get(&store.pool, id).await? else { return Ok(None) };
    let mut w = store.write().await?;
    sqlx::query("UPDATE experiments SET name = $1, description = $2, tags = $3, updated_at = $4 WHERE id = $5")
        .bind(patch.name.unwrap_or(current.name))
        .bind(patch.description.unwrap_or(current.description))
        .bind(serde_json::to_string(&patch.tags.unwrap_or(current.tags))?)
        .bind(unix_now())
        .bind(id)
        .execute(w.conn())
        .await?;
    w.commit().await?;
    get(&store.pool, id).await
}

/// Deletes the experiment and (by cascade) its runs and their rows; returns the deleted run ids.
pub async fn delete(store: &Store, id: i64) -> anyhow::Result<Vec<i64>> {
    let mut w = store.write().await?;
    let run_ids: Vec<i64> = sqlx::query("SELECT id FROM runs WHERE experiment_id = $1")
        .bind(id)
        .fetch_all(w.conn())
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    sqlx::query("DELETE FROM experiments WHERE id = $1").bind(id).execute(w.conn()).await?;
    w.commit().await?;
    Ok(run_ids)
}
