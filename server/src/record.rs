//! The one recording entry point: a batch of events for a run, stored in one transaction
//! together with the position the source has reached, then broadcast to live subscribers.
//!
//! Every source goes through [`Recorder::record`]: the tailer of a trainer's event log now,
//! the MLflow-compatible API and imported results later. Storing the source position in the
//! same transaction as the rows is what makes a tailed event count exactly once, across
//! server restarts: a batch is either stored with its new offset, or neither is.
//!
//! Two rules every source shares:
//! - Non-finite metric values (NaN, +-inf) are kept, never dropped: on the wire they are
//!   "NaN", "Infinity", "-Infinity" (docs/events.md), in the database a NULL value is NaN, and
//!   the API gives them back as those strings.
//! - Repeated steps: a trainer re-reporting a step (a resumed run repeating the steps after its
//!   last checkpoint) replaces the stored point for (key, step). External clients (MLflow's
//!   protocol keeps every value with its timestamp) append: `Incoming::Logged` never replaces.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::json;

use crt_trainer::events::{Event, EventLine};

use crate::downsample::Ranked;
use crate::store::artifacts::Artifact;
use crate::store::metrics::{self, Logged, MetricPoint};
use crate::store::mlflow::KvTable;
use crate::store::runs::Progress;
use crate::store::{self, Store, WriteTx};

/// One thing to record.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A trainer event.
    Event(EventLine),
    /// A line of output that is not an event (`stream`: "stdout" or "stderr").
    Log {
        stream: &'static str,
        ts: f64,
        text: String,
    },
    /// A metric value an external client logged: appended, never replacing (MLflow keeps every
    /// value at a step).
    Logged(Logged),
    /// A run parameter (external clients; MLflow refuses to change one, checked before this).
    Param {
        key: String,
        value: String,
    },
    Tag {
        key: String,
        value: String,
    },
    DeleteTag {
        key: String,
    },
    /// A dataset input (MLflow's `log-inputs`), kept as sent.
    Input(serde_json::Value),
}

impl Incoming {
    /// A line of a trainer's event log: an event, or (if it does not parse) a stdout log line.
    pub fn from_event_line(text: &str, ts: f64) -> Incoming {
        match EventLine::parse(text) {
            Ok(ev) => Incoming::Event(ev),
            Err(_) => Incoming::Log { stream: "stdout", ts, text: text.to_string() },
        }
    }
}

/// How far a tailed source has been read: bytes of the attempt's event log and stderr file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub events: u64,
    pub stderr: u64,
}

/// The trainer's last terminal event, as stored on the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    Finished,
    Stopped,
    Failed(String),
}

impl Terminal {
    pub fn to_column(&self) -> String {
        match self {
            Terminal::Finished => "finished".into(),
            Terminal::Stopped => "stopped".into(),
            Terminal::Failed(msg) => format!("failed: {msg}"),
        }
    }

    pub fn from_column(text: &str) -> Option<Terminal> {
        match text {
            "finished" => Some(Terminal::Finished),
            "stopped" => Some(Terminal::Stopped),
            _ => text.strip_prefix("failed: ").map(|m| Terminal::Failed(m.to_string())),
        }
    }
}

/// Records events for one run.
pub struct Recorder {
    store: Store,
    run_id: i64,
    experiment_id: i64,
    out_dir: PathBuf,
}

impl Recorder {
    pub fn new(store: Store, run_id: i64, experiment_id: i64, out_dir: PathBuf) -> Self {
        Recorder { store, run_id, experiment_id, out_dir }
    }

