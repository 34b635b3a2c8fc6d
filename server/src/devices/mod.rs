//! The machine's compute devices: GPUs found by `nvidia-smi` (none when it is absent), kept
//! fresh by a background task for their utilisation and memory, and where runs are placed.

pub mod cluster;
pub mod placement;
pub mod smi;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use placement::{Device, DeviceRequest};
pub use smi::Gpu;

/// How often utilisation and memory are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The GPUs as last seen.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub gpus: Vec<Gpu>,
    /// What went wrong in the last query: a failure (the GPUs listed are then those of the last
    /// success), or lines of its output that are not GPU records.
    pub error: Option<String>,
}

impl Snapshot {
    pub fn indices(&self) -> Vec<u32> {
        self.gpus.iter().map(|g| g.index).collect()
    }
}

pub struct GpuMonitor {
    nvidia_smi: PathBuf,
    snapshot: RwLock<Snapshot>,
}

impl GpuMonitor {
    /// Queries once, so the first requests already see the GPUs.
    pub async fn detect(nvidia_smi: PathBuf) -> Arc<GpuMonitor> {
        let monitor = Arc::new(GpuMonitor { nvidia_smi, snapshot: RwLock::new(Snapshot::default()) });
        monitor.refresh().await;
        let snap = monitor.snapshot();
        if snap.gpus.is_empty() {
            tracing::info!("no GPU detected (by {}): runs use the CPU", monitor.program());
        }
        for g in &snap.gpus {
            tracing::info!(index = g.index, uuid = %g.uuid, "GPU detected: {}", g.name);
        }
        monitor
    }

    fn program(&self) -> String {
        self.nvidia_smi.display().to_string()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().expect("GPU snapshot lock").clone()
    }

    /// Queries nvidia-smi again. A failure keeps the GPUs of the last success (a GPU does not
    /// leave a running machine; a slow or hiccuping nvidia-smi is more likely) and records why.
    pub async fn refresh(&self) {
        let found = smi::query(&self.nvidia_smi).await;
        let mut snap = self.snapshot.write().expect("GPU snapshot lock");
        let problem = match found {
            smi::Query::Absent => {
                snap.gpus.clear();
                None
            }
            smi::Query::Listed { gpus, bad_lines } => {
                snap.gpus = gpus;
                let bad: Vec<String> = bad_lines.iter().map(ToString::to_string).collect();
                (!bad.is_empty()).then(|| format!("ignored output of {}: {}", self.program(), bad.join("; ")))
            }
            smi::Query::Failed(e) => Some(e),
        };
        // Logged when it changes, not every few seconds.
        if problem != snap.error {
            match &problem {
                Some(p) => tracing::warn!("GPU query: {p}"),
                None => tracing::info!("GPU query works again"),
            }
        }
        snap.error = problem;
    }

    /// Refreshes every `every` until `shutdown`.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let me = self.clone();
        every_until(every, shutdown, move || {
            let me = me.clone();
            async move { me.refresh().await }
        });
    }
}

/// Runs `refresh` every `every` until `shutdown`, in the background (the device monitors' loop).
pub fn every_until<F, Fut>(every: Duration, shutdown: CancellationToken, refresh: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => refresh().await,
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_query_keeps_the_last_gpus() {
        let dir = tempfile::tempdir().unwrap();
        let fail = dir.path().join("fail");
        let program = dir.path().join("nvidia-smi");
        let body = format!(
            "[ -e {} ] && {{ echo 'driver gone'; exit 1; }}\necho '0, GPU A, GPU-a, 5, 1, 100'\necho junk",
            fail.display()
        );
        smi::write_script(&program, &body);

        let monitor = GpuMonitor::detect(program).await;
        let snap = monitor.snapshot();
        assert_eq!(snap.indices(), vec![0]);
        assert!(snap.error.as_deref().is_some_and(|e| e.contains("junk")), "{snap:?}");

        std::fs::write(&fail, "").unwrap();
        monitor.refresh().await;
        let snap = monitor.snapshot();
        assert_eq!(snap.indices(), vec![0], "the GPU stays listed");
        assert!(snap.error.as_deref().is_some_and(|e| e.contains("driver gone")), "{snap:?}");

        let absent = GpuMonitor::detect(dir.path().join("missing")).await;
        assert!(absent.snapshot().gpus.is_empty() && absent.snapshot().error.is_none());
    }
}
