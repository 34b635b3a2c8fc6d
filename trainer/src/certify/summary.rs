//! What a certification run amounts to: certified accuracy as a function of the radius, the average
//! certified radius (ACR), and the counts and parameters behind them (`summary.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clopper_pearson::max_radius;
use super::smoothed::{Smoothing, ABSTAIN};
use crate::config::CertifyMode;
use crate::events::Certificate;

/// Radii of the certified-accuracy curve are multiples of this.
pub const RADIUS_STEP: f64 = 0.25;

/// Certified accuracy at one radius: the fraction of evaluated images that are classified
/// correctly with a certified radius of at least `radius`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RadiusAccuracy {
    pub radius: f64,
    pub accuracy: f64,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertifySummary {
    pub images: usize,
    pub correct: usize,
    pub abstained: usize,
    /// Smoothed accuracy: certified accuracy at radius 0.
    pub clean_acc: f64,
    /// Average certified radius: mean over all images of radius x correct.
    pub acr: f64,
    /// Radii 0, 0.25, 0.5, ... up to `max_radius`.
    pub certified_accuracy: Vec<RadiusAccuracy>,
    /// The largest radius certifiable with these n and alpha (all n samples vote for the top class).
    pub max_radius: f64,
    pub sigma: f64,
    pub n0: usize,
    pub n: usize,
    pub alpha: f64,
    pub batch: usize,
    pub seed: u64,
    pub wall_time_s: f64,
    /// Sequential modes only (fixed-N summaries are unchanged): the mode, and the estimation samples
    /// the images used. In target-radius mode the curve is the one point at R.
    #[serde(default, skip_serializing_if = "CertifyMode::is_fixed")]
    pub mode: CertifyMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<SamplesUsed>,
}

/// How many estimation samples the images of a sequential run used (the n0 selection samples, the
/// same for every image, come on top), and why they stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplesUsed {
    pub mean: f64,
    pub min: u64,
    pub median: u64,
    pub p90: u64,
    pub max: u64,
    pub total: u64,
    /// The cap (n): a fixed-N run draws this many for every image.
    pub cap: u64,
    /// Images stopped at each look of the schedule: `[samples, images]` pairs, by sample size.
    pub by_look: Vec<(u64, usize)>,
    /// Images per decision (`certified`, `not_certified`, `converged`, `abstain`, `cap`).
    pub decisions: BTreeMap<String, usize>,
    /// The level of each look's bounds (alpha / number of looks).
    pub alpha_per_look: f64,
}

