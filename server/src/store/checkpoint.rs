//! SQLite's WAL checkpoints, run beside the writer instead of inside its commits.
//!
//! By default SQLite copies the write-ahead log back into the database file in the commit that
//! crosses 1,000 log pages, while the store's write lock is held: under log-batch ingest that was
//! about a seventh of the time inside the lock. Automatic checkpoints are switched off on every
//! connection (`PRAGMA wal_autocheckpoint = 0`), and a commit starts a passive checkpoint on
//! another pooled connection when none has run for [`Checkpointer::EVERY`]. A passive checkpoint
//! never blocks readers or the writer; the log is rewound by the next write once it has been
//! copied in full.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::AnyPool;

pub struct Checkpointer {
    running: AtomicBool,
    last: Mutex<Instant>,
}

impl Checkpointer {
    /// At most one checkpoint started per interval: a busy writer commits hundreds of times a
    /// second, and the log stays a few megabytes.
    pub const EVERY: Duration = Duration::from_millis(250);

    pub fn new() -> Arc<Checkpointer> {
        Arc::new(Checkpointer { running: AtomicBool::new(false), last: Mutex::new(Instant::now()) })
    }

    /// Called after each commit: starts a checkpoint in the background when one is due.
    pub fn after_commit(self: &Arc<Self>, pool: &AnyPool) {
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < Self::EVERY || self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Instant::now();
        }
        let (me, pool) = (Arc::clone(self), pool.clone());
        tokio::spawn(async move {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                // A closed pool at shutdown, or a busy database: the next commit tries again.
                tracing::debug!("WAL checkpoint not done: {e}");
            }
            me.running.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::Store;

    /// A 1 MiB write is 256 log pages, under SQLite's own threshold (1,000): only a checkpoint
    /// started by a commit copies it into the database file.
    #[tokio::test]
    async fn a_commit_after_the_interval_copies_the_log_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crt.db");
        let store = Store::open(&format!("sqlite://{}?mode=rwc", file.display())).await.unwrap();
        sqlx::query("CREATE TABLE blob_test (data BLOB)").execute(&store.pool).await.unwrap();
        let before = std::fs::metadata(&file).unwrap().len();
        tokio::time::sleep(super::Checkpointer::EVERY).await;
        let mut w = store.write().await.unwrap();
        sqlx::query("INSERT INTO blob_test (data) VALUES ($1)")
            .bind(vec![7u8; 1 << 20])
            .execute(w.conn())
            .await
            .unwrap();
        w.commit().await.unwrap();
        let mut size = before;
        for _ in 0..200 {
            size = std::fs::metadata(&file).unwrap().len();
            if size > before + (1 << 20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(size > before + (1 << 20), "database file {before} -> {size} bytes: no checkpoint ran");
    }
}
