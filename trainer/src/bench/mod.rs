//! `crt-trainer bench`: items per second of the trainer's two hot paths, one SGD training step and
//! one certification sampling batch, next to PyTorch timing the same work
//! (`../shared/bench/torch_reference.py`), plus the machine's matmul rate as a ceiling.

pub mod flops;
pub mod reference;
pub mod table;
pub mod workload;

use std::time::Instant;

use serde::Serialize;

use crate::config::{Arch, Dataset};

/// Warm-up calls before timing, as in the PyTorch script.
pub const WARMUP: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Train,
    Certify,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Certify => "certify",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "train" => Ok(Mode::Train),
            "certify" => Ok(Mode::Certify),
            other => anyhow::bail!("--modes: unknown mode '{other}'; expected train or certify"),
        }
    }
}

/// One row of the benchmark: a model, a mode and its batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub arch: Arch,
    pub mode: Mode,
    pub batch: usize,
}

impl Case {
    /// The dataset whose image shape the PyTorch script uses for this model: 1x28x28 for LeNet,
    /// 3x32x32 for the CIFAR ResNets and the ViT (its larger input: 64 tokens).
    pub fn dataset(&self) -> Dataset {
        match self.arch {
            Arch::Linear | Arch::Mlp | Arch::Lenet => Dataset::Mnist,
            Arch::Resnet20 | Arch::Resnet56 | Arch::Resnet110 | Arch::Vit => Dataset::Cifar10,
        }
    }
}

/// Median seconds of `runs` calls of `step`, after `WARMUP` untimed calls.
pub fn median_time(runs: usize, mut step: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..WARMUP {
        step()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        step()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

/// The median (mean of the middle two for an even count), as Python's `statistics.median`.
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "median of no values");
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_matches_python_statistics() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn modes_parse_and_reject_unknown_names() {
        assert_eq!("train".parse::<Mode>().unwrap(), Mode::Train);
        assert_eq!("certify".parse::<Mode>().unwrap(), Mode::Certify);
        let err = "eval".parse::<Mode>().unwrap_err().to_string();
        assert!(err.contains("--modes") && err.contains("eval"), "{err}");
    }
}
