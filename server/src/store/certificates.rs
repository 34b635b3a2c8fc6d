//! Per-image certification (or prediction) results.

use sqlx::{AnyConnection, AnyPool, Row};

use crt_trainer::events::Certificate;

/// Stores one image's result; a repeated image (a rerun) replaces the earlier one.
pub async fn upsert(conn: &mut AnyConnection, run_id: i64, c: &Certificate) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO certificates (run_id, idx, label, predict, radius, correct, count_a, p_lower, time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (run_id, idx) DO UPDATE SET \
         label = excluded.label, predict = excluded.predict, radius = excluded.radius, correct = excluded.correct, \
         count_a = excluded.count_a, p_lower = excluded.p_lower, time = excluded.time",
    )
    .bind(run_id)
    .bind(c.idx as i64)
    .bind(c.label)
    .bind(c.predict)
    .bind(c.radius)
    .bind(c.correct as i64)
    .bind(c.count_a.map(|n| n as i64))
    .bind(c.p_lower)
    .bind(c.time)
    .execute(conn)
    .await?;
    Ok(())
}

/// Results with image index greater than `after`, by index, at most `limit`.
pub async fn list(pool: &AnyPool, run_id: i64, after: i64, limit: i64) -> anyhow::Result<Vec<Certificate>> {
    sqlx::query(
        "SELECT idx, label, predict, radius, correct, count_a, p_lower, time FROM certificates \
         WHERE run_id = $1 AND idx > $2 ORDER BY idx LIMIT $3",
    )
    .bind(run_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Certificate {
            idx: r.try_get::<i64, _>("idx")? as u64,
            label: r.try_get("label")?,
            predict: r.try_get("predict")?,
            radius: r.try_get("radius")?,
            correct: r.try_get::<i64, _>("correct")? != 0,
            count_a: r.try_get::<Option<i64>, _>("count_a")?.map(|n| n as u64),
            p_lower: r.try_get("p_lower")?,
            time: r.try_get("time")?,
        })
    })
    .collect()
}
