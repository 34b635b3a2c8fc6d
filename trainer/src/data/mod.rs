//! Datasets for the engine: MNIST and Fashion-MNIST (IDX files), CIFAR-10 (binary batches), the
//! standard CIFAR augmentation, a seeded batch iterator, and fetching the files on first use.
//!
//! Layout under a data directory `D`:
//! - `D/mnist/` and `D/fashion-mnist/`: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//!   `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally gzipped (`.gz`);
//! - `D/cifar10/` (or `D/cifar10/cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`.
//!
//! Pixels are f32 in [0, 1] (byte / 255); normalization belongs to the model.

mod augment;
mod batches;
mod cifar;
mod error;
mod fetch;
mod idx;
mod progress;
mod sources;
mod split;

use std::path::{Path, PathBuf};

pub use augment::{crop_and_flip, Augmentation};
pub use batches::{epoch_rng, Batch, Batches};
pub use cifar::{cifar_dir, CIFAR10_URL, CIFAR_RECORD_BYTES};
pub use error::DataError;
pub use fetch::{ensure_dataset, fetch, pinned_files, FetchOptions, FetchOutcome, PinnedFile};
pub use idx::{load_idx_files, read_maybe_gzip};
pub use split::Split;

use crate::config::Dataset;

/// The standard IDX file names of the MNIST family, (images, labels) for the train or test split.
pub fn idx_names(train: bool) -> (&'static str, &'static str) {
    if train {
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    } else {
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    }
}

/// The folder of one dataset under the data directory: `mnist/`, `fashion-mnist/` or `cifar10/`.
pub fn dataset_dir(dataset: Dataset, data_dir: &Path) -> PathBuf {
    data_dir.join(dataset.as_str())
}

/// Loads the train or test split of a dataset from `data_dir` (files must already be there; see
/// [`ensure_dataset`] to fetch them). Every structural problem is an error naming the file.
pub fn load(dataset: Dataset, data_dir: &Path, train: bool) -> Result<Split, DataError> {
    match dataset {
        Dataset::Mnist | Dataset::FashionMnist => idx::load_split(dataset, &dataset_dir(dataset, data_dir), train),
        Dataset::Cifar10 => cifar::load_split(data_dir, train),
    }
}
