//! CERTIFY and PREDICT on a linear classifier whose smoothed version is known exactly.
//!
//! The model is a `linear` MNIST-shaped network built by hand: classes 2-9 have a bias of -1e4 and
//! never win, and logit_1 - logit_0 = w.x + b. Under Gaussian noise of level sigma the smoothed
//! classifier predicts the side of the hyperplane x lies on, with top-class probability
//! p_A = Phi(d / sigma), d = |w.x + b| / ||w|| the L2 distance to the boundary, and its true
//! certified radius is exactly d. CERTIFY's radius is a (1 - alpha) lower bound on it: never above
//! d, and at N = 100,000 within a few percent of it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use crt_trainer::certify::clopper_pearson::{lower_bound, raw_radius};
use crt_trainer::certify::{
    certify_images, predict_images, CertifySummary, LabeledImage, Sink, Smoothing, ABSTAIN, SUMMARY_FILE,
};
use crt_trainer::config::{Arch, CertifyMode, Dataset};
use crt_trainer::models::Model;
use crt_trainer::report::Reporter;
use crt_trainer::stop::StopFlag;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use statrs::distribution::{Continuous, ContinuousCDF, Normal};

const SIGMA: f64 = 0.25;
const PIXELS: usize = 28 * 28;

/// The hyperplane w.x + b = 0 between classes 1 (positive side) and 0.
struct Hyperplane {
    w: Vec<f64>,
    b: f64,
}

impl Hyperplane {
    /// A dense direction of norm 3 (so that d really needs the division by ||w||) through a grey image.
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(42);
        let raw: Vec<f64> = (0..PIXELS).map(|_| StandardNormal.sample(&mut rng)).collect();
        let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
        let w: Vec<f64> = raw.iter().map(|v| 3.0 * v / norm).collect();
        let b = -w.iter().zip(grey()).map(|(w, x)| w * x).sum::<f64>();
        Hyperplane { w, b }
    }

    fn norm(&self) -> f64 {
        self.w.iter().map(|v| v * v).sum::<f64>().sqrt()
    }

    /// The image at signed distance `signed_d` from the boundary, along the normal from the grey image.
    fn image_at(&self, signed_d: f64) -> Vec<f32> {
        let n = self.norm();
        grey().iter().zip(&self.w).map(|(x, w)| (x + signed_d * w / n) as f32).collect()
    }

    /// Exact distance of the stored (f32) image to the boundary.
    fn distance(&self, x: &[f32]) -> f64 {
        let margin: f64 = self.w.iter().zip(x).map(|(w, &x)| w * f64::from(x)).sum::<f64>() + self.b;
        margin.abs() / self.norm()
    }

    /// Writes fc.weight [10, 784] and fc.bias [10] and loads them as a `linear` MNIST model.
    fn model(&self, dir: &Path) -> Model {
        let mut weight = vec![0f32; 10 * PIXELS];
        for (i, w) in self.w.iter().enumerate() {
            weight[PIXELS + i] = *w as f32;
        }
        let mut bias = vec![-1e4f32; 10];
        bias[0] = 0.0;
        bias[1] = self.b as f32;
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            ("fc.weight".to_string(), Tensor::from_vec(weight, (10, PIXELS), &dev).unwrap()),
            ("fc.bias".to_string(), Tensor::from_vec(bias, 10, &dev).unwrap()),
        ]);
        let path = dir.join("linear.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        Model::load_weights(Arch::Linear, Dataset::Mnist, &path, &dev).unwrap()
    }
}

/// A smooth grey image in [0.2, 0.8].
fn grey() -> Vec<f64> {
    (0..PIXELS).map(|i| 0.5 + 0.3 * (i as f64 * 0.37).sin()).collect()
}

/// Images on alternating sides at 0.5 sigma ... 3 sigma, and one on the boundary (the last).
fn test_images(plane: &Hyperplane) -> Vec<(Vec<f32>, i64)> {
    let mut images: Vec<(Vec<f32>, i64)> = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let side = if i % 2 == 0 { 1.0 } else { -1.0 };
            (plane.image_at(side * m * SIGMA), if side > 0.0 { 1 } else { 0 })
        })
        .collect();
    images.push((plane.image_at(0.0), 1));
    images
}

