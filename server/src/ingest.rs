//! Trainer output → database → live subscribers.
//!
//! Lines from the trainer's stdout and stderr arrive on a channel; each batch (everything
//! waiting, up to `MAX_BATCH`) is stored in one transaction, whose journal entries are
//! broadcast once it commits. Batching adapts by itself: a quiet trainer gets one small
//! transaction per line (low latency), a chatty one gets big transactions (high throughput).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;

use crt_trainer::events::{Event, EventLine};

use crate::runs::status::Terminal;
use crate::store::artifacts::Artifact;
use crate::store::metrics::MetricPoint;
use crate::store::runs::Progress;
use crate::store::{self, Store, WriteTx};

/// The most lines stored in one transaction.
pub const MAX_BATCH: usize = 2000;
/// How many of the last output lines a failure message quotes.
const TAIL_LINES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stdout,
    Stderr,
}

/// One line of trainer output, stamped when it was read.
#[derive(Debug, Clone)]
pub struct Line {
    pub source: Source,
    pub ts: f64,
    pub text: String,
}

/// What the ingest learned that decides the run's final status.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub terminal: Option<Terminal>,
    pub last_lines: VecDeque<String>,
    pub metric_points: u64,
}

/// Reads lines from a trainer pipe into the channel until EOF (invalid UTF-8 is replaced).
pub async fn read_lines<R: AsyncBufRead + Unpin>(mut reader: R, source: Source, tx: mpsc::Sender<Line>) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                let line = Line { source, ts: crt_trainer::events::unix_now(), text };
                if tx.send(line).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("reading trainer output failed: {e}");
                break;
            }
        }
    }
}

/// Stores one run's output.
pub struct Ingest {
    store: Store,
    run_id: i64,
    experiment_id: i64,
    out_dir: PathBuf,
    outcome: Outcome,
}

impl Ingest {
    pub fn new(store: Store, run_id: i64, experiment_id: i64, out_dir: PathBuf) -> Self {
        Ingest { store, run_id, experiment_id, out_dir, outcome: Outcome::default() }
    }

    /// Stores batches until every sender is gone, then returns what was learned.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Line>) -> Outcome {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.store_with_retry(&batch).await;
            batch.clear();
        }
        self.outcome
    }

    async fn store_with_retry(&mut self, batch: &[Line]) {
        for attempt in 1..=3 {
            match self.store_batch(batch).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(run = self.run_id, attempt, "storing {} trainer lines failed: {e:#}", batch.len());
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }

    /// Stores one batch in one transaction.
    pub async fn store_batch(&mut self, batch: &[Line]) -> anyhow::Result<()> {
        let mut w = self.store.write().await?;
        let mut progress = None;
        // The latest point per key is written once per batch, not once per line.
        let mut latest: HashMap<String, MetricPoint> = HashMap::new();
        let mut outcome = self.outcome.clone();
        for line in batch {
            match line.source {
                Source::Stdout => match EventLine::parse(&line.text) {
                    Ok(ev) => {
                        if let Event::Progress { phase, done, total, unit } = ev.event {
                            // Only the last progress of a batch matters.
                            progress = Some(Progress { phase, done: done as i64, total: total as i64, unit });
                        } else {
                            self.store_event(&mut w, ev, &mut outcome, &mut latest).await?;
                        }
                    }
                    Err(_) => self.store_log(&mut w, line.ts, "stdout", None, &line.text, &mut outcome).await?,
                },
                Source::Stderr => self.store_log(&mut w, line.ts, "stderr", None, &line.text, &mut outcome).await?,
            }
        }
        for (key, point) in &latest {
            store::metrics::upsert_latest(w.conn(), self.run_id, key, point).await?;
        }
        if let Some(p) = progress {
            store::runs::set_progress(w.conn(), self.run_id, &p).await?;
            w.journal(self.run_id, self.experiment_id, "progress", serde_json::to_value(&p)?).await?;
        }
        w.commit().await?;
        // Only a committed batch counts, so a retried batch is not counted twice.
        self.outcome = outcome;
        Ok(())
    }

    async fn store_log(
        &self,
        w: &mut WriteTx<'_>,
        ts: f64,
        stream: &str,
        level: Option<&str>,
        text: &str,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        let id = store::logs::insert(w.conn(), self.run_id, ts, stream, level, text).await?;
        let data = json!({ "id": id, "stream": stream, "level": level, "line": text });
        w.journal(self.run_id, self.experiment_id, "log", data).await?;
        if outcome.last_lines.len() == TAIL_LINES {
            outcome.last_lines.pop_front();
        }
        outcome.last_lines.push_back(text.to_string());
        Ok(())
    }

    async fn store_event(
        &self,
        w: &mut WriteTx<'_>,
        ev: EventLine,
        outcome: &mut Outcome,
        latest: &mut HashMap<String, MetricPoint>,
    ) -> anyhow::Result<()> {
        let (run, exp) = (self.run_id, self.experiment_id);
        match ev.event {
            Event::Started { config, version, device, threads, resumed_from_step } => {
                store::runs::set_resolved_config(w.conn(), run, &serde_json::to_value(&config)?).await?;
                let data = json!({ "version": version, "device": device, "threads": threads, "resumed_from_step": resumed_from_step });
                w.journal(run, exp, "started", data).await?;
                let resumed = resumed_from_step.map(|s| format!(", resumed from step {s}")).unwrap_or_default();
                let note = format!("crt-trainer {version} started on {device} with {threads} threads{resumed}");
                self.store_log(w, ev.ts, "server", Some("info"), &note, outcome).await?;
            }
            Event::Metrics { step, epoch, values } => {
                store::metrics::upsert_step(w.conn(), run, step as i64, epoch, ev.ts, &values).await?;
                for (key, value) in &values {
                    let point = MetricPoint { step: step as i64, epoch, ts: ev.ts, value: *value };
                    let newest = latest.entry(key.clone()).or_insert(point);
                    if point.step >= newest.step {
                        *newest = point;
                    }
                }
                outcome.metric_points += values.len() as u64;
                w.journal(run, exp, "metrics", json!({ "step": step, "epoch": epoch, "values": values })).await?;
            }
            Event::Progress { .. } => unreachable!("progress is coalesced per batch"),
            Event::Certified(cert) => {
                store::certificates::upsert(w.conn(), run, &cert).await?;
                w.journal(run, exp, "certificate", serde_json::to_value(&cert)?).await?;
            }
            Event::Artifact { path, kind, size, sha256 } => {
                let artifact = Artifact {
                    path: relative_path(&self.out_dir, &path),
                    kind: kind.as_str().into(),
                    size: size as i64,
                    sha256,
                    ts: ev.ts,
                };
                store::artifacts::upsert(w.conn(), run, &artifact).await?;
                w.journal(run, exp, "artifact", serde_json::to_value(&artifact)?).await?;
            }
            Event::Log { level, message } => {
                self.store_log(w, ev.ts, "trainer", Some(&level), &message, outcome).await?;
            }
            Event::Finished { wall_time_s, summary } => {
                store::runs::set_summary(w.conn(), run, &serde_json::to_value(&summary)?).await?;
                let note = format!("the trainer finished after {wall_time_s:.1} s");
                self.store_log(w, ev.ts, "server", Some("info"), &note, outcome).await?;
                outcome.terminal = Some(Terminal::Finished);
            }
            Event::Stopped { wall_time_s, checkpoint } => {
                let at = checkpoint.map(|c| format!("; checkpoint {c}")).unwrap_or_default();
                let note = format!("the trainer stopped after {wall_time_s:.1} s{at}");
                self.store_log(w, ev.ts, "server", Some("info"), &note, outcome).await?;
                outcome.terminal = Some(Terminal::Stopped);
            }
            Event::Failed { error } => {
                self.store_log(w, ev.ts, "trainer", Some("error"), &error, outcome).await?;
                outcome.terminal = Some(Terminal::Failed(error));
            }
        }
        Ok(())
    }
}

