//! `GET /api/v1/devices`: the CPU and the GPUs, with the run each GPU is busy with.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::AppState;
use crate::devices::cluster::ClusterSnapshot;
use crate::devices::{Device, Gpu};

#[derive(Debug, Clone, Serialize)]
pub struct DevicesView {
    pub cpu: CpuView,
    pub gpus: Vec<GpuView>,
    /// Why GPU detection failed or printed something unexpected; null when all is well.
    pub gpu_error: Option<String>,
    /// The Slurm partition's nodes (`sinfo`), when Slurm is the server's backend; else null.
    pub slurm: Option<ClusterSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpuView {
    pub cores: usize,
    pub max_concurrent_runs: usize,
    /// Runs on the CPU now.
    pub running: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuView {
    #[serde(flatten)]
    pub gpu: Gpu,
    /// The run of this server on this GPU.
    pub busy_run: Option<i64>,
}

pub fn view(app: &AppState) -> DevicesView {
    let snapshot = app.manager.gpus().snapshot();
    let running = app.manager.running_devices();
    let busy_run = |index: u32| running.iter().find(|(_, d)| *d == Device::Cuda(index)).map(|(id, _)| *id);
    DevicesView {
        cpu: CpuView {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            max_concurrent_runs: app.settings.max_concurrent_runs,
            running: running.iter().filter(|(_, d)| *d == Device::Cpu).count(),
        },
        gpus: snapshot.gpus.into_iter().map(|gpu| GpuView { busy_run: busy_run(gpu.index), gpu }).collect(),
        gpu_error: snapshot.error,
        slurm: app.cluster.as_ref().map(|c| c.snapshot()),
    }
}

pub async fn get_devices(State(app): State<AppState>) -> Json<DevicesView> {
    Json(view(&app))
}
