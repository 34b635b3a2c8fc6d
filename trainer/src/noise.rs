//! Seeded Gaussian noise (candle's CPU device cannot be seeded, so noise comes from a Rust RNG).

use candle_core::{Device, Result, Shape, Tensor};
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

/// sigma * z with z standard normal, as an f32 tensor of the given shape.
pub fn gaussian(rng: &mut StdRng, shape: impl Into<Shape>, sigma: f64, device: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let sigma = sigma as f32;
    let data: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            z * sigma
        })
        .collect();
    Tensor::from_vec(data, shape, device)
}
