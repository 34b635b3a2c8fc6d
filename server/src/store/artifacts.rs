//! Files a run wrote to its output directory, with size and sha256.

use serde::Serialize;
use sqlx::{AnyConnection, AnyPool, Row};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Artifact {
    /// Relative to the run's output directory.
    pub path: String,
    pub kind: String,
    pub size: i64,
    pub sha256: String,
    pub ts: f64,
}

/// Records a file; a file written again (a checkpoint each epoch) replaces its earlier record.
pub async fn upsert(conn: &mut AnyConnection, run_id: i64, a: &Artifact) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO artifacts (run_id, path, kind, size, sha256, ts) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (run_id, path) DO UPDATE SET kind = excluded.kind, size = excluded.size, \
         sha256 = excluded.sha256, ts = excluded.ts",
    )
    .bind(run_id)
    .bind(a.path.clone())
    .bind(a.kind.clone())
    .bind(a.size)
    .bind(a.sha256.clone())
    .bind(a.ts)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn list(pool: &AnyPool, run_id: i64) -> anyhow::Result<Vec<Artifact>> {
    sqlx::query("SELECT path, kind, size, sha256, ts FROM artifacts WHERE run_id = $1 ORDER BY path")
        .bind(run_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Artifact {
                path: r.try_get("path")?,
                kind: r.try_get("kind")?,
                size: r.try_get("size")?,
                sha256: r.try_get("sha256")?,
                ts: r.try_get("ts")?,
            })
        })
        .collect()
}

pub async fn get(pool: &AnyPool, run_id: i64, path: &str) -> anyhow::Result<Option<Artifact>> {
    Ok(list(pool, run_id).await?.into_iter().find(|a| a.path == path))
}

/// Whether the trainer reported a checkpoint for the run (train and transfer runs write one at
/// the end of every epoch and when stopped); a failed run with one can be resumed.
pub async fn has_checkpoint(pool: &AnyPool, run_id: i64) -> anyhow::Result<bool> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM artifacts WHERE run_id = $1 AND kind = 'checkpoint'")
        .bind(run_id)
        .fetch_one(pool)
        .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}
