//! Mini-batches as candle tensors: images [B, C, H, W] f32 in [0, 1] and labels [B] u32. Shuffled
//! iteration takes its order and augmentation draws from the RNG the caller passes, so the same
//! seed and epoch give the same batches. The last batch may be smaller than the batch size.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{Augmentation, Split};

/// One mini-batch and the split indices of its items.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

/// The RNG of one epoch of a seeded run: each (seed, epoch) pair gives its own stream.
pub fn epoch_rng(seed: u64, epoch: u64) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(b"crt-data");
    StdRng::from_seed(key)
}

pub struct Batches<'a> {
    split: &'a Split,
    order: Vec<usize>,
    next: usize,
    batch_size: usize,
    augment: Option<(Augmentation, StdRng)>,
    device: Device,
}

impl Split {
    /// Batches in the split's order, without augmentation (evaluation, certification).
    pub fn batches(&self, batch_size: usize, device: &Device) -> Batches<'_> {
        Batches::new(self, (0..self.len()).collect(), batch_size, None, device)
    }

    /// Batches in an order shuffled with `rng`, each image augmented if `augment` is given; the
    /// augmentation draws from a stream seeded by `rng` too. Use [`epoch_rng`] for a per-epoch RNG.
    pub fn shuffled_batches<R: Rng + ?Sized>(
        &self,
        batch_size: usize,
        rng: &mut R,
        augment: Option<Augmentation>,
        device: &Device,
    ) -> Batches<'_> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(rng);
        let augment = augment.map(|a| (a, StdRng::from_seed(rng.random())));
        Batches::new(self, order, batch_size, augment, device)
    }
}

impl<'a> Batches<'a> {
    fn new(
        split: &'a Split,
        order: Vec<usize>,
        batch_size: usize,
        augment: Option<(Augmentation, StdRng)>,
        device: &Device,
    ) -> Self {
        assert!(batch_size > 0, "batch size must be at least 1");
        Batches { split, order, next: 0, batch_size, augment, device: device.clone() }
    }

    /// The order in which items come out (split indices).
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Batches in one pass, the smaller last one included.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    fn make_batch(&mut self, indices: Vec<usize>) -> candle_core::Result<Batch> {
        let (images, labels) = match &mut self.augment {
            None => self.split.gather(&indices, &self.device)?,
            Some((augmentation, rng)) => {
                let n = self.split.image_len();
                let mut pixels = vec![0f32; indices.len() * n];
                for (dst, &i) in pixels.chunks_exact_mut(n).zip(&indices) {
                    augmentation.apply(self.split.image(i), self.split.shape(), rng, dst);
                }
                self.split.to_tensors(pixels, &indices, &self.device)?
            }
        };
        Ok(Batch { images, labels, indices })
    }
}

impl Iterator for Batches<'_> {
    type Item = candle_core::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.order.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.order.len());
        let indices = self.order[self.next..end].to_vec();
        self.next = end;
        Some(self.make_batch(indices))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}