impl SamplesUsed {
    pub fn new(certificates: &[Certificate], cap: u64, alpha_per_look: f64) -> Self {
        let mut used: Vec<u64> = certificates.iter().map(|c| c.samples.unwrap_or(cap)).collect();
        used.sort_unstable();
        let total: u64 = used.iter().sum();
        let at = |q: f64| used.get(((used.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
        let mut by_look: BTreeMap<u64, usize> = BTreeMap::new();
        for &s in &used {
            *by_look.entry(s).or_default() += 1;
        }
        let mut decisions = BTreeMap::new();
        for c in certificates {
            *decisions.entry(c.decision.clone().unwrap_or_default()).or_default() += 1;
        }
        SamplesUsed {
            mean: if used.is_empty() { 0.0 } else { total as f64 / used.len() as f64 },
            min: used.first().copied().unwrap_or(0),
            median: at(0.5),
            p90: at(0.9),
            max: used.last().copied().unwrap_or(0),
            total,
            cap,
            by_look: by_look.into_iter().collect(),
            decisions,
            alpha_per_look,
        }
    }
}

impl CertifySummary {
    pub fn new(certificates: &[Certificate], params: &Smoothing, wall_time_s: f64) -> Self {
        let images = certificates.len();
        let sequential = params.sequential();
        let max_radius = match &sequential {
            Some(test) => test.max_radius(),
            None => max_radius(params.sigma, params.n as u64, params.alpha),
        };
        let radii: Vec<f64> = match params.mode {
            CertifyMode::TargetRadius { radius } => vec![radius],
            _ => radius_grid(max_radius).collect(),
        };
        let certified_accuracy = radii
            .into_iter()
            .map(|radius| {
                let count = certificates.iter().filter(|c| c.correct && radius_of(c) >= radius).count();
                RadiusAccuracy { radius, accuracy: fraction(count, images), count }
            })
            .collect();
        let correct = certificates.iter().filter(|c| c.correct).count();
        // `0.0 +`: Rust's sum of no f64 is -0.0, which would reach users as an ACR of "-0".
        let radius_sum: f64 = 0.0 + certificates.iter().filter(|c| c.correct).map(radius_of).sum::<f64>();
        CertifySummary {
            images,
            correct,
            abstained: certificates.iter().filter(|c| c.predict == ABSTAIN).count(),
            clean_acc: fraction(correct, images),
            acr: if images == 0 { 0.0 } else { radius_sum / images as f64 },
            certified_accuracy,
            max_radius,
            sigma: params.sigma,
            n0: params.n0,
            n: params.n,
            alpha: params.alpha,
            batch: params.batch,
            seed: params.seed,
            wall_time_s,
            mode: params.mode,
            samples: sequential.map(|test| SamplesUsed::new(certificates, params.n as u64, test.alpha_per_look())),
        }
    }

    /// The final metrics of the `finished` event: `certified_acc@R` for every radius of the curve,
    /// `acr`, `clean_acc`, `images`, `abstained` and `max_radius` (the largest radius these N and
    /// α can certify: certified accuracy beyond it is 0).
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m: BTreeMap<String, f64> = self
            .certified_accuracy
            .iter()
            .map(|point| (format!("certified_acc@{}", point.radius), point.accuracy))
            .collect();
        m.insert("acr".into(), self.acr);
        m.insert("clean_acc".into(), self.clean_acc);
        m.insert("images".into(), self.images as f64);
        m.insert("abstained".into(), self.abstained as f64);
        m.insert("max_radius".into(), self.max_radius);
        if let Some(samples) = &self.samples {
            m.insert("samples_mean".into(), samples.mean);
            m.insert("samples_median".into(), samples.median as f64);
            m.insert("samples_max".into(), samples.max as f64);
        }
        m
    }
}

/// PREDICT's totals (`summary.json` of a predict run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictSummary {
    pub images: usize,
    pub correct: usize,
    pub abstained: usize,
    /// Fraction of images predicted correctly (an abstention counts as wrong).
    pub accuracy: f64,
    pub sigma: f64,
    pub n: usize,
    pub alpha: f64,
    pub batch: usize,
    pub seed: u64,
    pub wall_time_s: f64,
}

impl PredictSummary {
    pub fn new(certificates: &[Certificate], params: &Smoothing, wall_time_s: f64) -> Self {
        let images = certificates.len();
        let correct = certificates.iter().filter(|c| c.correct).count();
        PredictSummary {
            images,
            correct,
            abstained: certificates.iter().filter(|c| c.predict == ABSTAIN).count(),
            accuracy: fraction(correct, images),
            sigma: params.sigma,
            n: params.n,
            alpha: params.alpha,
            batch: params.batch,
            seed: params.seed,
            wall_time_s,
        }
    }

    pub fn metrics(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("accuracy".to_string(), self.accuracy),
            ("images".to_string(), self.images as f64),
            ("abstained".to_string(), self.abstained as f64),
        ])
    }
}

/// 0, 0.25, 0.5, ... while not above `max_radius` (always at least 0).
pub fn radius_grid(max_radius: f64) -> impl Iterator<Item = f64> {
    // The small slack keeps a grid point that max_radius reaches up to rounding.
    let steps = if max_radius > 0.0 { (max_radius / RADIUS_STEP + 1e-9).floor() as usize } else { 0 };
    (0..=steps).map(|j| j as f64 * RADIUS_STEP)
}

fn radius_of(c: &Certificate) -> f64 {
    c.radius.unwrap_or(0.0)
}

fn fraction(count: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    }
}
