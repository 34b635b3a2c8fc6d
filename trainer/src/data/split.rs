//! One split of a dataset held in memory: images as f32 in [0, 1], N x C x H x W, and their labels.

use candle_core::{Device, Tensor};

use super::DataError;

#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    images: Vec<f32>,
    labels: Vec<u8>,
    shape: (usize, usize, usize),
}

impl Split {
    /// Builds a split; `images` must hold `labels.len()` images of `shape` = (channels, height, width).
    pub fn new(images: Vec<f32>, labels: Vec<u8>, shape: (usize, usize, usize)) -> Result<Self, DataError> {
        let (c, h, w) = shape;
        let per_image = c * h * w;
        if per_image == 0 || images.len() != labels.len() * per_image {
            return Err(DataError::Split(format!(
                "{} pixel values for {} labels of shape {c}x{h}x{w}: expected {}",
                images.len(),
                labels.len(),
                labels.len() * per_image
            )));
        }
        Ok(Split { images, labels, shape })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// (channels, height, width) of every image.
    pub fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// Number of f32 values in one image.
    pub fn image_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    /// All pixels, image after image, each C x H x W.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The pixels of image `i` (C x H x W). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// The first `n` items (all of them if there are fewer), for quick runs.
    pub fn subset(mut self, n: usize) -> Split {
        let n = n.min(self.len());
        self.images.truncate(n * self.image_len());
        self.labels.truncate(n);
        self
    }

    /// Images [k, C, H, W] (f32) and labels [k] (u32) of the items at `indices`, on `device`.
    pub fn gather(&self, indices: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        self.to_tensors(pixels, indices, device)
    }

    /// Wraps already gathered pixels of the items at `indices` into tensors.
    pub(super) fn to_tensors(
        &self,
        pixels: Vec<f32>,
        indices: &[usize],
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (c, h, w) = self.shape;
        let images = Tensor::from_vec(pixels, (indices.len(), c, h, w), device)?;
        let labels: Vec<u32> = indices.iter().map(|&i| u32::from(self.labels[i])).collect();
        let labels = Tensor::from_vec(labels, indices.len(), device)?;
        Ok((images, labels))
    }
}
