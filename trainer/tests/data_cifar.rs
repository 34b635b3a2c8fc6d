//! CIFAR-10 binary batches from real files in temporary folders.

use std::path::Path;

use crt_trainer::config::Dataset;
use crt_trainer::data::{self, DataError, CIFAR10_URL, CIFAR_RECORD_BYTES};

const TRAIN: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];

/// Pixel byte `k` (0..3072, R plane then G then B) of the record with global number `r`.
fn pixel(r: usize, k: usize) -> u8 {
    ((r * 13 + k * 5) % 256) as u8
}

/// `count` records numbered from `first`, labels `r % 10`.
fn records(first: usize, count: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for r in first..first + count {
        bytes.push((r % 10) as u8);
        bytes.extend((0..3072).map(|k| pixel(r, k)));
    }
    bytes
}

/// 5 train batches of 2 records (numbers 0..10) and a test batch of 3 (numbers 100..103) in `dir`.
fn write_cifar(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (b, name) in TRAIN.iter().enumerate() {
        std::fs::write(dir.join(name), records(2 * b, 2)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), records(100, 3)).unwrap();
}

fn check_split(split: &data::Split, numbers: std::ops::Range<usize>) {
    assert_eq!(split.len(), numbers.len());
    assert_eq!(split.shape(), (3, 32, 32));
    for (i, r) in numbers.enumerate() {
        assert_eq!(split.label(i) as usize, r % 10);
        let image = split.image(i);
        // The record's byte order is already C x H x W: red plane, green, blue; each row-major.
        for (k, &v) in image.iter().enumerate() {
            assert_eq!(v, f32::from(pixel(r, k)) / 255.0, "record {r} value {k}");
        }
    }
}

#[test]
fn cifar_binary_loads() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(&tmp.path().join("cifar10"));
    check_split(&data::load(Dataset::Cifar10, tmp.path(), true).unwrap(), 0..10);
    check_split(&data::load(Dataset::Cifar10, tmp.path(), false).unwrap(), 100..103);
}

#[test]
fn cifar_archive_subfolder_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(&tmp.path().join("cifar10").join("cifar-10-batches-bin"));
    check_split(&data::load(Dataset::Cifar10, tmp.path(), true).unwrap(), 0..10);
}

#[test]
fn cifar_bad_record_length_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar10");
    write_cifar(&dir);
    let mut bytes = records(4, 2);
    bytes.pop();
    std::fs::write(dir.join("data_batch_3.bin"), &bytes).unwrap();
    let err = data::load(Dataset::Cifar10, tmp.path(), true).unwrap_err();
    let found = (2 * CIFAR_RECORD_BYTES - 1) as u64;
    assert!(matches!(&err, DataError::RecordSize { found: f, record: 3073, .. } if *f == found), "{err:?}");
    assert!(err.to_string().contains(&dir.join("data_batch_3.bin").display().to_string()), "{err}");
    // The test split does not read that file and still loads.
    assert_eq!(data::load(Dataset::Cifar10, tmp.path(), false).unwrap().len(), 3);
}

#[test]
fn cifar_bad_label_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar10");
    write_cifar(&dir);
    let mut bytes = records(100, 3);
    bytes[CIFAR_RECORD_BYTES] = 10;
    std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
    let err = data::load(Dataset::Cifar10, tmp.path(), false).unwrap_err();
    assert!(matches!(err, DataError::BadLabel { index: 1, label: 10, .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.join("test_batch.bin").display().to_string()), "{err}");
}

#[test]
fn cifar_missing_says_where_to_put_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let err = data::load(Dataset::Cifar10, tmp.path(), false).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::CifarMissing { .. }), "{err:?}");
    assert!(message.contains(&tmp.path().join("cifar10").display().to_string()), "{message}");
    assert!(message.contains(CIFAR10_URL) && message.contains("test_batch.bin"), "{message}");
}
