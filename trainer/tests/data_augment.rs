//! The CIFAR augmentation: random crop with zero padding 4 and random horizontal flip.

use crt_trainer::data::{crop_and_flip, Augmentation};
use rand::rngs::StdRng;
use rand::SeedableRng;

const SHAPE: (usize, usize, usize) = (3, 32, 32);
const N: usize = 3 * 32 * 32;

/// A test image whose every value tells its position: v = 1 + c*10000 + y*100 + x (never zero).
fn coded_image() -> Vec<f32> {
    let mut image = Vec::with_capacity(N);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                image.push((1 + c * 10000 + y * 100 + x) as f32);
            }
        }
    }
    image
}

fn at(image: &[f32], c: usize, y: usize, x: usize) -> f32 {
    image[c * 1024 + y * 32 + x]
}

#[test]
fn crop_shifts_and_pads_with_zeros() {
    let src = coded_image();
    let mut dst = vec![f32::NAN; N];
    // Offsets (dy, dx) = (5, 2) with pad 4: output (y, x) shows input (y + 1, x - 2).
    crop_and_flip(&src, SHAPE, 4, (5, 2), false, &mut dst);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let expected = if y + 1 < 32 && x >= 2 { at(&src, c, y + 1, x - 2) } else { 0.0 };
                assert_eq!(at(&dst, c, y, x), expected, "c {c} y {y} x {x}");
            }
        }
    }
}

#[test]
fn flip_mirrors_left_right() {
    let src = coded_image();
    let mut dst = vec![0.0; N];
    crop_and_flip(&src, SHAPE, 4, (4, 4), true, &mut dst);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                assert_eq!(at(&dst, c, y, x), at(&src, c, y, 31 - x));
            }
        }
    }
}

/// The number of zeros a crop with offsets in 0..=8 can leave in an all-positive 3x32x32 image.
fn possible_zero_counts() -> Vec<usize> {
    let mut counts = Vec::new();
    for dy in 0..=8usize {
        for dx in 0..=8usize {
            counts.push(3 * (1024 - (32 - dy.abs_diff(4)) * (32 - dx.abs_diff(4))));
        }
    }
    counts
}

#[test]
fn random_crops_keep_shape_and_show_padding() {
    let src = coded_image();
    let mut rng = StdRng::seed_from_u64(11);
    let possible = possible_zero_counts();
    let mut seen_counts = std::collections::BTreeSet::new();
    let (mut flipped, mut unflipped) = (0, 0);
    for _ in 0..300 {
        let mut dst = vec![f32::NAN; N];
        Augmentation::CIFAR.apply(&src, SHAPE, &mut rng, &mut dst);
        assert!(dst.iter().all(|v| v.is_finite()), "every output value is written");
        let zeros = dst.iter().filter(|&&v| v == 0.0).count();
        assert!(possible.contains(&zeros), "{zeros} zeros cannot come from a 4-pixel padding");
        // Every non-zero value is a source value from the same channel.
        assert!(dst.iter().enumerate().all(|(k, &v)| v == 0.0 || (v as usize - 1) / 10000 == k / 1024));
        seen_counts.insert(zeros);
        // Along a row of the unpadded part, values increase (no flip) or decrease (flip).
        let row = &dst[16 * 32 + 8..16 * 32 + 24];
        if row.windows(2).all(|w| w[1] > w[0]) {
            unflipped += 1;
        } else if row.windows(2).all(|w| w[1] < w[0]) {
            flipped += 1;
        }
    }
    assert!(seen_counts.len() > 5, "crops vary: {seen_counts:?}");
    assert!(seen_counts.iter().any(|&z| z > 0), "padding zeros appear");
    assert_eq!(flipped + unflipped, 300);
    assert!((100..200).contains(&flipped), "flip with probability 1/2: {flipped} of 300");
}

#[test]
fn augmentation_is_reproducible_from_the_seed() {
    let src = coded_image();
    let run = |seed: u64| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..20)
            .map(|_| {
                let mut dst = vec![0.0; N];
                Augmentation::CIFAR.apply(&src, SHAPE, &mut rng, &mut dst);
                dst
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn no_padding_no_flip_is_identity() {
    let src = coded_image();
    let mut dst = vec![0.0; N];
    let mut rng = StdRng::seed_from_u64(1);
    Augmentation { pad: 0, flip: false }.apply(&src, SHAPE, &mut rng, &mut dst);
    assert_eq!(dst, src);
}