fn labeled(images: &[(Vec<f32>, i64)]) -> Vec<LabeledImage<'_>> {
    images.iter().enumerate().map(|(i, (x, y))| LabeledImage { idx: i as u64, label: *y, pixels: x }).collect()
}

fn params(n: usize, seed: u64) -> Smoothing {
    Smoothing { sigma: SIGMA, n0: 100, n, alpha: 0.001, batch: 1000, seed, mode: CertifyMode::Fixed }
}

#[test]
fn certified_radius_is_a_tight_lower_bound_on_the_true_distance() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Hyperplane::new();
    let model = plane.model(dir.path());
    let images = test_images(&plane);
    let (reporter, stop) = (Reporter::quiet(), StopFlag::default());
    let sink = Sink { out_dir: dir.path(), reporter: &reporter, stop: &stop, resume: false };
    let p = params(100_000, 7);
    let started = std::time::Instant::now();
    let run = certify_images(&model, &labeled(&images), &p, sink).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(run.certificates.len(), images.len());

    let normal = Normal::standard();
    let n = p.n as f64;
    let mut gaps = Vec::new();
    for (cert, (x, label)) in run.certificates.iter().zip(&images) {
        let d = plane.distance(x);
        let radius = cert.radius.unwrap();
        let count_a = cert.count_a.unwrap();
        assert_eq!(cert.p_lower.unwrap(), lower_bound(count_a, p.n as u64, p.alpha), "image {}", cert.idx);
        if d < 1e-3 {
            // On the boundary both classes are equally likely: CERTIFY must abstain.
            assert_eq!((cert.predict, radius, cert.correct), (ABSTAIN, 0.0, false), "boundary image: {cert:?}");
            continue;
        }
        assert_eq!(cert.predict, *label, "image {} at d = {d}", cert.idx);
        assert!(cert.correct);
        assert!(radius <= d, "image {}: certified radius {radius} exceeds the true distance {d}", cert.idx);
        // The vote count is Binomial(n, Phi(d / sigma)): within 5 standard deviations.
        let p_a = normal.cdf(d / SIGMA);
        let sd = (n * p_a * (1.0 - p_a)).sqrt();
        assert!(
            (count_a as f64 - n * p_a).abs() <= 5.0 * sd,
            "image {}: count {count_a}, expected {}",
            cert.idx,
            n * p_a
        );
        // And the radius is close to the one the expected count certifies.
        let expected = raw_radius(SIGMA, lower_bound((n * p_a).round() as u64, p.n as u64, p.alpha));
        let radius_sd = SIGMA * (p_a * (1.0 - p_a) / n).sqrt() / normal.pdf(normal.inverse_cdf(p_a));
        assert!(
            (radius - expected).abs() <= 5.0 * radius_sd,
            "image {}: radius {radius}, expected about {expected}",
            cert.idx
        );
        gaps.push((d - radius) / d);
    }
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len() as f64;
    eprintln!(
        "{} images x {} samples in {elapsed:.2} s; relative gaps {:?}; mean {mean_gap:.4}",
        images.len(),
        p.n0 + p.n,
        gaps.iter().map(|g| (g * 1e4).round() / 1e4).collect::<Vec<_>>()
    );
    assert_eq!(gaps.len(), images.len() - 1);
    assert!(mean_gap < 0.05, "mean relative gap {mean_gap} to the true radius");

    // The summary agrees with the certificates.
    let summary: CertifySummary =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(SUMMARY_FILE)).unwrap()).unwrap();
    let in_memory = run.summary.as_ref().unwrap();
    assert!((summary.max_radius - in_memory.max_radius).abs() < 1e-12);
    assert_eq!(summary.certified_accuracy.len(), in_memory.certified_accuracy.len());
    // sigma = 0.25, n = 1e5, alpha = 1e-3: radii up to 0.95 are certifiable, so 0, 0.25, 0.5, 0.75.
    let radii: Vec<f64> = summary.certified_accuracy.iter().map(|r| r.radius).collect();
    assert_eq!(radii, [0.0, 0.25, 0.5, 0.75]);
    for (point, r) in summary.certified_accuracy.iter().zip(&radii) {
        let count = run.certificates.iter().filter(|c| c.correct && c.radius.unwrap() >= *r).count();
        assert_eq!(point.count, count, "radius {r}");
    }
    assert_eq!((summary.images, summary.correct, summary.abstained), (9, 8, 1));
    let acr: f64 = run.certificates.iter().filter(|c| c.correct).map(|c| c.radius.unwrap()).sum::<f64>() / 9.0;
    assert!((summary.acr - acr).abs() < 1e-12);
    let tsv = std::fs::read_to_string(dir.path().join("certify.tsv")).unwrap();
    assert_eq!(tsv.lines().count(), 1 + images.len());
}

