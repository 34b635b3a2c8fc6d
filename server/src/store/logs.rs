//! Log lines of a run: the trainer's stderr, stdout lines that are not events, its `log`
//! events, and the server's own notes about the run.

use serde::Serialize;
use sqlx::{AnyConnection, AnyPool, Row};

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub id: i64,
    pub ts: f64,
    /// stdout, stderr, trainer (a `log` event) or server.
    pub stream: String,
    pub level: Option<String>,
    pub line: String,
}

pub async fn insert(
    conn: &mut AnyConnection,
    run_id: i64,
    ts: f64,
    stream: &str,
    level: Option<&str>,
    line: &str,
) -> anyhow::Result<i64> {
    let id: i64 =
        sqlx::query("INSERT INTO logs (run_id, ts, stream, level, line) VALUES ($1, $2, $3, $4, $5) RETURNING id")
            .bind(run_id)
            .bind(ts)
            .bind(stream)
            .bind(level.map(str::to_string))
            .bind(line)
            .fetch_one(conn)
            .await?
            .try_get("id")?;
    Ok(id)
}

/// Which lines to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Lines with id greater than this (paging forward).
    pub after: Option<i64>,
    /// Lines with id less than this (paging backward).
    pub before: Option<i64>,
    /// Only this stream.
    pub stream: Option<String>,
    /// The newest lines (still returned oldest first) instead of the oldest.
    pub tail: bool,
    pub limit: i64,
}

pub async fn read(pool: &AnyPool, run_id: i64, q: &LogQuery) -> anyhow::Result<Vec<LogLine>> {
    let mut sql =
        String::from("SELECT id, ts, stream, level, line FROM logs WHERE run_id = $1 AND id > $2 AND id < $3");
    if q.stream.is_some() {
        sql.push_str(" AND stream = $5");
    }
    sql.push_str(if q.tail { " ORDER BY id DESC LIMIT $4" } else { " ORDER BY id LIMIT $4" });
    let mut query =
        sqlx::query(&sql).bind(run_id).bind(q.after.unwrap_or(0)).bind(q.before.unwrap_or(i64::MAX)).bind(q.limit);
    if let Some(stream) = &q.stream {
        query = query.bind(stream.clone());
    }
    let mut lines = query
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(LogLine {
                id: r.try_get("id")?,
                ts: r.try_get("ts")?,
                stream: r.try_get("stream")?,
                level: r.try_get("level")?,
                line: r.try_get("line")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if q.tail {
        lines.reverse();
    }
    Ok(lines)
}

/// The last `n` lines a run's trainer wrote (stdout, stderr, its log events), oldest first: what
/// a failure message quotes.
pub async fn last_trainer_lines(pool: &AnyPool, run_id: i64, n: i64) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT line FROM logs WHERE run_id = $1 AND stream IN ('stdout', 'stderr', 'trainer') ORDER BY id DESC LIMIT $2",
    )
    .bind(run_id)
    .bind(n)
    .fetch_all(pool)
    .await?;
    let mut lines = rows.iter().map(|r| Ok(r.try_get("line")?)).collect::<anyhow::Result<Vec<String>>>()?;
    lines.reverse();
    Ok(lines)
}
