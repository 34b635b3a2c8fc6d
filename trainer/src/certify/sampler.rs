//! Monte Carlo votes of the base classifier under Gaussian noise: `num` noisy copies of one image,
//! `batch` at a time, each classified by argmax; the result is a count per class.
//!
//! This is the expensive part of certification (N = 100,000 forward passes per image), so the
//! buffers live as long as the sampler and the noise is drawn on all cores. The draw is still
//! reproducible, and independent of the thread count and of the batch size: copies come in chunks
//! of 16, each with its own generator seeded in order from the image's generator, and a batch holds
//! whole chunks (it is rounded up to a multiple of 16), so the k-th copy always gets the same noise.

use candle_core::{Device, Tensor, D};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::models::Model;

/// Noisy copies that share one generator; small enough to spread a batch over the cores.
const COPIES_PER_CHUNK: usize = 16;

pub struct NoiseSampler<'m> {
    model: &'m Model,
    sigma: f32,
    batch: usize,
    shape: (usize, usize, usize),
    /// Pixels of the noisy batch, reused from batch to batch.
    pixels: Vec<f32>,
    /// One generator per chunk of the current batch.
    chunk_rngs: Vec<StdRng>,
}

impl<'m> NoiseSampler<'m> {
    pub fn new(model: &'m Model, sigma: f64, batch: usize) -> Self {
        let shape = model.dataset.image_shape();
        let batch = batch.max(1).next_multiple_of(COPIES_PER_CHUNK);
        NoiseSampler {
            model,
            sigma: sigma as f32,
            batch,
            shape,
            pixels: vec![0.0; batch * shape.0 * shape.1 * shape.2],
            chunk_rngs: Vec::with_capacity(batch.div_ceil(COPIES_PER_CHUNK)),
        }
    }

    /// Pixels in one image (C x H x W).
    pub fn image_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    /// How many of `num` noisy copies of `image` the model assigns to each class.
    pub fn counts(&mut self, image: &[f32], num: usize, rng: &mut StdRng) -> candle_core::Result<Vec<u64>> {
        if image.len() != self.image_len() {
            candle_core::bail!("image has {} values, the model expects {}", image.len(), self.image_len());
        }
        let mut counts = vec![0u64; self.model.dataset.classes()];
        let mut remaining = num;
        while remaining > 0 {
            let b = remaining.min(self.batch);
            for class in self.classify_noisy(image, b, rng)? {
                counts[class as usize] += 1;
            }
            remaining -= b;
        }
        Ok(counts)
    }

    /// The predicted class of each of `b` fresh noisy copies.
    fn classify_noisy(&mut self, image: &[f32], b: usize, rng: &mut StdRng) -> candle_core::Result<Vec<u32>> {
        self.add_noise(image, b, rng);
        let (c, h, w) = self.shape;
        let device: &Device = self.model.device();
        let x = Tensor::from_slice(&self.pixels[..b * image.len()], (b, c, h, w), device)?;
        self.model.forward_t(&x, false)?.argmax(D::Minus1)?.to_vec1::<u32>()
    }

    /// Fills the first `b` copies of the pixel buffer with image + sigma * z.
    fn add_noise(&mut self, image: &[f32], b: usize, rng: &mut StdRng) {
        let d = image.len();
        let chunks = b.div_ceil(COPIES_PER_CHUNK);
        self.chunk_rngs.clear();
        self.chunk_rngs.extend((0..chunks).map(|_| StdRng::from_rng(&mut *rng)));
        let sigma = self.sigma;
        self.pixels[..b * d].par_chunks_mut(COPIES_PER_CHUNK * d).zip(self.chunk_rngs.par_iter_mut()).for_each(
            |(chunk, chunk_rng)| {
                for copy in chunk.chunks_exact_mut(d) {
                    for (out, &x) in copy.iter_mut().zip(image) {
                        let z: f32 = StandardNormal.sample(chunk_rng);
                        *out = x + sigma * z;
                    }
                }
            },
        );
    }
}