#[test]
fn same_seed_same_votes_other_seed_other_votes() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Hyperplane::new();
    let model = plane.model(dir.path());
    let images = test_images(&plane);
    let images = &labeled(&images)[..3];
    let (reporter, stop) = (Reporter::quiet(), StopFlag::default());
    let counts = |seed: u64, batch: usize, out: &str| {
        let out = dir.path().join(out);
        let sink = Sink { out_dir: &out, reporter: &reporter, stop: &stop, resume: false };
        let p = Smoothing { batch, ..params(2000, seed) };
        let run = certify_images(&model, images, &p, sink).unwrap();
        run.certificates.iter().map(|c| c.count_a.unwrap()).collect::<Vec<_>>()
    };
    let first = counts(1, 1000, "a");
    assert_eq!(first, counts(1, 1000, "b"));
    assert_ne!(first, counts(2, 1000, "c"));
    // Batches of a multiple of the noise chunk draw the same noise as larger ones.
    assert_eq!(first, counts(1, 400, "d"));
}

#[test]
fn predict_answers_far_images_and_abstains_on_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Hyperplane::new();
    let model = plane.model(dir.path());
    let images = test_images(&plane);
    let (reporter, stop) = (Reporter::quiet(), StopFlag::default());
    let sink = Sink { out_dir: dir.path(), reporter: &reporter, stop: &stop, resume: false };
    let run = predict_images(&model, &labeled(&images), &params(10_000, 3), sink).unwrap();
    let predicted: Vec<i64> = run.certificates.iter().map(|c| c.predict).collect();
    let mut expected: Vec<i64> = images.iter().map(|(_, y)| *y).collect();
    *expected.last_mut().unwrap() = ABSTAIN;
    assert_eq!(predicted, expected);
    let summary = run.summary.unwrap();
    assert_eq!((summary.images, summary.correct, summary.abstained), (9, 8, 1));
    let tsv = std::fs::read_to_string(dir.path().join("predict.tsv")).unwrap();
    assert_eq!(tsv.lines().next(), Some("idx\tlabel\tpredict\tcorrect\ttime"));
    assert_eq!(tsv.lines().count(), 10);
}

#[test]
fn a_raised_stop_flag_ends_the_run_before_the_next_image() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Hyperplane::new();
    let model = plane.model(dir.path());
    let images = test_images(&plane);
    let (reporter, stop) = (Reporter::quiet(), StopFlag::default());
    stop.raise();
    let sink = Sink { out_dir: dir.path(), reporter: &reporter, stop: &stop, resume: false };
    let run = certify_images(&model, &labeled(&images), &params(1000, 0), sink).unwrap();
    assert!(run.certificates.is_empty() && run.summary.is_none());
    assert!(!dir.path().join(SUMMARY_FILE).exists(), "a stopped run must not write a summary");
    let tsv = std::fs::read_to_string(dir.path().join("certify.tsv")).unwrap();
    assert_eq!(tsv.lines().collect::<Vec<_>>(), ["idx\tlabel\tpredict\tradius\tcorrect\tcount_a\tp_lower\ttime"]);
}