    /// Stores `batch` in one transaction, with the source's new position when it has one.
    pub async fn record(&self, batch: &[Incoming], cursor: Option<Cursor>) -> anyhow::Result<()> {
        // An external client's points, and their one live event, made before the (only) write
        // lock is taken: other requests can be stored meanwhile.
        let logged: Vec<Logged> = batch
            .iter()
            .filter_map(|item| match item {
                Incoming::Logged(point) => Some(point.clone()),
                _ => None,
            })
            .collect();
        let logged_event = (!logged.is_empty()).then(|| {
            let points: Vec<serde_json::Value> = logged
                .iter()
                .map(|p| json!({ "key": p.key, "step": p.step, "ts": p.ts, "value": metrics::value_json(p.value) }))
                .collect();
            store::journal::EventData::from(json!({ "points": points }))
        });
        let mut w = self.store.write().await?;
        let mut progress = None;
        // The latest point per key is written once per batch, not once per line.
        let mut latest: HashMap<String, MetricPoint> = HashMap::new();
        // A trainer's points per key, for the chart levels.
        let mut stepped: BTreeMap<String, Vec<Ranked>> = BTreeMap::new();
        let mut external = false;
        for item in batch {
            match item {
                Incoming::Event(EventLine { event: Event::Progress { phase, done, total, unit }, .. }) => {
                    // Only the last progress of a batch matters.
                    progress = Some(Progress {
                        phase: phase.clone(),
                        done: *done as i64,
                        total: *total as i64,
                        unit: unit.clone(),
                    });
                }
                Incoming::Event(ev) => self.store_event(&mut w, ev, &mut latest, &mut stepped).await?,
                Incoming::Log { stream, ts, text } => self.store_log(&mut w, *ts, stream, None, text).await?,
                Incoming::Logged(point) => {
                    let p = MetricPoint { step: point.step, epoch: None, ts: point.ts, value: point.value };
                    let newest = latest.entry(point.key.clone()).or_insert(p);
                    if (p.step, p.ts) >= (newest.step, newest.ts) {
                        *newest = p;
                    }
                }
                Incoming::Param { key, value } => {
                    store::mlflow::upsert(w.conn(), KvTable::Params, self.run_id, key, value).await?;
                    external = true;
                }
                Incoming::Tag { key, value } => {
                    store::mlflow::upsert(w.conn(), KvTable::Tags, self.run_id, key, value).await?;
                    external = true;
                }
                Incoming::DeleteTag { key } => {
                    store::mlflow::delete_tag(w.conn(), self.run_id, key).await?;
                    external = true;
                }
                Incoming::Input(input) => {
                    store::mlflow::add_input(w.conn(), self.run_id, input).await?;
                    external = true;
                }
            }
        }
        if !stepped.is_empty() {
            self.update_chart_levels(&mut w, &stepped).await?;
        }
        if let Some(event) = logged_event {
            let stored = metrics::append(w.conn(), self.run_id, &logged).await?;
            store::rollup::add(w.conn(), self.run_id, &stored).await?;
            // One live event for the whole batch, however many steps it spans.
            w.journal(self.run_id, self.experiment_id, "metrics", event).await?;
            external = true;
        }
        if external {
            store::mlflow::touch(w.conn(), self.run_id, crt_trainer::events::unix_now()).await?;
        }
        if !latest.is_empty() {
            store::metrics::upsert_latest(w.conn(), self.run_id, &latest).await?;
        }
        if let Some(p) = progress {
            store::runs::set_progress(w.conn(), self.run_id, &p).await?;
            w.journal(self.run_id, self.experiment_id, "progress", serde_json::to_value(&p)?).await?;
        }
        if let Some(c) = cursor {
            store::runs::set_offsets(w.conn(), self.run_id, c).await?;
        }
        w.commit().await
    }

    /// Brings the chart levels up to date with a trainer's points: merged when they only extend
    /// a history, recomputed over their range when they may replace stored steps (a resumed
    /// trainer repeats the steps after its checkpoint). Runs before the latest points move on.
    async fn update_chart_levels(
        &self,
        w: &mut WriteTx<'_>,
        stepped: &BTreeMap<String, Vec<Ranked>>,
    ) -> anyhow::Result<()> {
        let stored_last = metrics::latest_steps(w.conn(), self.run_id).await?;
        let mut extending = BTreeMap::new();
        for (key, points) in stepped {
            let increasing = points.windows(2).all(|p| p[0].p.step < p[1].p.step);
            if increasing && stored_last.get(key).is_none_or(|&last| points[0].p.step > last) {
                extending.insert(key.clone(), points.clone());
            } else {
                let lo = points.iter().map(|p| p.p.step).min().unwrap_or_default();
                let hi = points.iter().map(|p| p.p.step).max().unwrap_or_default();
                store::rollup::rebuild(w.conn(), self.run_id, key, lo, hi).await?;
            }
        }
        store::rollup::add(w.conn(), self.run_id, &extending).await
    }

