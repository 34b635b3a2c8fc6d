//! The run-event journal: one row per streamed change, numbered by a single increasing `seq`
//! that is also the SSE event id, so a reconnecting client resumes exactly where it left off.

use anyhow::Context;
use serde_json::{Map, Value};
use sqlx::{AnyConnection, AnyPool, Row};

use crt_trainer::events::unix_now;

#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub seq: i64,
    pub run_id: i64,
    pub experiment_id: i64,
    pub ts: f64,
    /// The SSE event name: status, metrics, progress, log, artifact, certificate, started.
    pub kind: String,
    /// A JSON object with the event's fields.
    pub data: Value,
}

impl JournalEntry {
    /// The SSE `data` payload: the event's fields plus its identity.
    pub fn to_json(&self) -> Value {
        let mut obj = match &self.data {
            Value::Object(map) => map.clone(),
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other.clone());
                m
            }
        };
        obj.insert("seq".into(), self.seq.into());
        obj.insert("run_id".into(), self.run_id.into());
        obj.insert("experiment_id".into(), self.experiment_id.into());
        obj.insert("ts".into(), self.ts.into());
        obj.insert("type".into(), self.kind.clone().into());
        Value::Object(obj)
    }
}

/// An event's fields with their stored text, so a large event can be serialized before the
/// write lock is taken.
pub struct EventData {
    value: Value,
    text: String,
}

impl From<Value> for EventData {
    fn from(value: Value) -> EventData {
        let text = value.to_string();
        EventData { value, text }
    }
}

pub(crate) async fn append(
    conn: &mut AnyConnection,
    run_id: i64,
    experiment_id: i64,
    kind: &str,
    data: EventData,
) -> anyhow::Result<JournalEntry> {
    let ts = unix_now();
    let seq: i64 = sqlx::query(
        "INSERT INTO run_events (run_id, experiment_id, ts, type, data) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
    )
    .bind(run_id)
    .bind(experiment_id)
    .bind(ts)
    .bind(kind)
    .bind(data.text)
    .fetch_one(&mut *conn)
    .await
    .context("cannot append to the run event journal")?
    .try_get("seq")?;
    Ok(JournalEntry { seq, run_id, experiment_id, ts, kind: kind.to_string(), data: data.value })
}

/// Which events a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Run(i64),
    Experiment(i64),
}

impl Scope {
    pub fn matches(&self, entry: &JournalEntry) -> bool {
        match *self {
            Scope::Run(id) => entry.run_id == id,
            Scope::Experiment(id) => entry.experiment_id == id,
        }
    }
}

/// Stored entries of `scope` with `seq > after`, oldest first, at most `limit`.
pub async fn read_after(pool: &AnyPool, scope: Scope, after: i64, limit: i64) -> anyhow::Result<Vec<JournalEntry>> {
    let (column, id) = match scope {
        Scope::Run(id) => ("run_id", id),
        Scope::Experiment(id) => ("experiment_id", id),
    };
    let sql = format!(
        "SELECT seq, run_id, experiment_id, ts, type, data FROM run_events \
         WHERE {column} = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    );
    let rows = sqlx::query(&sql).bind(id).bind(after).bind(limit).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            let data: String = r.try_get("data")?;
            Ok(JournalEntry {
                seq: r.try_get("seq")?,
                run_id: r.try_get("run_id")?,
                experiment_id: r.try_get("experiment_id")?,
                ts: r.try_get("ts")?,
                kind: r.try_get("type")?,
                data: serde_json::from_str(&data).context("corrupt journal entry")?,
            })
        })
        .collect()
}

/// The newest sequence number in `scope` (0 when there is none).
pub async fn last_seq(pool: &AnyPool, scope: Scope) -> anyhow::Result<i64> {
    let (column, id) = match scope {
        Scope::Run(id) => ("run_id", id),
        Scope::Experiment(id) => ("experiment_id", id),
    };
    let sql = format!("SELECT MAX(seq) AS seq FROM run_events WHERE {column} = $1");
    let seq: Option<i64> = sqlx::query(&sql).bind(id).fetch_one(pool).await?.try_get("seq")?;
    Ok(seq.unwrap_or(0))
}

/// When the run's newest journal entry was written.
pub async fn last_ts(pool: &AnyPool, run_id: i64) -> anyhow::Result<Option<f64>> {
    Ok(sqlx::query("SELECT MAX(ts) AS ts FROM run_events WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await?
        .try_get("ts")?)
}
