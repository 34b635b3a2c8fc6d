//! The random streams of a training run beyond the data order: each step's noise and each epoch's
//! evaluation noise get their own seeded RNG, so nothing has to be saved to resume exactly.
//! (Shuffling and augmentation use `data::epoch_rng`.)

use rand::rngs::StdRng;
use rand::SeedableRng;

fn stream(seed: u64, index: u64, tag: &[u8; 8]) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..24].copy_from_slice(tag);
    StdRng::from_seed(key)
}

/// Noise and other draws of optimizer step `step` (0-based, counted over the whole run).
pub fn step_rng(seed: u64, step: u64) -> StdRng {
    stream(seed, step, b"crt-step")
}

/// Noise of the test evaluation after epoch `epoch`.
pub fn eval_rng(seed: u64, epoch: u64) -> StdRng {
    stream(seed, epoch, b"crt-eval")
}
