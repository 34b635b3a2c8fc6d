//! The `crt-trainer` command line. Every command builds one typed `RunConfig` (from `--config FILE`
//! or from flags) and hands it to `run::execute`, which reports events and the outcome.

pub mod bench;
pub mod certify;
pub mod data;
pub mod import;
pub mod run;
pub mod supervise;
pub mod train;
pub mod transfer;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::report::Output;

#[derive(Parser, Debug)]
#[command(name = "crt-trainer", version, about = "Randomized-smoothing training, CRT transfer and certification")]
pub struct Cli {
    /// Write progress as JSON lines on stdout (the server's wire format) instead of a progress bar.
    #[arg(long, global = true, value_enum)]
    pub events: Option<EventsFormat>,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EventsFormat {
    Jsonl,
}

impl Cli {
    pub fn output(&self) -> Output {
        match self.events {
            Some(EventsFormat::Jsonl) => Output::Jsonl,
            None => Output::Human,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run any configuration file (train, transfer, certify or predict), as the server does.
    Run {
        /// A RunConfig as JSON, e.g. {"kind": "train", ...}.
        #[arg(long)]
        config: PathBuf,
    },
    /// Train a model from scratch with one method (flags or --config).
    Train(train::TrainArgs),
    /// Train a student from scratch on a frozen teacher's outputs under noise (CRT or KD).
    Transfer(transfer::TransferArgs),
    /// Certify a smoothed classifier on the test split (Cohen et al.'s CERTIFY): certify.tsv + summary.json.
    Certify(certify::CertifyArgs),
    /// Predict with a smoothed classifier on the test split (Cohen et al.'s PREDICT): predict.tsv.
    Predict(certify::PredictArgs),
    /// Import a model trained elsewhere: `import --from pytorch FILE --arch NAME --dataset NAME --out DIR`.
    Import(import::ImportArgs),
    /// Speed of a training step and a certification batch, beside PyTorch's (items/s and ratio).
    Bench(bench::BenchArgs),
    /// Run a program (normally `crt-trainer run ...`) under supervision: its output into an attempt
    /// directory, signals forwarded, `exit.json` written when it ends.
    Supervise(supervise::SuperviseArgs),
    /// Dataset files: `data fetch <dataset> --data-dir DIR`.
    Data {
        #[command(subcommand)]
        cmd: data::DataCommand,
    },
}

/// Reads a JSON config file; the error names the file and the problem.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--config {}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--config {}: invalid configuration: {e}", path.display()))
}