#[test]
fn sequential_modes_through_the_real_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Hyperplane::new();
    let model = plane.model(dir.path());
    let images = test_images(&plane);
    let (reporter, stop) = (Reporter::quiet(), StopFlag::default());
    let radius = 0.4;

    // Target radius 0.4 (p_A needed: Phi(1.6) = 0.945): the images at 0.5, 0.625 and 0.75 certify,
    // those at 0.375 and below never do.
    let out = dir.path().join("target");
    let sink = Sink { out_dir: &out, reporter: &reporter, stop: &stop, resume: false };
    let p = Smoothing { mode: CertifyMode::TargetRadius { radius }, ..params(100_000, 11) };
    let looks = p.sequential().unwrap().looks().to_vec();
    let run = certify_images(&model, &labeled(&images), &p, sink).unwrap();
    let mut certified = 0;
    for (cert, (x, label)) in run.certificates.iter().zip(&images) {
        let d = plane.distance(x);
        let samples = cert.samples.unwrap();
        assert!(looks.contains(&samples), "image {}: {samples} samples is not a look", cert.idx);
        let decision = cert.decision.as_deref().unwrap();
        let (p_lower, p_upper) = (cert.p_lower.unwrap(), cert.p_upper.unwrap());
        assert!(p_lower <= cert.count_a.unwrap() as f64 / samples as f64 && p_upper >= p_lower);
        if d >= 0.45 {
            assert_eq!((decision, cert.radius, cert.predict), ("certified", Some(radius), *label), "d = {d}");
            assert!(samples <= 1600, "d = {d}: {samples} samples");
            certified += 1;
        } else {
            assert_eq!(cert.radius, Some(0.0), "d = {d}: certified at {radius}: {cert:?}");
            assert_ne!(decision, "certified");
        }
        if d < 0.2 {
            assert!(samples < 100_000, "d = {d}: far below R should be settled early, took {samples}");
        }
    }
    assert_eq!(certified, 3);
    let tsv = std::fs::read_to_string(out.join("certify.tsv")).unwrap();
    assert!(
        tsv.starts_with("idx\tlabel\tpredict\tradius\tcorrect\tcount_a\tp_lower\ttime\tsamples\tdecision\tp_upper\n")
    );
    let summary: CertifySummary =
        serde_json::from_str(&std::fs::read_to_string(out.join(SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(summary.certified_accuracy.len(), 1, "a target-radius curve is one point");
    assert_eq!((summary.certified_accuracy[0].radius, summary.certified_accuracy[0].count), (radius, 3));
    let used = summary.samples.as_ref().unwrap();
    let mean = run.certificates.iter().map(|c| c.samples.unwrap() as f64).sum::<f64>() / images.len() as f64;
    assert!((used.mean - mean).abs() < 1e-9 && used.cap == 100_000);
    assert_eq!(used.decisions.get("certified"), Some(&3));
    assert!(used.mean < 50_000.0, "mean samples {}", used.mean);
    eprintln!(
        "target radius {radius}: samples {:?}",
        run.certificates.iter().map(|c| c.samples.unwrap()).collect::<Vec<_>>()
    );

    // A resumed sequential run reads its own table back.
    let sink = Sink { out_dir: &out, reporter: &reporter, stop: &stop, resume: true };
    let again = certify_images(&model, &labeled(&images), &p, sink).unwrap();
    let untimed = |certs: &[crt_trainer::events::Certificate]| {
        certs.iter().map(|c| crt_trainer::events::Certificate { time: 0.0, ..c.clone() }).collect::<Vec<_>>()
    };
    assert_eq!(untimed(&again.certificates), untimed(&run.certificates));

    // Adaptive N: the radius stays below the true distance, and is close to it.
    let out = dir.path().join("adaptive");
    let sink = Sink { out_dir: &out, reporter: &reporter, stop: &stop, resume: false };
    let p = Smoothing { mode: CertifyMode::Adaptive { tolerance: 0.01 }, ..params(100_000, 12) };
    let run = certify_images(&model, &labeled(&images), &p, sink).unwrap();
    for (cert, (x, _)) in run.certificates.iter().zip(&images) {
        let d = plane.distance(x);
        let r = cert.radius.unwrap();
        assert!(r <= d, "image {}: adaptive radius {r} above the true distance {d}", cert.idx);
        if d > 1e-3 {
            assert!(r >= 0.85 * d, "image {}: adaptive radius {r} far below {d}", cert.idx);
        }
    }
    let summary = run.summary.unwrap();
    assert!(summary.samples.as_ref().unwrap().mean < 100_000.0);
    eprintln!(
        "adaptive: radii {:?}, samples {:?}",
        run.certificates.iter().map(|c| c.radius.unwrap()).collect::<Vec<_>>(),
        run.certificates.iter().map(|c| c.samples.unwrap()).collect::<Vec<_>>()
    );
}
