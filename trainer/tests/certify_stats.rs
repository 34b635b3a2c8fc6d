//! PREDICT's binomial test against exact sums, and the summary's certified-accuracy curve and ACR on
//! certificates built by hand.

use crt_trainer::certify::binom_test::two_sided_p;
use crt_trainer::certify::clopper_pearson::max_radius;
use crt_trainer::certify::summary::radius_grid;
use crt_trainer::certify::{CertifySummary, PredictSummary, Smoothing, ABSTAIN};
use crt_trainer::config::CertifyMode;
use crt_trainer::events::Certificate;
use statrs::function::factorial::ln_binomial;

/// The two-sided p-value summed exactly: P(|X - n/2| >= |k - n/2|) for X ~ Bin(n, 1/2), with
/// binomial coefficients in u128 (n <= 100).
fn exact_p(k: u64, n: u64) -> f64 {
    let mut coef = vec![1u128; (n + 1) as usize];
    for j in 1..=n as usize {
        coef[j] = coef[j - 1] * (n as u128 + 1 - j as u128) / j as u128;
    }
    let far = (2 * k as i64 - n as i64).abs();
    let hits: u128 = (0..=n).filter(|&j| (2 * j as i64 - n as i64).abs() >= far).map(|j| coef[j as usize]).sum();
    (hits as f64 / 2f64.powi(n as i32)).min(1.0)
}

#[test]
fn binomial_test_matches_exact_sums() {
    for n in [1u64, 2, 7, 10, 31, 64, 100] {
        for k in 0..=n {
            let (got, want) = (two_sided_p(k, n), exact_p(k, n));
            assert!((got - want).abs() <= 1e-12 + 1e-9 * want, "k={k} n={n}: {got} vs exact {want}");
        }
    }
    assert_eq!(two_sided_p(50, 100), 1.0);
    assert_eq!(two_sided_p(0, 0), 1.0);
}

#[test]
fn binomial_test_is_accurate_at_large_n() {
    // The lower tail summed term by term in log space (ln C(n, j) from ln-gamma, not the incomplete
    // beta function that the Binomial cdf uses).
    let n = 100_000u64;
    for k in [50_300u64, 50_600, 51_000] {
        let tail = n - k;
        let terms: Vec<f64> = (0..=tail).map(|j| ln_binomial(n, j) - n as f64 * std::f64::consts::LN_2).collect();
        let top = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let want = 2.0 * top.exp() * terms.iter().map(|t| (t - top).exp()).sum::<f64>();
        let got = two_sided_p(k, n);
        assert!((got - want).abs() <= 1e-9 * want, "k={k}: {got} vs {want}");
    }
    // 51,000 of 100,000 is far beyond chance; 50,300 is not (z of about 1.9).
    assert!(two_sided_p(51_000, n) < 1e-9 && two_sided_p(50_300, n) > 0.05);
}

fn cert(idx: u64, label: i64, predict: i64, radius: f64) -> Certificate {
    Certificate {
        idx,
        label,
        predict,
        radius: Some(radius),
        correct: predict == label,
        count_a: Some(0),
        p_lower: Some(0.0),
        time: 0.1,
        ..Certificate::default()
    }
}

#[test]
fn certified_accuracy_curve_and_acr() {
    let params =
        Smoothing { sigma: 0.5, n0: 100, n: 100_000, alpha: 0.001, batch: 1000, seed: 0, mode: CertifyMode::Fixed };
    let certs = [
        cert(0, 3, ABSTAIN, 0.0),
        cert(1, 3, 3, 0.3),
        cert(2, 5, 5, 0.6),
        cert(3, 1, 7, 1.2), // wrong, whatever its radius
        cert(4, 2, 2, 0.25),
    ];
    let s = CertifySummary::new(&certs, &params, 2.0);
    assert_eq!((s.images, s.correct, s.abstained), (5, 3, 1));
    assert_eq!(s.clean_acc, 0.6);
    assert!((s.acr - (0.3 + 0.6 + 0.25) / 5.0).abs() < 1e-15);
    // sigma 0.5 at N = 1e5, alpha = 1e-3: up to 1.906, so radii 0 ... 1.75.
    assert!((s.max_radius - 1.9057282816949572).abs() < 1e-9);
    let curve: Vec<(f64, usize)> = s.certified_accuracy.iter().map(|p| (p.radius, p.count)).collect();
    assert_eq!(curve, [(0.0, 3), (0.25, 3), (0.5, 1), (0.75, 0), (1.0, 0), (1.25, 0), (1.5, 0), (1.75, 0)]);
    assert_eq!(s.certified_accuracy[1].accuracy, 0.6);
    let metrics = s.metrics();
    assert_eq!(metrics["certified_acc@0"], 0.6);
    assert_eq!(metrics["certified_acc@0.5"], 0.2);
    assert_eq!(metrics["certified_acc@1.75"], 0.0);
    assert_eq!((metrics["acr"], metrics["images"], metrics["abstained"]), (s.acr, 5.0, 1.0));

    let p = PredictSummary::new(&certs, &params, 1.0);
    assert_eq!((p.images, p.correct, p.abstained, p.accuracy), (5, 3, 1, 0.6));
}

#[test]
fn no_correct_image_gives_a_positive_zero_acr() {
    let params =
        Smoothing { sigma: 0.5, n0: 100, n: 100_000, alpha: 0.001, batch: 1000, seed: 0, mode: CertifyMode::Fixed };
    let s = CertifySummary::new(&[cert(0, 3, 1, 0.4), cert(1, 2, -1, 0.0)], &params, 1.0);
    assert_eq!(s.correct, 0);
    assert!(s.acr == 0.0 && s.acr.is_sign_positive(), "ACR {:?}", s.acr);
    assert!(s.metrics()["acr"].is_sign_positive());
}

#[test]
fn radius_grid_stops_at_the_certifiable_maximum() {
    assert_eq!(radius_grid(0.0).collect::<Vec<_>>(), [0.0]);
    assert_eq!(radius_grid(0.74).collect::<Vec<_>>(), [0.0, 0.25, 0.5]);
    assert_eq!(radius_grid(0.75).collect::<Vec<_>>(), [0.0, 0.25, 0.5, 0.75]);
    let grid: Vec<f64> = radius_grid(max_radius(0.25, 100_000, 0.001)).collect();
    assert_eq!(grid, [0.0, 0.25, 0.5, 0.75]);
}
