//! What a run's work is given (device, event reporter, stop flag, threads) and how it ends when it
//! does not fail. Shared by `cli::run`, which executes a run, and the engines it dispatches to
//! (`train`, `certify`), so the engines do not depend on the command line.

use candle_core::Device;

use crate::report::Reporter;
use crate::stop::StopFlag;

/// How a run ended when it did not fail.
pub enum Outcome {
    Finished { summary: std::collections::BTreeMap<String, f64> },
    Stopped { checkpoint: Option<String> },
}

pub struct Context<'a> {
    pub device: Device,
    pub reporter: &'a Reporter,
    pub stop: StopFlag,
    pub threads: usize,
}
