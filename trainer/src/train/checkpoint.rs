//! Checkpoints: everything needed to continue a run exactly where it stopped.
//!
//! `checkpoint.safetensors` holds the model's variables (weights and BatchNorm running statistics)
//! under their own names, the optimizer's state under `optim.…` (SGD's momentum buffers as
//! `optim.momentum.<name>`, AdamW's moments and step count as `optim.adamw.…`), and the position
//! (`trainer.state`, the JSON of [`CheckpointState`] as bytes). Keeping the position inside the one
//! file makes a checkpoint a single atomic rename; `checkpoint.json` is a readable copy of the state.
//! No RNG state is stored: every random stream is derived from (seed, epoch) or (seed, step).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::{Optim, STATE_PREFIX};
use crate::models::Model;

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const CHECKPOINT_META: &str = "checkpoint.json";
const STATE_TENSOR: &str = "trainer.state";

/// Where a run is, and what it must match to be continued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The epoch in progress (0-based); equal to the epoch count when training is complete.
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch: usize,
    /// Optimizer steps done in all.
    pub step: u64,
    pub seed: u64,
    /// Training time so far, over every session of the run.
    pub elapsed_s: f64,
    /// Settings a continued run must share (config field -> value), e.g. `optim.batch_size`.
    pub identity: BTreeMap<String, serde_json::Value>,
}

impl CheckpointState {
    /// Fails, naming the field, when the run about to continue differs from the checkpointed one.
    pub fn check_identity(&self, current: &BTreeMap<String, serde_json::Value>, dir: &Path) -> anyhow::Result<()> {
        for (field, value) in current {
            match self.identity.get(field) {
                Some(saved) if saved == value => {}
                saved => bail!(
                    "resume: the checkpoint in {} was made with {field} = {}, this run has {field} = {value}; \
                     use the same value or a fresh output directory",
                    dir.display(),
                    saved.map(|v| v.to_string()).unwrap_or_else(|| "(not recorded)".into())
                ),
            }
        }
        Ok(())
    }
}

/// Writes the checkpoint atomically (temporary file + rename) and returns its path.
pub fn save(dir: &Path, model: &Model, optimizer: &Optim, state: &CheckpointState) -> anyhow::Result<PathBuf> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in model.named_vars() {
        tensors.insert(name, var.as_tensor().clone());
    }
    for (key, tensor) in optimizer.state()? {
        tensors.insert(key, tensor);
    }
    let state_json = serde_json::to_vec(state)?;
    let len = state_json.len();
    tensors.insert(STATE_TENSOR.into(), Tensor::from_vec(state_json, len, &Device::Cpu)?);

    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    rename(&tmp, &path)?;
    write_atomic(&dir.join(CHECKPOINT_META), serde_json::to_string_pretty(state)?.as_bytes())?;
    Ok(path)
}

/// A checkpoint read from disk, not yet applied.
pub struct Loaded {
    pub state: CheckpointState,
    tensors: HashMap<String, Tensor>,
    path: PathBuf,
}

/// Reads `dir/checkpoint.safetensors` if it exists.
pub fn load(dir: &Path, device: &Device) -> anyhow::Result<Option<Loaded>> {
    let path = dir.join(CHECKPOINT_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let tensors = candle_core::safetensors::load(&path, device)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let state = read_state(&tensors, &path)?;
    Ok(Some(Loaded { state, tensors, path }))
}

/// The step a resumable checkpoint in `dir` stands at (for the `started` event); None when absent
/// or unreadable (the run itself then reports why).
pub fn peek_step(dir: &Path) -> Option<u64> {
    let tensors = candle_core::safetensors::load(dir.join(CHECKPOINT_FILE), &Device::Cpu).ok()?;
    read_state(&tensors, &dir.join(CHECKPOINT_FILE)).ok().map(|s| s.step)
}

fn read_state(tensors: &HashMap<String, Tensor>, path: &Path) -> anyhow::Result<CheckpointState> {
    let bytes = tensors
        .get(STATE_TENSOR)
        .with_context(|| format!("{}: not a crt-trainer checkpoint (no {STATE_TENSOR})", path.display()))?
        .to_vec1::<u8>()?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: unreadable {STATE_TENSOR}", path.display()))
}

impl Loaded {
    /// Copies the stored variables into `model` and the optimizer's state into `optimizer`.
    pub fn apply(&self, model: &Model, optimizer: &mut Optim) -> anyhow::Result<()> {
        for (name, var) in model.named_vars() {
            let saved = self
                .tensors
                .get(&name)
                .with_context(|| format!("{}: no tensor '{name}' (a different architecture?)", self.path.display()))?;
            if saved.shape() != var.shape() {
                bail!("{}: '{name}' has shape {:?}, the model {:?}", self.path.display(), saved.shape(), var.shape());
            }
            var.set(saved)?;
        }
        for (key, tensor) in &self.tensors {
            if key.starts_with(STATE_PREFIX) {
                optimizer.restore(key, tensor.clone()).with_context(|| format!("{}", self.path.display()))?;
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    rename(&tmp, path)
}

/// Saves the model's weights atomically to `path`.
pub fn save_model_atomic(model: &Model, path: &Path) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    model.save(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    rename(&tmp, path)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
}
