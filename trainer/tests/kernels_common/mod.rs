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

/// max |a - b| <= tol * (1 + max |b|), with the shapes equal.
pub fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = g.iter().zip(&w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= tol * (1.0 + scale), "{what}: max difference {diff} (reference scale {scale})");
}

/// A scalar loss that weights every output value differently, so every gradient entry matters.
pub fn weighted_sum(y: &Tensor, weights: &Tensor) -> Tensor {
    (y * weights).unwrap().sum_all().unwrap()
}
