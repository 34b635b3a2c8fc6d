//! Sequential certification: the estimation samples of CERTIFY drawn in growing batches, stopping as
//! soon as the answer is settled, with the same 1 - alpha guarantee as fixed-N CERTIFY.
//!
//! The method is Clopper-Pearson at a fixed geometric schedule of looks (100, 200, 400, ... samples,
//! then the cap n) with alpha split equally among the looks (Bonferroni). Whatever the stopping rule,
//! the bound reported at the look where sampling stops is wrong only if the bound at *some* look is
//! wrong, which happens with probability at most K * (alpha / K) = alpha. The schedule depends on n
//! alone, never on the data, so the union bound holds under optional stopping.
//! See docs/certification.md, "Sequential certification".
//!
//! - target radius R: stop at the first look whose lower bound exceeds Phi(R / sigma) (certified at
//!   R) or whose upper bound is below it (not certifiable at R), else at the cap;
//! - adaptive: stop when the radius the cap is expected to certify (the current vote fraction
//!   carried to n samples) exceeds the radius certified now by at most the tolerance, or when the
//!   upper bound is below 1/2 (abstain), else at the cap.

use super::clopper_pearson::{lower_bound, raw_radius, required_probability, upper_bound};
use crate::config::CertifyMode;

/// Samples at the first look.
pub const FIRST_LOOK: u64 = 100;
/// Each look has this many times the samples of the one before (the last is the cap n).
pub const GROWTH: u64 = 2;

/// The sample sizes at which the test looks: 100, 200, 400, ... while below n, then n itself.
pub fn schedule(n: u64) -> Vec<u64> {
    let mut looks = Vec::new();
    let mut m = FIRST_LOOK;
    while m < n {
        looks.push(m);
        m *= GROWTH;
    }
    looks.push(n.max(1));
    looks
}

/// Why sampling stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Target radius: the lower bound exceeds Phi(R / sigma).
    Certified,
    /// Target radius: the upper bound is below Phi(R / sigma).
    NotCertified,
    /// Adaptive: more samples are not expected to raise the radius by more than the tolerance.
    Converged,
    /// Adaptive: the upper bound is below 1/2; the smoothed classifier abstains.
    Abstain,
    /// The cap n was reached undecided.
    Cap,
}

impl Decision {
    pub const ALL: [Decision; 5] =
        [Decision::Certified, Decision::NotCertified, Decision::Converged, Decision::Abstain, Decision::Cap];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Certified => "certified",
            Decision::NotCertified => "not_certified",
            Decision::Converged => "converged",
            Decision::Abstain => "abstain",
            Decision::Cap => "cap",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Decision::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// What the sequential test ends with.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Votes for the top class among the samples drawn.
    pub count_a: u64,
    /// Estimation samples drawn.
    pub samples: u64,
    /// Lower and upper confidence bounds on the top class's probability, each at the per-look level.
    pub p_lower: f64,
    pub p_upper: f64,
    pub decision: Decision,
    /// The certified radius: R when certified at the target radius (0 otherwise); in adaptive mode
    /// sigma * PhiInv(p_lower), 0 below one half.
    pub radius: f64,
}

/// The two sequential goals (a [`CertifyMode`] other than fixed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    TargetRadius { radius: f64 },
    Adaptive { tolerance: f64 },
}

impl Goal {
    /// None for fixed-N CERTIFY.
    pub fn from_mode(mode: &CertifyMode) -> Option<Self> {
        match *mode {
            CertifyMode::Fixed => None,
            CertifyMode::TargetRadius { radius } => Some(Goal::TargetRadius { radius }),
            CertifyMode::Adaptive { tolerance } => Some(Goal::Adaptive { tolerance }),
        }
    }
}

/// One sequential test: a goal, the noise level, the schedule of looks and the level of each look.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialTest {
    goal: Goal,
    sigma: f64,
    looks: Vec<u64>,
    alpha_per_look: f64,
}

impl SequentialTest {
    /// The sound test: alpha split equally among the looks of [`schedule`]`(n)`.
    pub fn new(goal: Goal, sigma: f64, n: u64, alpha: f64) -> Self {
        let looks = schedule(n);
        let alpha_per_look = alpha / looks.len() as f64;
        SequentialTest { goal, sigma, looks, alpha_per_look }
    }

