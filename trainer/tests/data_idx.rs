//! IDX loading (MNIST family) from real files written into temporary folders: raw and gzipped
//! files load; every kind of damage gives an error that names the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crt_trainer::config::Dataset;
use crt_trainer::data::{self, DataError};
use flate2::write::GzEncoder;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// Pixel byte of image `i` at offset `k`: distinct across images, covering 0..=255.
fn pixel(i: usize, k: usize) -> u8 {
    ((i * 31 + k * 7) % 256) as u8
}

fn idx_images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [0x0000_0803u32, n as u32, rows as u32, cols as u32] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    for i in 0..n {
        bytes.extend((0..rows * cols).map(|k| pixel(i, k)));
    }
    bytes
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0x0000_0801u32.to_be_bytes());
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Writes a full dataset folder (train: 5 images, test: 3) and returns the data directory.
fn write_dataset(root: &Path, dataset: Dataset, gz: bool) -> PathBuf {
    let dir = root.join(dataset.as_str());
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        (TRAIN_IMAGES, idx_images(5, 28, 28)),
        (TRAIN_LABELS, idx_labels(&[5, 0, 4, 1, 9])),
        (TEST_IMAGES, idx_images(3, 28, 28)),
        (TEST_LABELS, idx_labels(&[7, 2, 1])),
    ];
    for (name, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    root.to_path_buf()
}

fn assert_contents(split: &data::Split, labels: &[u8]) {
    assert_eq!(split.len(), labels.len());
    assert_eq!(split.shape(), (1, 28, 28));
    assert_eq!(split.labels(), labels);
    for i in 0..split.len() {
        let image = split.image(i);
        assert_eq!(image.len(), 28 * 28);
        for (k, &v) in image.iter().enumerate() {
            assert_eq!(v, f32::from(pixel(i, k)) / 255.0, "image {i} pixel {k}");
        }
    }
    assert!(split.images().iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(split.images().contains(&1.0) && split.images().contains(&0.0));
}

#[test]
fn raw_idx_files_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = write_dataset(tmp.path(), Dataset::Mnist, false);
    assert_contents(&data::load(Dataset::Mnist, &root, true).unwrap(), &[5, 0, 4, 1, 9]);
    assert_contents(&data::load(Dataset::Mnist, &root, false).unwrap(), &[7, 2, 1]);
}

#[test]
fn gzipped_idx_files_load() {
    let tmp = tempfile::tempdir().unwrap();
    let root = write_dataset(tmp.path(), Dataset::FashionMnist, true);
    assert_contents(&data::load(Dataset::FashionMnist, &root, true).unwrap(), &[5, 0, 4, 1, 9]);
    assert_contents(&data::load(Dataset::FashionMnist, &root, false).unwrap(), &[7, 2, 1]);
}

#[test]
fn gzip_is_detected_by_magic_bytes_whatever_the_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = write_dataset(tmp.path(), Dataset::Mnist, false);
    let path = root.join("mnist").join(TRAIN_IMAGES);
    std::fs::write(&path, gzip(&idx_images(5, 28, 28))).unwrap();
    assert_contents(&data::load(Dataset::Mnist, &root, true).unwrap(), &[5, 0, 4, 1, 9]);
}

/// Replaces one file of a good dataset with `bytes` and returns the load error and the file's path.
fn damaged(name: &str, bytes: Vec<u8>) -> (DataError, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let root = write_dataset(tmp.path(), Dataset::Mnist, false);
    let path = root.join("mnist").join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = data::load(Dataset::Mnist, &root, true).expect_err("damaged file must not load");
    (err, path, tmp)
}

fn assert_names(err: &DataError, path: &Path) {
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "error does not name {}: {message}", path.display());
}

