//! Device and thread selection, handled by the program so users need no environment variables.

use anyhow::{bail, Context};
use candle_core::Device;

/// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when this build has it and a GPU is present, else CPU).
pub fn select(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0).or(Ok(Device::Cpu))
            } else {
                Ok(Device::Cpu)
            }
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = match s.strip_prefix("cuda:") {
                Some(n) => n.parse().with_context(|| format!("--device {s}: expected cuda:N with N a GPU index"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s}: this crt-trainer was built without CUDA; rebuild with `--features cuda` (see README) or use --device cpu");
            }
            Device::new_cuda(ordinal).map_err(|e| {
                // candle appends a backtrace to the error when RUST_BACKTRACE is set: keep the reason.
                let reason = e.to_string();
                let reason = reason.lines().next().unwrap_or_default();
                anyhow::anyhow!(
                    "--device {s}: no usable CUDA GPU {ordinal} ({reason}); check that the NVIDIA driver is \
                     installed and `nvidia-smi` lists the GPU, or use --device cpu"
                )
            })
        }
        other => bail!("--device {other}: expected cpu, cuda, cuda:N or auto"),
    }
}

pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

/// The variable candle 0.11 reads, once, for its thread pool's spin-wait rounds.
const CANDLE_SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Fixes the worker-thread count once: candle otherwise re-reads the core count on every matmul.
/// Must run before any rayon pool exists.
pub fn init_threads(threads: Option<usize>) -> usize {
    let n = threads
        .or_else(|| std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .max(1);
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    // candle's own CPU pool (its element-wise ops, the autograd's gradient sums) spins for 25,000
    // rounds after each op before it sleeps; the kernels that run next are on rayon's threads on
    // the same cores, so that spinning only took their time: a short spin measured +7% ResNet-20
    // training steps/s on 2 cores. A value set by the user wins.
    if std::env::var_os(CANDLE_SPIN_LIMIT).is_none() {
        std::env::set_var(CANDLE_SPIN_LIMIT, "1000");
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    n
}
