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
        /// NaN and infinities travel as the strings "NaN", "Infinity", "-Infinity".
        #[serde(with = "non_finite")]
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
        /// NaN and infinities travel as the strings "NaN", "Infinity", "-Infinity".
        #[serde(default, with = "non_finite")]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    /// Sequential modes only: estimation samples drawn (count_a of them voted for the top class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Sequential modes only: why sampling stopped (`certified`, `not_certified`, `converged`,
    /// `abstain`, `cap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Sequential modes only: the upper end of the interval on the top class's probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_upper: Option<f64>,
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

/// A map of metric values where NaN, +inf and -inf are the JSON strings "NaN", "Infinity" and
/// "-Infinity" (the protobuf-JSON / MLflow convention) instead of serde_json's `null`. Reading
/// accepts plain numbers, those three strings, and `null` (as NaN, what older trainers wrote).
pub mod non_finite {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    /// The wire form of one value: a number, or a string for NaN and the infinities.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(f64),
        Text(String),
        Null(()),
    }

    pub fn to_wire(v: f64) -> Result<f64, &'static str> {
        if v.is_nan() {
            Err("NaN")
        } else if v == f64::INFINITY {
            Err("Infinity")
        } else if v == f64::NEG_INFINITY {
            Err("-Infinity")
        } else {
            Ok(v)
        }
    }

    pub fn from_wire_str(s: &str) -> Option<f64> {
        match s {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        }
    }

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, f64>, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for (k, &v) in map {
            match to_wire(v) {
                Ok(number) => out.serialize_entry(k, &number)?,
                Err(text) => out.serialize_entry(k, text)?,
            }
        }
        out.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let wire = BTreeMap::<String, Wire>::deserialize(deserializer)?;
        wire.into_iter()
            .map(|(k, v)| {
                let value = match v {
                    Wire::Number(x) => x,
                    Wire::Null(()) => f64::NAN,
                    Wire::Text(s) => from_wire_str(&s).ok_or_else(|| {
                        D::Error::custom(format!(
                            "metric {k}: expected a number, \"NaN\", \"Infinity\" or \"-Infinity\", got \"{s}\""
                        ))
                    })?,
                };
                Ok((k, value))
            })
            .collect()
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
                ..Certificate::default()
            }),
        };
        let json = cert.to_json();
        assert!(json.contains(r#""event":"certified""#) && json.contains(r#""idx":7"#), "{json}");
        assert_eq!(EventLine::parse(&json).unwrap(), cert);
    }

    #[test]
    fn non_finite_metrics_travel_as_strings() {
        let values = BTreeMap::from([
            ("a/nan".to_string(), f64::NAN),
            ("b/inf".to_string(), f64::INFINITY),
            ("c/neg_inf".to_string(), f64::NEG_INFINITY),
            ("d/plain".to_string(), 0.25),
        ]);
        let line = EventLine { ts: 1.0, event: Event::Metrics { step: 1, epoch: None, values: values.clone() } };
        let json = line.to_json();
        assert!(
            json.contains(r#""values":{"a/nan":"NaN","b/inf":"Infinity","c/neg_inf":"-Infinity","d/plain":0.25}"#),
            "{json}"
        );
        let Event::Metrics { values: back, .. } = EventLine::parse(&json).unwrap().event else { panic!("not metrics") };
        assert!(back["a/nan"].is_nan());
        assert_eq!(back["b/inf"], f64::INFINITY);
        assert_eq!(back["c/neg_inf"], f64::NEG_INFINITY);
        assert_eq!(back["d/plain"], 0.25);

        let fin = EventLine { ts: 2.0, event: Event::Finished { wall_time_s: 3.0, summary: values } };
        let json = fin.to_json();
        assert!(json.contains(r#""a/nan":"NaN""#) && !json.contains("null"), "{json}");
        let Event::Finished { summary, .. } = EventLine::parse(&json).unwrap().event else { panic!("not finished") };
        assert!(summary["a/nan"].is_nan());
        assert_eq!(
            (summary["b/inf"], summary["c/neg_inf"], summary["d/plain"]),
            (f64::INFINITY, f64::NEG_INFINITY, 0.25)
        );
    }

    #[test]
    fn metric_values_parse_numbers_strings_and_null() {
        let line =
            r#"{"ts":1,"event":"metrics","step":2,"values":{"int":3,"neg":-1.5e-3,"inf":"Infinity","old":null}}"#;
        let Event::Metrics { values, .. } = EventLine::parse(line).unwrap().event else { panic!("not metrics") };
        assert_eq!((values["int"], values["neg"], values["inf"]), (3.0, -1.5e-3, f64::INFINITY));
        assert!(values["old"].is_nan());
        let summary_missing = r#"{"ts":1,"event":"finished","wall_time_s":2.5}"#;
        assert!(
            matches!(EventLine::parse(summary_missing).unwrap().event, Event::Finished { ref summary, .. } if summary.is_empty())
        );
        let bad = r#"{"ts":1,"event":"metrics","step":2,"values":{"x":"inf"}}"#;
        let err = EventLine::parse(bad).unwrap_err().to_string();
        assert!(err.contains("x") && err.contains("inf"), "{err}");
    }
}