#[test]
fn corrupt_magic_is_rejected() {
    let mut bytes = idx_images(5, 28, 28);
    bytes[3] = 0x04;
    let (err, path, _tmp) = damaged(TRAIN_IMAGES, bytes);
    assert!(matches!(err, DataError::BadMagic { expected: 0x803, found: 0x804, .. }), "{err:?}");
    assert_names(&err, &path);
    assert!(err.to_string().contains("0x00000803") && err.to_string().contains("0x00000804"), "{err}");

    let mut labels = idx_labels(&[5, 0, 4, 1, 9]);
    labels[3] = 0x03;
    let (err, path, _tmp) = damaged(TRAIN_LABELS, labels);
    assert!(matches!(err, DataError::BadMagic { expected: 0x801, found: 0x803, .. }), "{err:?}");
    assert_names(&err, &path);
}

#[test]
fn truncated_file_is_rejected() {
    let mut bytes = idx_images(5, 28, 28);
    bytes.truncate(bytes.len() - 100);
    let (err, path, _tmp) = damaged(TRAIN_IMAGES, bytes);
    let full = (16 + 5 * 28 * 28) as u64;
    assert!(
        matches!(err, DataError::Length { expected, found, .. } if expected == full && found == full - 100),
        "{err:?}"
    );
    assert_names(&err, &path);
    assert!(err.to_string().contains(&format!("expected {full} bytes")), "{err}");
}

#[test]
fn file_shorter_than_its_header_is_rejected() {
    let (err, path, _tmp) = damaged(TRAIN_LABELS, vec![0, 0, 8]);
    assert!(matches!(err, DataError::Length { expected: 8, found: 3, .. }), "{err:?}");
    assert_names(&err, &path);
}

#[test]
fn truncated_gzip_is_rejected() {
    let gz = gzip(&idx_images(5, 28, 28));
    let (err, path, _tmp) = damaged(TRAIN_IMAGES, gz[..gz.len() / 2].to_vec());
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert_names(&err, &path);
}

#[test]
fn count_mismatch_names_both_files() {
    let (err, labels_path, _tmp) = damaged(TRAIN_LABELS, idx_labels(&[5, 0, 4, 1]));
    assert!(matches!(err, DataError::CountMismatch { image_count: 5, label_count: 4, .. }), "{err:?}");
    assert_names(&err, &labels_path);
    assert_names(&err, &labels_path.with_file_name(TRAIN_IMAGES));
}

#[test]
fn label_out_of_range_is_rejected() {
    let (err, path, _tmp) = damaged(TRAIN_LABELS, idx_labels(&[5, 0, 10, 1, 9]));
    assert!(matches!(err, DataError::BadLabel { index: 2, label: 10, .. }), "{err:?}");
    assert_names(&err, &path);
}

#[test]
fn wrong_image_size_is_rejected() {
    let (err, path, _tmp) = damaged(TRAIN_IMAGES, idx_images(5, 32, 32));
    assert!(
        matches!(&err, DataError::Dims { expected, found, .. } if expected == "28x28" && found == "32x32"),
        "{err:?}"
    );
    assert_names(&err, &path);
}

#[test]
fn missing_file_says_where_and_how() {
    let tmp = tempfile::tempdir().unwrap();
    let err = data::load(Dataset::FashionMnist, tmp.path(), false).unwrap_err();
    let expected = tmp.path().join("fashion-mnist").join(TEST_IMAGES);
    assert!(matches!(&err, DataError::Missing { path, .. } if *path == expected), "{err:?}");
    assert!(err.to_string().contains("data fetch fashion-mnist"), "{err}");
}

#[test]
fn ensure_dataset_keeps_files_that_are_there() {
    // The user's own (here: synthetic) IDX files are used as they are: nothing is fetched or replaced.
    let tmp = tempfile::tempdir().unwrap();
    let root = write_dataset(tmp.path(), Dataset::Mnist, true);
    let before: Vec<_> = std::fs::read_dir(root.join("mnist")).unwrap().map(|e| e.unwrap().path()).collect();
    data::ensure_dataset(Dataset::Mnist, &root).unwrap();
    let after: Vec<_> = std::fs::read_dir(root.join("mnist")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(before.len(), 4);
    assert_eq!(after.len(), 4, "no file added: {after:?}");
    assert_contents(&data::load(Dataset::Mnist, &root, true).unwrap(), &[5, 0, 4, 1, 9]);
}