/// An artifact path relative to the run directory (the trainer may report absolute paths).
fn relative_path(out_dir: &Path, path: &str) -> String {
    let p = Path::new(path);
    p.strip_prefix(out_dir).map(|r| r.to_string_lossy().into_owned()).unwrap_or_else(|_| path.to_string())
}

/// Files in the run directory that no artifact event announced (recorded as kind `other`),
/// so everything a run leaves behind can be listed and downloaded.
pub async fn unreported_files(out_dir: &Path, known: &[String]) -> Vec<Artifact> {
    let dir = out_dir.to_path_buf();
    let known: Vec<String> = known.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = relative_path(&dir, &path.to_string_lossy());
                if !meta.is_file() || known.contains(&rel) || rel.ends_with(".tmp") {
                    continue;
                }
                if let Ok(sha256) = sha256_file(&path) {
                    let kind = if rel == crate::launch::CONFIG_FILE { "metadata" } else { "other" };
                    found.push(Artifact {
                        path: rel,
                        kind: kind.into(),
                        size: meta.len() as i64,
                        sha256,
                        ts: crt_trainer::events::unix_now(),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        found
    })
    .await
    .unwrap_or_default()
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Records the given files as artifacts of a run, with journal entries.
pub async fn record_artifacts(
    store: &Store,
    run_id: i64,
    experiment_id: i64,
    files: &[Artifact],
) -> anyhow::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut w = store.write().await?;
    for a in files {
        store::artifacts::upsert(w.conn(), run_id, a).await?;
        w.journal(run_id, experiment_id, "artifact", serde_json::to_value(a)?).await?;
    }
    w.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_paths_are_relative() {
        assert_eq!(relative_path(Path::new("/d/runs/3"), "/d/runs/3/model.safetensors"), "model.safetensors");
        assert_eq!(relative_path(Path::new("/d/runs/3"), "sub/x.tsv"), "sub/x.tsv");
    }

    #[tokio::test]
    async fn reads_lines_lossily() {
        let (tx, mut rx) = mpsc::channel(8);
        let input: &[u8] = b"one\r\ntwo \xff\nthree";
        read_lines(input, Source::Stderr, tx).await;
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l.text);
        }
        assert_eq!(got, vec!["one", "two \u{fffd}", "three"]);
    }
}