    async fn store_log(
        &self,
        w: &mut WriteTx<'_>,
        ts: f64,
        stream: &str,
        level: Option<&str>,
        text: &str,
    ) -> anyhow::Result<()> {
        let id = store::logs::insert(w.conn(), self.run_id, ts, stream, level, text).await?;
        let data = json!({ "id": id, "stream": stream, "level": level, "line": text });
        w.journal(self.run_id, self.experiment_id, "log", data).await?;
        Ok(())
    }

    async fn set_terminal(&self, w: &mut WriteTx<'_>, terminal: Terminal) -> anyhow::Result<()> {
        store::runs::set_terminal(w.conn(), self.run_id, &terminal.to_column()).await
    }

    async fn store_event(
        &self,
        w: &mut WriteTx<'_>,
        ev: &EventLine,
        latest: &mut HashMap<String, MetricPoint>,
        stepped: &mut BTreeMap<String, Vec<Ranked>>,
    ) -> anyhow::Result<()> {
        let (run, exp) = (self.run_id, self.experiment_id);
        match &ev.event {
            Event::Started { config, version, device, threads, resumed_from_step } => {
                store::runs::set_resolved_config(w.conn(), run, &serde_json::to_value(config)?).await?;
                let data = json!({ "version": version, "device": device, "threads": threads, "resumed_from_step": resumed_from_step });
                w.journal(run, exp, "started", data).await?;
                let resumed = resumed_from_step.map(|s| format!(", resumed from step {s}")).unwrap_or_default();
                let note = format!("crt-trainer {version} started on {device} with {threads} threads{resumed}");
                self.store_log(w, ev.ts, "server", Some("info"), &note).await?;
            }
            Event::Metrics { step, epoch, values } => {
                store::metrics::upsert_step(w.conn(), run, *step as i64, *epoch, ev.ts, values).await?;
                for (key, value) in values {
                    let point = MetricPoint { step: *step as i64, epoch: *epoch, ts: ev.ts, value: *value };
                    stepped.entry(key.clone()).or_default().push(Ranked::new(0, point));
                    let newest = latest.entry(key.clone()).or_insert(point);
                    if point.step >= newest.step {
                        *newest = point;
                    }
                }
                let shown: serde_json::Map<String, serde_json::Value> =
                    values.iter().map(|(k, v)| (k.clone(), metrics::value_json(*v))).collect();
                w.journal(run, exp, "metrics", json!({ "step": step, "epoch": epoch, "values": shown })).await?;
            }
            Event::Progress { .. } => unreachable!("progress is coalesced per batch"),
            Event::Certified(cert) => {
                store::certificates::upsert(w.conn(), run, cert).await?;
                w.journal(run, exp, "certificate", serde_json::to_value(cert)?).await?;
            }
            Event::Artifact { path, kind, size, sha256 } => {
                let artifact = Artifact {
                    path: relative_path(&self.out_dir, path),
                    kind: kind.as_str().into(),
                    size: *size as i64,
                    sha256: sha256.clone(),
                    ts: ev.ts,
                };
                store::artifacts::upsert(w.conn(), run, &artifact).await?;
                w.journal(run, exp, "artifact", serde_json::to_value(&artifact)?).await?;
            }
            Event::Log { level, message } => {
                self.store_log(w, ev.ts, "trainer", Some(level), message).await?;
            }
            Event::Finished { wall_time_s, summary } => {
                let shown: serde_json::Map<String, serde_json::Value> =
                    summary.iter().map(|(k, v)| (k.clone(), metrics::value_json(*v))).collect();
                store::runs::set_summary(w.conn(), run, &serde_json::Value::Object(shown)).await?;
                let note = format!("the trainer finished after {wall_time_s:.1} s");
                self.store_log(w, ev.ts, "server", Some("info"), &note).await?;
                self.set_terminal(w, Terminal::Finished).await?;
            }
            Event::Stopped { wall_time_s, checkpoint } => {
                let at = checkpoint.as_ref().map(|c| format!("; checkpoint {c}")).unwrap_or_default();
                let note = format!("the trainer stopped after {wall_time_s:.1} s{at}");
                self.store_log(w, ev.ts, "server", Some("info"), &note).await?;
                self.set_terminal(w, Terminal::Stopped).await?;
            }
            Event::Failed { error } => {
                self.store_log(w, ev.ts, "trainer", Some("error"), error).await?;
                self.set_terminal(w, Terminal::Failed(error.clone())).await?;
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
}
