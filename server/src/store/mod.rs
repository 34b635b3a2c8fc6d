//! Persistence: one `Store` over SQLite or Postgres through sqlx's `Any` driver.
//!
//! Queries use `$N` placeholders, which both SQLite and Postgres accept; the two schemas live in
//! `migrations/sqlite` and `migrations/postgres`. Every write goes through [`Store::write`], which
//! serializes writers: SQLite allows one writer anyway, and a single writer keeps the journal's
//! sequence numbers committed in order, so a live stream can never skip an earlier event.

pub mod artifacts;
pub mod certificates;
mod checkpoint;
pub mod experiments;
pub mod journal;
pub mod logs;
pub mod metrics;
pub mod mlflow;
pub mod rollup;
pub mod runs;
pub mod tokens;

use std::sync::Arc;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};
use tokio::sync::{broadcast, Mutex, MutexGuard};

pub use journal::JournalEntry;

/// The SQL dialect behind the pool (the schema differs; queries do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn from_url(url: &str) -> anyhow::Result<Dialect> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Dialect::Postgres)
        } else {
            anyhow::bail!("--database-url: expected a sqlite:… or postgres://… URL, got '{}'", redact(url))
        }
    }
}

/// The database plus the broadcast channel that carries each committed journal entry to
/// live subscribers.
#[derive(Clone)]
pub struct Store {
    pub pool: AnyPool,
    pub dialect: Dialect,
    write_lock: Arc<Mutex<()>>,
    events: broadcast::Sender<Arc<JournalEntry>>,
    /// SQLite only: the WAL checkpoints taken out of the commits.
    checkpointer: Option<Arc<checkpoint::Checkpointer>>,
}

impl Store {
    /// Connects, creating the SQLite file if needed, and runs the migrations.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let options: AnyConnectOptions =
            url.parse().with_context(|| format!("--database-url: cannot parse '{}'", redact(url)))?;
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers (API, SSE replay) proceed while ingest writes; its
                        // checkpoints run beside the writer (store::checkpoint).
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA cache_size = -16384;").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to the database at {}", redact(url)))?;
        let migrator = match dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        migrator.run(&pool).await.context("database migration failed")?;
        let (events, _) = broadcast::channel(4096);
        let checkpointer = (dialect == Dialect::Sqlite).then(checkpoint::Checkpointer::new);
        let store = Store { pool, dialect, write_lock: Arc::new(Mutex::new(())), events, checkpointer };
        rollup::backfill(&store).await.context("summarizing metric histories for charts")?;
        Ok(store)
    }

    /// Starts the (only) write transaction; journal entries appended to it are broadcast on commit.
    pub async fn write(&self) -> anyhow::Result<WriteTx<'_>> {
        let guard = self.write_lock.lock().await;
        let tx = self.pool.begin().await.context("cannot begin a database transaction")?;
        Ok(WriteTx { tx, _guard: guard, entries: Vec::new(), store: self })
    }

    /// Live journal entries, each sent once its transaction has committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JournalEntry>> {
        self.events.subscribe()
    }
}

/// A write transaction holding the store's write lock.
pub struct WriteTx<'a> {
    tx: Transaction<'static, Any>,
    _guard: MutexGuard<'a, ()>,
    entries: Vec<JournalEntry>,
    store: &'a Store,
}

impl WriteTx<'_> {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Appends a journal entry (an SSE event); `data` must be a JSON object.
    pub async fn journal(
        &mut self,
        run_id: i64,
        experiment_id: i64,
        kind: &str,
        data: impl Into<journal::EventData>,
    ) -> anyhow::Result<i64> {
        let entry = journal::append(&mut self.tx, run_id, experiment_id, kind, data.into()).await?;
        let seq = entry.seq;
        self.entries.push(entry);
        Ok(seq)
    }

    /// Commits, then publishes the journal entries while still holding the write lock, so
    /// subscribers see them in sequence order.
    pub async fn commit(self) -> anyhow::Result<()> {
        let WriteTx { tx, _guard, entries, store } = self;
        tx.commit().await.context("cannot commit a database transaction")?;
        // Sent under the lock, so subscribers see commit order; an entry nobody received (no
        // subscriber) is freed after the lock is released: a 1,000-point entry is many frees.
        let mut unsent = Vec::new();
        for entry in entries {
            // No subscribers is fine: the entry is in the database for later replay.
            if let Err(broadcast::error::SendError(entry)) = store.events.send(Arc::new(entry)) {
                unsent.push(entry);
            }
        }
        drop(_guard);
        drop(unsent);
        if let Some(c) = &store.checkpointer {
            c.after_commit(&store.pool);
        }
        Ok(())
    }
}

/// Whether a statement may stay in sqlx's per-connection statement cache. On Postgres the Any
/// driver declares a NULL bound for an `f64` as FLOAT4 (sqlx 0.8.6 maps its Double NULL to an
/// `f32`), and a cached statement keeps the parameter types of its first execution: one first
/// run with such a NULL rejects a float in that place later ("incorrect binary data format in bind
/// parameter"), depending on which pooled connection runs what. A statement that binds a NULL
/// float is therefore prepared afresh and not cached; the usual one, without, stays cached.
pub fn cacheable(binds_null_float: bool) -> bool {
    !binds_null_float
}

/// Placeholders for statements with many parameters, each value bound in order: anonymous `?`
/// on SQLite, where sqlx looks every named `$N` up by a linear scan (a 1,000-row insert was
/// quadratic: half of ingest time), `$N` on Postgres (which has no `?`).
pub struct Placeholders {
    sqlite: bool,
    next: usize,
}

impl Placeholders {
    pub fn new(conn: &AnyConnection) -> Placeholders {
        Placeholders { sqlite: conn.backend_name() == "SQLite", next: 0 }
    }

    pub fn one(&mut self) -> String {
        let mut out = String::with_capacity(4);
        self.push(&mut out);
        out
    }

    /// `n` placeholders in parentheses: one row of `VALUES`, or an `IN` list.
    pub fn tuple(&mut self, n: usize) -> String {
        let mut out = String::with_capacity(n * 5 + 2);
        self.push_tuple(&mut out, n);
        out
    }

    // Written into one buffer: a 1,000-row insert has 6,000 placeholders, built inside the write
    // lock, and a String each was a measurable part of it.
    fn push(&mut self, out: &mut String) {
        self.next += 1;
        if self.sqlite {
            out.push('?');
        } else {
            use std::fmt::Write;
            let _ = write!(out, "${}", self.next);
        }
    }

    fn push_tuple(&mut self, out: &mut String, n: usize) {
        out.push('(');
        for i in 0..n {
            if i > 0 {
                out.push_str(", ");
            }
            self.push(out);
        }
        out.push(')');
    }
}

/// The `VALUES` rows of a bulk statement: `rows` tuples of `cols` placeholders.
pub fn values_rows(conn: &AnyConnection, rows: usize, cols: usize) -> String {
    let mut p = Placeholders::new(conn);
    let mut out = String::with_capacity(rows * (cols * 5 + 4));
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        p.push_tuple(&mut out, cols);
    }
    out
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://crt:secret@localhost/db"), "postgres://crt:***@localhost/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn dialect_from_url() {
        assert_eq!(Dialect::from_url("sqlite://a.db").unwrap(), Dialect::Sqlite);
        assert_eq!(Dialect::from_url("postgresql://h/db").unwrap(), Dialect::Postgres);
        assert!(Dialect::from_url("mysql://h/db").is_err());
    }
}
