//! The standard CIFAR training augmentation: a random 32x32 crop of the image padded with 4 zero
//! pixels on each side, then a horizontal flip with probability 1/2. Every random draw comes from
//! the RNG the caller passes, so a seeded run is reproducible.

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augmentation {
    /// Zero padding on each side before cropping back to the original size (0: no crop).
    pub pad: usize,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
}

impl Augmentation {
    /// Random crop with zero padding 4 and random horizontal flip.
    pub const CIFAR: Augmentation = Augmentation { pad: 4, flip: true };

    /// Writes a randomly cropped (and maybe flipped) copy of `src` (C x H x W) into `dst`.
    /// Draws the vertical offset, the horizontal offset, then the flip, in that order.
    pub fn apply<R: Rng + ?Sized>(&self, src: &[f32], shape: (usize, usize, usize), rng: &mut R, dst: &mut [f32]) {
        let dy = rng.random_range(0..=2 * self.pad);
        let dx = rng.random_range(0..=2 * self.pad);
        let flip = self.flip && rng.random_bool(0.5);
        crop_and_flip(src, shape, self.pad, (dy, dx), flip, dst);
    }
}

/// The deterministic core: `dst[c][y][x] = padded[c][y + dy][x' + dx]` where `padded` is `src` with
/// `pad` zeros on each side and `x' = W-1-x` when flipping, else `x`. Offsets range over `0..=2*pad`.
pub fn crop_and_flip(
    src: &[f32],
    (c, h, w): (usize, usize, usize),
    pad: usize,
    (dy, dx): (usize, usize),
    flip: bool,
    dst: &mut [f32],
) {
    assert_eq!(src.len(), c * h * w, "source image must be C x H x W");
    assert_eq!(dst.len(), src.len(), "destination must have the source's size");
    assert!(dy <= 2 * pad && dx <= 2 * pad, "crop offsets must be within 0..=2*pad");
    for ch in 0..c {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        let out = &mut dst[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            // Source row in unpadded coordinates; outside the image the padding is zero.
            let sy = (y + dy).checked_sub(pad).filter(|&sy| sy < h);
            for x in 0..w {
                let xc = if flip { w - 1 - x } else { x };
                let sx = (xc + dx).checked_sub(pad).filter(|&sx| sx < w);
                out[y * w + x] = match (sy, sx) {
                    (Some(sy), Some(sx)) => plane[sy * w + sx],
                    _ => 0.0,
                };
            }
        }
    }
}
