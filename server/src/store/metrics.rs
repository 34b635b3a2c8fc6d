//! Scalar metrics: the full history per (run, key, step) and the latest value per (run, key).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::downsample::Ranked;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MetricPoint {
    pub step: i64,
    pub epoch: Option<f64>,
    pub ts: f64,
    #[serde(serialize_with = "finite_or_name")]
    pub value: f64,
}

/// A value as JSON: a number, or MLflow's (protobuf-JSON) names for the non-finite ones,
/// "NaN", "Infinity", "-Infinity" (a JSON number cannot be one, and `null` would lose it).
pub fn finite_or_name<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    match non_finite_name(*v) {
        Some(name) => s.serialize_str(name),
        None => s.serialize_f64(*v),
    }
}

pub fn non_finite_name(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("Infinity")
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// A JSON value for a metric value (see [`finite_or_name`]).
pub fn value_json(v: f64) -> serde_json::Value {
    match non_finite_name(v) {
        Some(name) => serde_json::Value::String(name.into()),
        None => serde_json::json!(v),
    }
}

/// NaN is stored as NULL in both databases (SQLite turns a bound NaN into NULL anyway).
fn stored(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

/// Stores the values of one metrics event (one row per key) in one statement. A step already
/// stored (a resumed run repeating steps after its last checkpoint) is overwritten, never
/// duplicated.
pub async fn upsert_step(
    conn: &mut AnyConnection,
    run_id: i64,
    step: i64,
    epoch: Option<f64>,
    ts: f64,
    values: &BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> =
        (0..values.len()).map(|i| format!("($1, ${}, $2, $3, $4, ${})", 5 + 2 * i, 6 + 2 * i)).collect();
    let sql = format!(
        "INSERT INTO metrics (run_id, key, step, epoch, ts, value) VALUES {} \
         ON CONFLICT (run_id, key, step, n) DO UPDATE SET epoch = excluded.epoch, ts = excluded.ts, value = excluded.value",
        rows.join(", ")
    );
    let nulls = epoch.is_none() || values.values().any(|v| v.is_nan());
    let mut query = sqlx::query(&sql).persistent(super::cacheable(nulls)).bind(run_id).bind(step).bind(epoch).bind(ts);
    for (key, value) in values {
        query = query.bind(key.as_str()).bind(stored(*value));
    }
    query.execute(conn).await?;
    Ok(())
}

/// Updates the latest value of each key, unless a later step is already stored: one statement
/// for all the keys of a batch (each key once).
pub async fn upsert_latest(
    conn: &mut AnyConnection,
    run_id: i64,
    points: &HashMap<String, MetricPoint>,
) -> anyhow::Result<()> {
    for part in points.iter().collect::<Vec<_>>().chunks(500) {
        let sql = format!(
            "INSERT INTO metric_latest (run_id, key, step, epoch, ts, value) VALUES {} \
             ON CONFLICT (run_id, key) DO UPDATE SET step = excluded.step, epoch = excluded.epoch, ts = excluded.ts, \
             value = excluded.value WHERE excluded.step >= metric_latest.step",
            super::values_rows(conn, part.len(), 6)
        );
        let nulls = part.iter().any(|(_, p)| p.epoch.is_none() || p.value.is_nan());
        let mut query = sqlx::query(&sql).persistent(super::cacheable(nulls));
        for (key, p) in part {
            query = query.bind(run_id).bind(key.as_str()).bind(p.step).bind(p.epoch).bind(p.ts).bind(stored(p.value));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The last stored step of every key of a run (inside a write).
pub async fn latest_steps(conn: &mut AnyConnection, run_id: i64) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows =
        sqlx::query("SELECT key, step FROM metric_latest WHERE run_id = $1").bind(run_id).fetch_all(conn).await?;
    rows.iter().map(|r| Ok((r.try_get("key")?, r.try_get("step")?))).collect()
}

/// The latest value of every key of a run.
pub async fn latest(pool: &AnyPool, run_id: i64) -> anyhow::Result<BTreeMap<String, MetricPoint>> {
    let rows = sqlx::query("SELECT key, step, epoch, ts, value FROM metric_latest WHERE run_id = $1")
        .bind(run_id)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| Ok((r.try_get("key")?, point(r)?))).collect()
}

fn point(r: &sqlx::any::AnyRow) -> anyhow::Result<MetricPoint> {
    Ok(MetricPoint {
        step: r.try_get("step")?,
        epoch: r.try_get("epoch")?,
        ts: r.try_get("ts")?,
        value: r.try_get::<Option<f64>, _>("value")?.unwrap_or(f64::NAN),
    })
}

/// The keys a run has metrics for.
pub async fn keys(pool: &AnyPool, run_id: i64) -> anyhow::Result<Vec<String>> {
    sqlx::query("SELECT key FROM metric_latest WHERE run_id = $1 ORDER BY key")
        .bind(run_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok(r.try_get("key")?))
        .collect()
}

/// A key's whole history, by step.
pub async fn history(pool: &AnyPool, run_id: i64, key: &str) -> anyhow::Result<Vec<MetricPoint>> {
    let rows =
        sqlx::query("SELECT step, epoch, ts, value FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step, n")
            .bind(run_id)
            .bind(key)
            .fetch_all(pool)
            .await?;
    rows.iter().map(point).collect()
}

/// One value an external client logged (MLflow: every value at a step is kept).
#[derive(Debug, Clone)]
pub struct Logged {
    pub key: String,
    pub step: i64,
    pub ts: f64,
    pub value: f64,
}

/// Appends points, never overwriting: each gets the next free `n` at its (key, step). One query
/// reads the numbers in use, one statement per 500 points inserts. Gives back the stored points
/// by key, with their `n`.
pub async fn append(
    conn: &mut AnyConnection,
    run_id: i64,
    points: &[Logged],
) -> anyhow::Result<BTreeMap<String, Vec<Ranked>>> {
    let mut stored_points: BTreeMap<String, Vec<Ranked>> = BTreeMap::new();
    if points.is_empty() {
        return Ok(stored_points);
    }
    let (lo, hi) = points.iter().fold((i64::MAX, i64::MIN), |(lo, hi), p| (lo.min(p.step), hi.max(p.step)));
    let mut next: std::collections::HashMap<(String, i64), i64> = std::collections::HashMap::new();
    // Keys listed so the primary key (run_id, key, step, n) is searched per key, not scanned.
    let keys: std::collections::BTreeSet<&str> = points.iter().map(|p| p.key.as_str()).collect();
    let mut p = super::Placeholders::new(conn);
    let sql = format!(
        "SELECT key, step, MAX(n) AS n FROM metrics WHERE run_id = {} AND step >= {} AND step <= {} AND key IN {} \
         GROUP BY key, step",
        p.one(),
        p.one(),
        p.one(),
        p.tuple(keys.len())
    );
    let mut query = sqlx::query(&sql).bind(run_id).bind(lo).bind(hi);
    for key in &keys {
        query = query.bind(*key);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    for r in rows {
        next.insert((r.try_get("key")?, r.try_get("step")?), r.try_get::<i64, _>("n")? + 1);
    }
    for chunk in points.chunks(500) {
        let sql = format!(
            "INSERT INTO metrics (run_id, key, step, n, ts, value) VALUES {}",
            super::values_rows(conn, chunk.len(), 6)
        );
        let nulls = chunk.iter().any(|p| p.value.is_nan());
        let mut query = sqlx::query(&sql).persistent(super::cacheable(nulls));
        for p in chunk {
            let n = next.entry((p.key.clone(), p.step)).or_insert(0);
            query = query.bind(run_id).bind(p.key.as_str()).bind(p.step).bind(*n).bind(p.ts).bind(stored(p.value));
            let point = MetricPoint { step: p.step, epoch: None, ts: p.ts, value: p.value };
            stored_points.entry(p.key.clone()).or_default().push(Ranked::new(*n, point));
            *n += 1;
        }
        query.execute(&mut *conn).await?;
    }
    Ok(stored_points)
}