    /// Naive peeking, level alpha at every look. NOT valid: its overall error exceeds alpha. Kept as
    /// the negative control of the soundness tests; nothing else uses it.
    pub fn naive_peeking(goal: Goal, sigma: f64, n: u64, alpha: f64) -> Self {
        SequentialTest { alpha_per_look: alpha, ..SequentialTest::new(goal, sigma, n, alpha) }
    }

    pub fn looks(&self) -> &[u64] {
        &self.looks
    }

    pub fn alpha_per_look(&self) -> f64 {
        self.alpha_per_look
    }

    /// The largest radius the cap can certify (all samples vote for the top class).
    pub fn max_radius(&self) -> f64 {
        let n = *self.looks.last().expect("a schedule has a look");
        raw_radius(self.sigma, lower_bound(n, n, self.alpha_per_look))
    }

    /// Runs the test; `draw(m)` draws m fresh samples and returns how many vote for the top class.
    pub fn run<E>(&self, mut draw: impl FnMut(u64) -> Result<u64, E>) -> Result<Outcome, E> {
        let a = self.alpha_per_look;
        let (mut count_a, mut samples) = (0u64, 0u64);
        for &look in &self.looks {
            count_a += draw(look - samples)?;
            samples = look;
            let (p_lower, p_upper) = (lower_bound(count_a, samples, a), upper_bound(count_a, samples, a));
            let last = look == *self.looks.last().expect("a schedule has a look");
            let decided = match self.goal {
                Goal::TargetRadius { radius } => {
                    let p0 = required_probability(self.sigma, radius);
                    if p_lower > p0 {
                        Some(Decision::Certified)
                    } else if p_upper < p0 {
                        Some(Decision::NotCertified)
                    } else {
                        last.then_some(Decision::Cap)
                    }
                }
                Goal::Adaptive { tolerance } => {
                    if p_upper < 0.5 {
                        Some(Decision::Abstain)
                    } else if last {
                        Some(Decision::Cap)
                    } else {
                        let n = *self.looks.last().expect("a schedule has a look");
                        let expected = (count_a as f64 / samples as f64 * n as f64).round() as u64;
                        let at_cap = self.radius_at(lower_bound(expected.min(n), n, a));
                        (at_cap - self.radius_at(p_lower) <= tolerance).then_some(Decision::Converged)
                    }
                }
            };
            if let Some(decision) = decided {
                let radius = match self.goal {
                    Goal::TargetRadius { radius } => {
                        if decision == Decision::Certified {
                            radius
                        } else {
                            0.0
                        }
                    }
                    Goal::Adaptive { .. } => self.radius_at(p_lower),
                };
                return Ok(Outcome { count_a, samples, p_lower, p_upper, decision, radius });
            }
        }
        unreachable!("the last look always decides")
    }

    /// The radius a lower bound certifies, 0 below one half.
    fn radius_at(&self, p_lower: f64) -> f64 {
        if p_lower < 0.5 {
            0.0
        } else {
            raw_radius(self.sigma, p_lower)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_geometric_and_ends_at_the_cap() {
        assert_eq!(schedule(100_000).len(), 11);
        assert_eq!(schedule(1000), [100, 200, 400, 800, 1000]);
        assert_eq!(schedule(800), [100, 200, 400, 800]);
        assert_eq!(schedule(50), [50]);
        assert_eq!(*schedule(100_000).last().unwrap(), 100_000);
    }

    #[test]
    fn decisions_round_trip() {
        for d in Decision::ALL {
            assert_eq!(Decision::parse(d.as_str()), Some(d));
        }
        assert_eq!(Decision::parse("maybe"), None);
    }

    #[test]
    fn unanimous_votes_certify_a_small_radius_at_the_first_look() {
        let test = SequentialTest::new(Goal::TargetRadius { radius: 0.25 }, 0.25, 100_000, 0.001);
        let out = test.run(Ok::<_, ()>).unwrap();
        assert_eq!((out.samples, out.decision, out.radius), (100, Decision::Certified, 0.25));
        // No votes at all: not certifiable, also at the first look.
        let out = test.run(|_| Ok::<_, ()>(0)).unwrap();
        assert_eq!((out.samples, out.decision, out.radius), (100, Decision::NotCertified, 0.0));
        // A coin in adaptive mode: the cap is not expected to certify anything either, so it stops.
        let adaptive = SequentialTest::new(Goal::Adaptive { tolerance: 0.01 }, 0.25, 1000, 0.001);
        let out = adaptive.run(|m| Ok::<_, ()>(m / 2)).unwrap();
        assert_eq!((out.decision, out.radius), (Decision::Converged, 0.0), "{out:?}");
    }
}
