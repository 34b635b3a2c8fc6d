//! The two-sided binomial test at p = 1/2 that PREDICT uses to decide whether the top class beat the
//! runner-up by more than chance (Cohen et al. 2019, Algorithm PREDICT).

use statrs::distribution::{Binomial, DiscreteCDF};

/// The two-sided p-value of `k` successes in `n` fair trials: the probability of an outcome at
/// least as far from n/2 as k. The distribution is symmetric, so this is 2 P(X <= min(k, n-k)),
/// capped at 1 (which it reaches when k = n/2). For n = 0 there is no evidence: p = 1.
pub fn two_sided_p(k: u64, n: u64) -> f64 {
    assert!(k <= n, "two_sided_p: k = {k} exceeds n = {n}");
    if n == 0 {
        return 1.0;
    }
    let tail = k.min(n - k);
    let fair = Binomial::new(0.5, n).expect("p = 0.5 is a valid probability");
    (2.0 * fair.cdf(tail)).min(1.0)
}
