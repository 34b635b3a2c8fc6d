//! The Clopper-Pearson bound and certified radius against scipy's values (tests/data/certify_counts.json,
//! copied from the reference fixtures), including n = 1e6 and 1e7 where incomplete-beta code loses accuracy.

use crt_trainer::certify::clopper_pearson::{lower_bound, max_radius, raw_radius};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    sigmas: Vec<f64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    k: u64,
    n: u64,
    alpha: f64,
    p_lower: f64,
    abstain: bool,
    radius_raw: Vec<Option<f64>>,
    radius: Vec<f64>,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/certify_counts.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read fixture")).expect("parse fixture")
}

/// The README's tolerances: p_lower within 1e-9 + 1e-7 p_lower, radii within 1e-5 max(1, |r|).
fn p_close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 + 1e-7 * want.abs()
}

fn r_close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-5 * want.abs().max(1.0)
}

#[test]
fn lower_bound_and_radius_match_scipy_for_every_case() {
    let fx = fixture();
    assert!(fx.cases.len() >= 26, "fixture has {} cases", fx.cases.len());
    assert!(fx.cases.iter().any(|c| c.n >= 10_000_000), "fixture lacks the n = 1e7 case");
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    for c in &fx.cases {
        let p = lower_bound(c.k, c.n, c.alpha);
        let tag = format!("k={} n={} alpha={}", c.k, c.n, c.alpha);
        worst = worst.max((p - c.p_lower).abs() / (1e-9 + 1e-7 * c.p_lower));
        if !p_close(p, c.p_lower) {
            failures.push(format!("{tag}: p_lower {p:e} vs scipy {:e} (diff {:e})", c.p_lower, (p - c.p_lower).abs()));
        }
        if (p < 0.5) != c.abstain {
            failures.push(format!("{tag}: abstain {} vs scipy {}", p < 0.5, c.abstain));
        }
        for (j, &sigma) in fx.sigmas.iter().enumerate() {
            let raw = raw_radius(sigma, p);
            match c.radius_raw[j] {
                Some(want) if !r_close(raw, want) => {
                    failures.push(format!("{tag} sigma={sigma}: raw radius {raw} vs {want}"))
                }
                None if raw != f64::NEG_INFINITY => {
                    failures.push(format!("{tag} sigma={sigma}: raw radius {raw}, want -inf"))
                }
                _ => {}
            }
            let radius = if p < 0.5 { 0.0 } else { raw };
            if !r_close(radius, c.radius[j]) {
                failures.push(format!("{tag} sigma={sigma}: radius {radius} vs {}", c.radius[j]));
            }
        }
    }
    eprintln!("largest p_lower error: {worst:.3e} of the tolerance");
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn max_radius_is_the_all_votes_radius() {
    let fx = fixture();
    let all = fx.cases.iter().find(|c| c.k == c.n && c.n == 100_000 && c.alpha == 0.001).expect("k = n case");
    for (j, &sigma) in fx.sigmas.iter().enumerate() {
        assert!(r_close(max_radius(sigma, 100_000, 0.001), all.radius[j]));
    }
}

#[test]
fn bound_grows_with_the_count_and_with_alpha() {
    // Monotone in k (more votes, higher bound) and in alpha (less confidence, higher bound).
    let n = 1_000_000;
    let mut last = -1.0;
    for k in [0, 1, 10, 1000, 500_000, 999_000, 999_999, 1_000_000] {
        let p = lower_bound(k, n, 0.001);
        assert!(p > last && (0.0..1.0).contains(&p), "k={k}: {p} after {last}");
        assert!(p <= k as f64 / n as f64, "k={k}: the lower bound {p} exceeds the estimate");
        last = p;
    }
    assert!(lower_bound(900, 1000, 0.01) > lower_bound(900, 1000, 0.001));
}
