//! CIFAR-10, binary version: files of 3073-byte records, each a label byte followed by the 32x32
//! red, green and blue planes (row-major) — already the C x H x W order the models take.

use std::path::{Path, PathBuf};

use super::{DataError, Split};
use crate::config::Dataset;

/// Where the binary version is published.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// One record: 1 label byte + 3 x 32 x 32 pixel bytes.
pub const CIFAR_RECORD_BYTES: usize = 1 + 3 * 32 * 32;
/// The folder name inside the published archive, also accepted under `cifar10/`.
pub(super) const ARCHIVE_FOLDER: &str = "cifar-10-batches-bin";
pub(super) const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub(super) const TEST_FILE: &str = "test_batch.bin";

/// `data_dir/cifar10`, where CIFAR-10's files belong.
pub fn cifar_dir(data_dir: &Path) -> PathBuf {
    super::dataset_dir(Dataset::Cifar10, data_dir)
}

/// The names of a split's files.
pub(super) fn split_files(train: bool) -> Vec<&'static str> {
    if train {
        TRAIN_FILES.to_vec()
    } else {
        vec![TEST_FILE]
    }
}

/// Finds a batch file in `cifar10/` or `cifar10/cifar-10-batches-bin/`; the error says where it belongs.
pub(super) fn find_file(data_dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let dir = cifar_dir(data_dir);
    let candidates = [dir.join(name), dir.join(ARCHIVE_FOLDER).join(name)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| DataError::CifarMissing {
        path: candidates[0].clone(),
        dir,
        data_dir: data_dir.to_path_buf(),
        url: CIFAR10_URL,
    })
}

pub(super) fn load_split(data_dir: &Path, train: bool) -> Result<Split, DataError> {
    let paths = split_files(train).into_iter().map(|name| find_file(data_dir, name)).collect::<Result<Vec<_>, _>>()?;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in &paths {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.clone(), source })?;
        append_records(&bytes, path, &mut pixels, &mut labels)?;
    }
    Split::new(pixels, labels, Dataset::Cifar10.image_shape())
}

/// Checks and appends the records of one batch file.
fn append_records(bytes: &[u8], path: &Path, pixels: &mut Vec<f32>, labels: &mut Vec<u8>) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR_RECORD_BYTES) {
        return Err(DataError::RecordSize {
            path: path.to_path_buf(),
            record: CIFAR_RECORD_BYTES,
            found: bytes.len() as u64,
        });
    }
    let classes = Dataset::Cifar10.classes();
    pixels.reserve(bytes.len() / CIFAR_RECORD_BYTES * (CIFAR_RECORD_BYTES - 1));
    for (index, record) in bytes.chunks_exact(CIFAR_RECORD_BYTES).enumerate() {
        let label = record[0];
        if usize::from(label) >= classes {
            return Err(DataError::BadLabel { path: path.to_path_buf(), index, label, classes });
        }
        labels.push(label);
        pixels.extend(record[1..].iter().map(|&p| f32::from(p) / 255.0));
    }
    Ok(())
}
