//! The certified-accuracy summary of a certification run (Cohen et al. 2019): at each radius
//! r, the fraction of test images whose smoothed prediction is correct and certified with
//! radius ≥ r; and the average certified radius (ACR, 0 for wrong or abstained images).

use std::collections::BTreeMap;

use serde::Serialize;

use crt_trainer::config::RunKind;
use crt_trainer::events::Certificate;

/// Whether a run holds a certification's per-image results: a certify run, or an external run
/// imported as one (`POST /api/v1/experiments/{id}/imports/certification`, whose config records
/// `"imported"`). The one statement of this rule; runs show it as `is_certification`.
pub fn is_certification(kind: RunKind, config: &serde_json::Value) -> bool {
    match kind {
        RunKind::Certify => true,
        RunKind::External => {
            config.get("kind").and_then(|k| k.as_str()) == Some("certify") && config.get("imported").is_some()
        }
        _ => false,
    }
}

/// Whether a run holds a model that can be certified or teach a transfer: a train or transfer
/// run, or an external run imported as a model (`POST /api/v1/experiments/{id}/imports/model`,
/// whose config records `"imported"` with kind `train`). The one statement of this rule; runs
/// show it as `makes_model`.
pub fn makes_model(kind: RunKind, config: &serde_json::Value) -> bool {
    match kind {
        RunKind::External => {
            config.get("kind").and_then(|k| k.as_str()) == Some("train") && config.get("imported").is_some()
        }
        _ => kind.makes_model(),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RadiusAccuracy {
    pub radius: f64,
    pub certified_accuracy: f64,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertSummary {
    pub n: usize,
    /// Smoothed-classifier accuracy (certified accuracy at radius 0).
    pub accuracy: f64,
    pub abstain_rate: f64,
    /// Average certified radius.
    pub acr: f64,
    pub mean_time_s: f64,
    pub radii: Vec<RadiusAccuracy>,
    /// Sequential certification (docs/certification.md): estimation samples per image; absent when
    /// no image records them (fixed-N CERTIFY, PREDICT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<SamplesUsed>,
    /// Images by lower confidence bound on p_A, in [`P_LOWER_BINS`] bins of equal width over [0, 1]
    /// (images without a bound, PREDICT's, are not counted).
    pub p_lower_histogram: Vec<usize>,
}

/// Bins of [`CertSummary::p_lower_histogram`].
pub const P_LOWER_BINS: usize = 20;

/// The distribution of the estimation samples the images of a sequential run used.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SamplesUsed {
    pub mean: f64,
    pub min: u64,
    pub median: u64,
    pub p90: u64,
    pub max: u64,
    /// Images per decision (`certified`, `not_certified`, `converged`, `abstain`, `cap`).
    pub decisions: BTreeMap<String, usize>,
}

fn samples_used(certs: &[Certificate]) -> Option<SamplesUsed> {
    let mut used: Vec<u64> = certs.iter().filter_map(|c| c.samples).collect();
    if used.is_empty() {
        return None;
    }
    used.sort_unstable();
    let at = |q: f64| used[((used.len() as f64 * q).ceil() as usize).clamp(1, used.len()) - 1];
    let mut decisions = BTreeMap::new();
    for d in certs.iter().filter_map(|c| c.decision.clone()) {
        *decisions.entry(d).or_default() += 1;
    }
    Some(SamplesUsed {
        mean: used.iter().sum::<u64>() as f64 / used.len() as f64,
        min: used[0],
        median: at(0.5),
        p90: at(0.9),
        max: used[used.len() - 1],
        decisions,
    })
}

fn p_lower_histogram(certs: &[Certificate]) -> Vec<usize> {
    let mut bins = vec![0; P_LOWER_BINS];
    for p in certs.iter().filter_map(|c| c.p_lower).filter(|p| p.is_finite()) {
        bins[((p.clamp(0.0, 1.0) * P_LOWER_BINS as f64) as usize).min(P_LOWER_BINS - 1)] += 1;
    }
    bins
}

/// 0, 0.25, 0.5, … up to the largest certified radius (at least 1.0).
pub fn default_radii(certs: &[Certificate]) -> Vec<f64> {
    let max = certs.iter().filter_map(|c| c.radius).fold(1.0_f64, f64::max);
    let steps = (max / 0.25).ceil() as usize;
    (0..=steps).map(|i| i as f64 * 0.25).collect()
}

pub fn summarize(certs: &[Certificate], radii: &[f64]) -> CertSummary {
    let n = certs.len();
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    // A prediction without a radius (PREDICT) counts at radius 0 only.
    let certified = |r: f64| {
        certs.iter().filter(|c| c.correct && c.radius.unwrap_or(0.0) >= r && (r == 0.0 || c.radius.is_some())).count()
    };
    // `0.0 +`: Rust's sum of no f64 is -0.0, which would reach users as an ACR of "-0".
    let radius_sum: f64 = 0.0 + certs.iter().filter(|c| c.correct).filter_map(|c| c.radius).sum::<f64>();
    CertSummary {
        n,
        accuracy: frac(certs.iter().filter(|c| c.correct).count()),
        abstain_rate: frac(certs.iter().filter(|c| c.predict < 0).count()),
        acr: if n == 0 { 0.0 } else { radius_sum / n as f64 },
        mean_time_s: if n == 0 { 0.0 } else { certs.iter().map(|c| c.time).sum::<f64>() / n as f64 },
        radii: radii
            .iter()
            .map(|&r| {
                let count = certified(r);
                RadiusAccuracy { radius: r, certified_accuracy: frac(count), count }
            })
            .collect(),
        samples: samples_used(certs),
        p_lower_histogram: p_lower_histogram(certs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(idx: u64, correct: bool, predict: i64, radius: f64) -> Certificate {
        Certificate {
            idx,
            label: 1,
            predict,
            radius: Some(radius),
            correct,
            count_a: None,
            p_lower: None,
            time: 0.5,
            ..Certificate::default()
        }
    }

    #[test]
    fn certified_accuracy_by_radius_and_acr() {
        let certs = vec![cert(0, true, 1, 0.3), cert(1, true, 1, 1.2), cert(2, false, 3, 0.9), cert(3, false, -1, 0.0)];
        let radii = default_radii(&certs);
        assert_eq!(radii, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
        let s = summarize(&certs, &radii);
        assert_eq!(s.n, 4);
        assert_eq!(s.accuracy, 0.5);
        assert_eq!(s.abstain_rate, 0.25);
        assert!((s.acr - 1.5 / 4.0).abs() < 1e-12);
        let acc: Vec<f64> = s.radii.iter().map(|r| r.certified_accuracy).collect();
        assert_eq!(acc, vec![0.5, 0.5, 0.25, 0.25, 0.25, 0.0]);
    }

    #[test]
    fn no_correct_image_gives_a_positive_zero_acr() {
        let s = summarize(&[cert(0, false, 3, 0.9), cert(1, false, -1, 0.0)], &[0.0]);
        assert_eq!(s.acr, 0.0);
        assert!(s.acr.is_sign_positive(), "ACR {:?}", s.acr);
    }

    #[test]
    fn samples_and_p_lower_histogram() {
        let fixed = Certificate { p_lower: Some(0.97), ..cert(0, true, 1, 0.3) };
        let s = summarize(std::slice::from_ref(&fixed), &[0.0]);
        assert_eq!(s.samples, None, "fixed-N rows record no samples");
        assert_eq!(s.p_lower_histogram.iter().sum::<usize>(), 1);
        assert_eq!(s.p_lower_histogram[19], 1);
        let seq = |idx, samples, decision: &str, p| Certificate {
            samples: Some(samples),
            decision: Some(decision.into()),
            p_lower: Some(p),
            ..cert(idx, true, 1, 0.5)
        };
        let certs =
            [seq(0, 100, "certified", 1.0), seq(1, 400, "certified", 0.96), seq(2, 1600, "not_certified", 0.52)];
        let s = summarize(&certs, &[0.0]);
        let used = s.samples.unwrap();
        assert_eq!((used.mean, used.min, used.median, used.max), (700.0, 100, 400, 1600));
        assert_eq!(used.decisions.get("certified"), Some(&2));
        assert_eq!((s.p_lower_histogram[19], s.p_lower_histogram[10]), (2, 1));
    }

    #[test]
    fn certify_runs_and_imported_certifications_are_certifications() {
        let imported = serde_json::json!({ "kind": "certify", "imported": { "format": "reference-tsv" } });
        assert!(is_certification(RunKind::Certify, &serde_json::json!({ "kind": "certify" })));
        assert!(is_certification(RunKind::External, &imported));
        // An MLflow client's run, or one whose config only claims the kind, is not.
        assert!(!is_certification(RunKind::External, &serde_json::json!({})));
        assert!(!is_certification(RunKind::External, &serde_json::json!({ "kind": "certify" })));
        assert!(!is_certification(RunKind::Train, &imported));
        assert!(!is_certification(RunKind::Predict, &serde_json::json!({ "kind": "predict" })));
    }

    #[test]
    fn empty_is_zero() {
        let s = summarize(&[], &[0.0]);
        assert_eq!((s.n, s.accuracy, s.acr), (0, 0.0, 0.0));
    }
}
