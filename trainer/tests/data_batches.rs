//! The batch iterator: shapes and dtypes, coverage, the smaller last batch, and reproducibility
//! of the shuffled order (and augmentation) from the seed and epoch.

use candle_core::{DType, Device};
use crt_trainer::data::{epoch_rng, Augmentation, Batch, Split};

/// `n` images of 3x32x32 where image i is filled with (i + 1) / 1000, labels i % 10.
fn split(n: usize) -> Split {
    let images = (0..n).flat_map(|i| std::iter::repeat_n((i + 1) as f32 / 1000.0, 3 * 32 * 32)).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Split::new(images, labels, (3, 32, 32)).unwrap()
}

fn collect(batches: impl Iterator<Item = candle_core::Result<Batch>>) -> Vec<Batch> {
    batches.map(|b| b.unwrap()).collect()
}

/// Checks each batch's tensors against the split items its indices name; returns all indices.
fn check_batches(split: &Split, batches: &[Batch], batch_size: usize) -> Vec<usize> {
    let mut all = Vec::new();
    for (k, batch) in batches.iter().enumerate() {
        let b = batch.indices.len();
        assert!(b == batch_size || (k == batches.len() - 1 && b < batch_size), "batch {k} has {b} items");
        assert_eq!(batch.images.dims(), &[b, 3, 32, 32]);
        assert_eq!(batch.images.dtype(), DType::F32);
        assert_eq!(batch.labels.dims(), &[b]);
        assert_eq!(batch.labels.dtype(), DType::U32);
        let labels = batch.labels.to_vec1::<u32>().unwrap();
        let images = batch.images.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        for (j, &i) in batch.indices.iter().enumerate() {
            assert_eq!(labels[j], u32::from(split.label(i)));
            assert_eq!(images[j].as_slice(), split.image(i), "batch {k} item {j} is split item {i}");
        }
        all.extend_from_slice(&batch.indices);
    }
    all
}

#[test]
fn in_order_batches_cover_everything_and_keep_the_last_partial_batch() {
    let data = split(10);
    let batches = collect(data.batches(4, &Device::Cpu));
    assert_eq!(batches.len(), 3);
    assert_eq!(check_batches(&data, &batches, 4), (0..10).collect::<Vec<_>>());
    assert_eq!(batches[2].indices.len(), 2);
}

#[test]
fn shuffled_batches_cover_each_item_once() {
    let data = split(103);
    let iter = data.shuffled_batches(16, &mut epoch_rng(1, 0), None, &Device::Cpu);
    assert_eq!(iter.len(), 7);
    let mut seen = check_batches(&data, &collect(iter), 16);
    assert_ne!(seen, (0..103).collect::<Vec<_>>(), "the order is shuffled");
    seen.sort_unstable();
    assert_eq!(seen, (0..103).collect::<Vec<_>>());
}

#[test]
fn shuffled_order_is_reproducible_from_seed_and_epoch() {
    let data = split(200);
    let order =
        |seed, epoch| data.shuffled_batches(32, &mut epoch_rng(seed, epoch), None, &Device::Cpu).order().to_vec();
    assert_eq!(order(7, 3), order(7, 3));
    assert_ne!(order(7, 3), order(7, 4), "each epoch has its own order");
    assert_ne!(order(7, 3), order(8, 3), "each seed has its own order");
}

#[test]
fn augmented_batches_are_reproducible_and_augmented() {
    let data = split(20);
    let run = |seed| {
        let mut rng = epoch_rng(seed, 0);
        collect(data.shuffled_batches(8, &mut rng, Some(Augmentation::CIFAR), &Device::Cpu))
            .iter()
            .map(|b| b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    let first = run(42);
    assert_eq!(first, run(42));
    assert_ne!(first, run(43));
    // Padding zeros appear, and every other value is the item's own constant.
    let values: Vec<f32> = first.concat();
    assert!(values.contains(&0.0), "some crops show padding");
    assert!(values.iter().all(|&v| v == 0.0 || (0.0..=0.021).contains(&v)));
}

#[test]
fn subset_keeps_the_first_items() {
    let data = split(10).subset(4);
    assert_eq!(data.len(), 4);
    assert_eq!(data.labels(), &[0, 1, 2, 3]);
    assert_eq!(data.images().len(), 4 * 3 * 32 * 32);
    assert_eq!(split(3).subset(10).len(), 3);
}

#[test]
fn split_rejects_inconsistent_sizes() {
    let err = Split::new(vec![0.0; 100], vec![1, 2], (3, 32, 32)).unwrap_err();
    assert!(err.to_string().contains("expected 6144"), "{err}");
}
