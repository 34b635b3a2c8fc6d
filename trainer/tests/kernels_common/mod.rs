//! Shared helpers of the kernel tests: seeded tensors and tolerant comparisons.
#![allow(dead_code)] // each test file uses its own subset of the helpers

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Uniform values in [-1, 1) of the given shape, from a seeded generator.
pub fn random(rng: &mut StdRng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
}

pub fn var(rng: &mut StdRng, dims: &[usize]) -> Var {
    Var::from_tensor(&random(rng, dims)).unwrap()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Below this reference scale a tensor counts as zero (f32's smallest normal number): the bound of
/// an all-zero reference is then exact equality up to denormals.
pub const TINY: f32 = f32::MIN_POSITIVE;

/// The relative per-tensor criterion max |a - b| <= rtol * max |b| + TINY, with the shapes equal.
/// Prints the ratio max |a - b| / max |b| (run with --nocapture to choose rtol).
pub fn assert_close(got: &Tensor, want: &Tensor, rtol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = g.iter().zip(&w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("ratio {:e} rtol {rtol:e} {what}", if scale > 0.0 { diff / scale } else { diff });
    assert!(diff <= rtol * scale + TINY, "{what}: max difference {diff} (reference scale {scale}, rtol {rtol})");
}

/// A scalar loss that weights every output value differently, so every gradient entry matters.
pub fn weighted_sum(y: &Tensor, weights: &Tensor) -> Tensor {
    (y * weights).unwrap().sum_all().unwrap()
}
