//! Per-image certification (or prediction) results.

use sqlx::{AnyConnection, AnyPool, Row};

use crt_trainer::events::Certificate;

/// Stores one image's result; a repeated image (a rerun) replaces the earlier one.
pub async fn upsert(conn: &mut AnyConnection, run_id: i64, c: &Certificate) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO certificates \
         (run_id, idx, label, predict, radius, correct, count_a, p_lower, time, samples, decision, p_upper) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (run_id, idx) DO UPDATE SET \
         label = excluded.label, predict = excluded.predict, radius = excluded.radius, correct = excluded.correct, \
         count_a = excluded.count_a, p_lower = excluded.p_lower, time = excluded.time, \
         samples = excluded.samples, decision = excluded.decision, p_upper = excluded.p_upper",
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
    .bind(c.samples.map(|n| n as i64))
    .bind(c.decision.clone())
    .bind(c.p_upper)
    .execute(conn)
    .await?;
    Ok(())
}

/// Results with image index greater than `after`, by index, at most `limit`.
pub async fn list(pool: &AnyPool, run_id: i64, after: i64, limit: i64) -> anyhow::Result<Vec<Certificate>> {
    sqlx::query(
        "SELECT idx, label, predict, radius, correct, count_a, p_lower, time, samples, decision, p_upper \
         FROM certificates \
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
            samples: r.try_get::<Option<i64>, _>("samples")?.map(|n| n as u64),
            decision: r.try_get("decision")?,
            p_upper: r.try_get("p_upper")?,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use sqlx::Executor;

    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn sequential_fields_round_trip_and_fixed_rows_keep_them_empty() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        // No run row: this test is about the certificate columns alone.
        conn.execute("PRAGMA foreign_keys = OFF").await.unwrap();
        let fixed = Certificate {
            idx: 1,
            label: 3,
            predict: 3,
            radius: Some(0.5),
            correct: true,
            count_a: Some(99_000),
            p_lower: Some(0.98),
            time: 0.25,
            ..Certificate::default()
        };
        let sequential = Certificate {
            idx: 2,
            samples: Some(400),
            decision: Some("certified".into()),
            p_upper: Some(0.999),
            ..fixed.clone()
        };
        upsert(&mut conn, 7, &fixed).await.unwrap();
        upsert(&mut conn, 7, &sequential).await.unwrap();
        drop(conn);
        assert_eq!(list(&store.pool, 7, -1, 10).await.unwrap(), vec![fixed, sequential]);
    }
}
