//! The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), and Cohen et al.'s
//! two Monte Carlo procedures on one image: CERTIFY (prediction plus certified L2 radius) and PREDICT
//! (prediction only, with a hypothesis test instead of a bound).

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::binom_test::two_sided_p;
use super::clopper_pearson::{lower_bound, raw_radius};
use super::sampler::NoiseSampler;
use super::sequential::{Decision, Goal, SequentialTest};
use crate::config::{CertifyMode, SmoothingConfig};
use crate::models::Model;

/// The label reported when the smoothed classifier abstains.
pub const ABSTAIN: i64 = -1;

/// Monte Carlo parameters with the noise level resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Smoothing {
    pub sigma: f64,
    /// Samples that choose the top class (CERTIFY only).
    pub n0: usize,
    /// Samples that estimate its probability.
    pub n: usize,
    /// Significance: each result holds with probability at least 1 - alpha.
    pub alpha: f64,
    /// Noisy copies per forward pass.
    pub batch: usize,
    pub seed: u64,
    /// Fixed-N CERTIFY, or a sequential mode in which `n` is the cap.
    pub mode: CertifyMode,
}

impl Smoothing {
    pub fn from_config(config: &SmoothingConfig, sigma: f64) -> Self {
        Smoothing {
            sigma,
            n0: config.n0,
            n: config.n,
            alpha: config.alpha,
            batch: config.batch,
            seed: config.seed,
            mode: config.mode,
        }
    }

    /// The sequential test of a sequential mode; None for fixed N.
    pub fn sequential(&self) -> Option<SequentialTest> {
        Goal::from_mode(&self.mode).map(|goal| SequentialTest::new(goal, self.sigma, self.n as u64, self.alpha))
    }
}

/// CERTIFY's answer for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Certified {
    /// The top class, or [`ABSTAIN`].
    pub predict: i64,
    /// Certified L2 radius (0 when abstaining).
    pub radius: f64,
    /// Votes for the top class among the n estimation samples.
    pub count_a: u64,
    /// (1 - alpha) lower confidence bound on the top class's probability.
    pub p_lower: f64,
    /// Estimation samples drawn: n, or fewer in a sequential mode.
    pub samples: u64,
    /// Sequential modes: why sampling stopped, and the upper bound on the top class's probability.
    pub decision: Option<Decision>,
    pub p_upper: Option<f64>,
}

/// PREDICT's answer for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    /// The top class, or [`ABSTAIN`].
    pub predict: i64,
    pub count_a: u64,
    pub count_b: u64,
    /// Two-sided binomial test of count_a against count_b at 1/2.
    pub p_value: f64,
}

pub struct SmoothedClassifier<'m> {
    sampler: NoiseSampler<'m>,
    params: Smoothing,
    sequential: Option<SequentialTest>,
}

impl<'m> SmoothedClassifier<'m> {
    pub fn new(model: &'m Model, params: Smoothing) -> Self {
        let sequential = params.sequential();
        SmoothedClassifier { sampler: NoiseSampler::new(model, params.sigma, params.batch), params, sequential }
    }

    pub fn params(&self) -> &Smoothing {
        &self.params
    }

    /// CERTIFY: guess the top class from n0 samples, then bound its probability from n fresh ones
    /// (separate samples, so the selection does not bias the bound).
    pub fn certify(&mut self, idx: u64, image: &[f32]) -> candle_core::Result<Certified> {
        let mut rng = image_rng(self.params.seed, idx);
        let selection = self.sampler.counts(image, self.params.n0, &mut rng)?;
        let top = argmax(&selection);
        if let Some(test) = &self.sequential {
            let sampler = &mut self.sampler;
            let out = test.run(|m| Ok::<_, candle_core::Error>(sampler.counts(image, m as usize, &mut rng)?[top]))?;
            // The bound holds at any stopping time, so it may decide the prediction as in CERTIFY.
            let predict = if out.p_lower < 0.5 { ABSTAIN } else { top as i64 };
            return Ok(Certified {
                predict,
                radius: if predict == ABSTAIN { 0.0 } else { out.radius },
                count_a: out.count_a,
                p_lower: out.p_lower,
                samples: out.samples,
                decision: Some(out.decision),
                p_upper: Some(out.p_upper),
            });
        }
        let n = self.params.n as u64;
        let estimation = self.sampler.counts(image, self.params.n, &mut rng)?;
        let count_a = estimation[top];
        let p_lower = lower_bound(count_a, n, self.params.alpha);
        let (predict, radius) =
            if p_lower < 0.5 { (ABSTAIN, 0.0) } else { (top as i64, raw_radius(self.params.sigma, p_lower)) };
        Ok(Certified { predict, radius, count_a, p_lower, samples: n, decision: None, p_upper: None })
    }

    /// PREDICT: the top class of n samples, unless a two-sided binomial test cannot tell it from
    /// the runner-up at level alpha.
    pub fn predict(&mut self, idx: u64, image: &[f32]) -> candle_core::Result<Predicted> {
        let mut rng = image_rng(self.params.seed, idx);
        let counts = self.sampler.counts(image, self.params.n, &mut rng)?;
        let (top, runner_up) = top_two(&counts);
        let (count_a, count_b) = (counts[top], counts[runner_up]);
        let p_value = two_sided_p(count_a, count_a + count_b);
        let predict = if p_value > self.params.alpha { ABSTAIN } else { top as i64 };
        Ok(Predicted { predict, count_a, count_b, p_value })
    }
}

/// Each image draws its noise from its own generator, keyed by (seed, image index): a result does
/// not depend on which other images were evaluated (--skip, --max) or in what order.
pub fn image_rng(seed: u64, idx: u64) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&idx.to_le_bytes());
    key[16..].copy_from_slice(b"crt-lab/certify\0");
    StdRng::from_seed(key)
}

/// Index of the largest count; ties go to the lowest class, as numpy's argmax does.
fn argmax(counts: &[u64]) -> usize {
    top_two(counts).0
}

/// Indices of the largest and second-largest counts (lowest class first among ties).
fn top_two(counts: &[u64]) -> (usize, usize) {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    // A stable sort by descending count keeps ties in class order.
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]));
    (order[0], order.get(1).copied().unwrap_or(order[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_two_breaks_ties_by_class() {
        assert_eq!(top_two(&[3, 7, 7, 1]), (1, 2));
        assert_eq!(top_two(&[0, 0, 5]), (2, 0));
        assert_eq!(argmax(&[4, 9, 9]), 1);
    }

    #[test]
    fn image_rngs_differ_by_seed_and_index() {
        use rand::RngCore;
        let draw = |s, i| image_rng(s, i).next_u64();
        assert_eq!(draw(1, 2), draw(1, 2));
        assert_ne!(draw(1, 2), draw(1, 3));
        assert_ne!(draw(1, 2), draw(2, 2));
    }
}
