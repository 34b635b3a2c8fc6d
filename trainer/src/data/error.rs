//! Why a dataset could not be loaded. Every variant names the file (or folder) involved and what
//! was expected versus found, so a user with their own files can fix them.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: not found (nor {path}.gz); {hint}")]
    Missing { path: PathBuf, hint: String },

    #[error("{path}: invalid gzip data (corrupt or truncated): {source}")]
    Gzip { path: PathBuf, source: std::io::Error },

    #[error("{path}: bad magic number: expected {expected:#010x} ({what}), found {found:#010x}")]
    BadMagic { path: PathBuf, what: &'static str, expected: u32, found: u32 },

    #[error("{path}: wrong length: expected {expected} bytes ({why}), found {found}")]
    Length { path: PathBuf, why: String, expected: u64, found: u64 },

    #[error(
        "{path}: wrong length: expected a non-zero multiple of {record} bytes (records of 1 label byte + 3072 pixel \
         bytes), found {found}"
    )]
    RecordSize { path: PathBuf, record: usize, found: u64 },

    #[error("{path}: wrong image size: expected {expected}, found {found}")]
    Dims { path: PathBuf, expected: String, found: String },

    #[error("count mismatch: {images} holds {image_count} images but {labels} holds {label_count} labels")]
    CountMismatch { images: PathBuf, labels: PathBuf, image_count: usize, label_count: usize },

    #[error("{path}: label {label} of item {index} is out of range: expected a class below {classes}")]
    BadLabel { path: PathBuf, index: usize, label: u8, classes: usize },

    #[error(
        "CIFAR-10 file {path} not found. Put the binary version's files data_batch_1.bin ... data_batch_5.bin and \
         test_batch.bin in {dir} (or in {dir}/cifar-10-batches-bin/): download {url} and extract it there, or run \
         `crt-trainer data fetch cifar10 --data-dir {data_dir}`"
    )]
    CifarMissing { path: PathBuf, dir: PathBuf, data_dir: PathBuf, url: &'static str },

    #[error("invalid split: {0}")]
    Split(String),
}
