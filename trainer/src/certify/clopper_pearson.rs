//! The one-sided Clopper-Pearson lower confidence bound on a binomial proportion, and the certified
//! L2 radius it gives a Gaussian-smoothed classifier (Cohen et al. 2019, Theorem 1).

use statrs::distribution::{Beta, ContinuousCDF, Normal};

/// The (1 - alpha) lower confidence bound on p from `k` successes in `n` trials:
/// the alpha quantile of Beta(k, n - k + 1), with the closed forms at the two ends.
///
/// Panics if `k > n`, `n == 0` or alpha is outside (0, 1): callers validate their configuration first.
pub fn lower_bound(k: u64, n: u64, alpha: f64) -> f64 {
    assert!(n > 0 && k <= n, "lower_bound: need 0 <= k <= n and n > 0 (k = {k}, n = {n})");
    assert!(alpha > 0.0 && alpha < 1.0, "lower_bound: alpha must be in (0, 1) (got {alpha})");
    if k == 0 {
        return 0.0;
    }
    if k == n {
        // Beta(n, 1) has cdf p^n; computed through logs so that n = 1e7 keeps its digits.
        return (alpha.ln() / n as f64).exp();
    }
    let beta = Beta::new(k as f64, (n - k + 1) as f64).expect("shape parameters are positive");
    beta.inverse_cdf(alpha)
}

/// The (1 - alpha) upper confidence bound on p from `k` successes in `n` trials: one minus the lower
/// bound on the failure probability (the 1 - alpha quantile of Beta(k + 1, n - k)); 1 when k = n.
pub fn upper_bound(k: u64, n: u64, alpha: f64) -> f64 {
    assert!(n > 0 && k <= n, "upper_bound: need 0 <= k <= n and n > 0 (k = {k}, n = {n})");
    1.0 - lower_bound(n - k, n, alpha)
}

/// sigma * PhiInv(p_lower): the radius certified at this bound, before abstention. Minus infinity
/// for p_lower = 0 and negative below one half.
pub fn raw_radius(sigma: f64, p_lower: f64) -> f64 {
    sigma * std_normal().inverse_cdf(p_lower)
}

/// The largest radius N samples can certify at significance alpha: the radius when all of them
/// vote for the top class.
pub fn max_radius(sigma: f64, n: u64, alpha: f64) -> f64 {
    raw_radius(sigma, lower_bound(n, n, alpha))
}

/// Phi(radius / sigma): the top-class probability a smoothed classifier needs for a certified radius.
pub fn required_probability(sigma: f64, radius: f64) -> f64 {
    std_normal().cdf(radius / sigma)
}

fn std_normal() -> Normal {
    Normal::standard()
}
