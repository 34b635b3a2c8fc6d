//! `crt-trainer data fetch <mnist|fashion-mnist|cifar10> --data-dir DIR`: puts a dataset's files in
//! place, checking them against pinned checksums; running it again fetches nothing.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::config::Dataset;
use crate::data::{self, FetchOptions, FetchOutcome};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Fetch a dataset (mnist, fashion-mnist or cifar10) into the data directory.
    Fetch {
        /// mnist, fashion-mnist or cifar10.
        dataset: Dataset,
        /// Data directory; files go to DIR/<dataset>/.
        #[arg(long, env = "CRT_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Replace files that are there but do not match the pinned checksums.
        #[arg(long)]
        force: bool,
    },
}

pub fn execute(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Fetch { dataset, data_dir, force } => {
            let outcome = data::fetch(dataset, &data_dir, FetchOptions { force })?;
            println!("{}", summary(dataset, &data_dir, &outcome));
            Ok(())
        }
    }
}

/// One paragraph saying what was there, what was fetched and from where.
fn summary(dataset: Dataset, data_dir: &Path, outcome: &FetchOutcome) -> String {
    let dir = data::dataset_dir(dataset, data_dir);
    let checked = if dataset == Dataset::Cifar10 { "present" } else { "present and sha256-verified" };
    let mut lines = Vec::new();
    if outcome.fetched.is_empty() {
        lines.push(format!(
            "{}: {} file(s) already {checked} in {}; nothing fetched",
            dataset.as_str(),
            outcome.present.len(),
            dir.display()
        ));
    } else {
        lines.push(format!(
            "{}: fetched {} file(s) into {} from {}",
            dataset.as_str(),
            outcome.fetched.len(),
            dir.display(),
            outcome.source.as_deref().unwrap_or("?")
        ));
        if !outcome.present.is_empty() {
            lines.push(format!("{} file(s) were already {checked}", outcome.present.len()));
        }
    }
    for path in &outcome.kept {
        lines.push(format!("kept {}: it is not the pinned file (your own data?); --force replaces it", path.display()));
    }
    lines.join("\n")
}
