//! Trainer events: the JSON-lines wire format the trainer writes with `--events jsonl` and the server
//! reads. Defined once, here; documented in docs/events.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::RunConfig;

/// One line of the stream: a timestamp (seconds since the Unix epoch) and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventLine {
    pub ts: f64,
    #[serde(flatten)]
    pub event: Event,
}

impl EventLine {
    pub fn now(event: Event) -> Self {
        EventLine { ts: unix_now(), event }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }

    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run began; `config` is the resolved configuration (all defaults filled in).
    Started {
        config: Box<RunConfig>,
        version: String,
        device: String,
        threads: usize,
        /// Set when the run continues from a checkpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumed_from_step: Option<u64>,
    },
    /// Scalar metrics measured at one point (e.g. `train/loss`, `train/acc`, `test/acc`, `lr`).
    Metrics {
        step: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<f64>,
        values: BTreeMap<String, f64>,
    },
    /// How far the run is: `done` of `total` `unit`s (steps, images) in `phase`.
    Progress { phase: String, done: u64, total: u64, unit: String },
    /// One test image certified (CERTIFY) or predicted (PREDICT; radius and p_lower absent).
    Certified(Certificate),
    /// A file written to the output directory.
    Artifact { path: String, kind: ArtifactKind, size: u64, sha256: String },
    /// A human-readable message.
    Log { level: String, message: String },
    /// The run completed; `summary` holds the final metrics.
    Finished {
        wall_time_s: f64,
        #[serde(default)]
        summary: BTreeMap<String, f64>,
    },
    /// The run stopped on request (SIGTERM) after writing a checkpoint.
    Stopped {
        wall_time_s: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<String>,
    },
    /// The run failed; `error` says why.
    Failed { error: String },
}

/// One image's certification (or prediction) result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub idx: u64,
    pub label: i64,
    /// -1 when abstaining.
    pub predict: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<f64>,
    pub correct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_a: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_lower: Option<f64>,
    /// Seconds spent on this image.
    pub time: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Model,
    Metadata,
    Checkpoint,
    Certificates,
    Summary,
    Other,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Model => "model",
            ArtifactKind::Metadata => "metadata",
            ArtifactKind::Checkpoint => "checkpoint",
            ArtifactKind::Certificates => "certificates",
            ArtifactKind::Summary => "summary",
            ArtifactKind::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_round_trip() {
        let mut values = BTreeMap::new();
        values.insert("train/loss".to_string(), 0.5);
        let line = EventLine { ts: 1.5, event: Event::Metrics { step: 3, epoch: Some(0.25), values } };
        let json = line.to_json();
        assert!(json.contains(r#""event":"metrics""#), "{json}");
        assert_eq!(EventLine::parse(&json).unwrap(), line);

        let cert = EventLine {
            ts: 2.0,
            event: Event::Certified(Certificate {
                idx: 7,
                label: 3,
                predict: -1,
                radius: Some(0.0),
                correct: false,
                count_a: Some(10),
                p_lower: Some(0.2),
                time: 0.1,
            }),
        };
        let json = cert.to_json();
        assert!(json.contains(r#""event":"certified""#) && json.contains(r#""idx":7"#), "{json}");
        assert_eq!(EventLine::parse(&json).unwrap(), cert);
    }
}
