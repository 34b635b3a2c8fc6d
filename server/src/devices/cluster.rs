//! The Slurm cluster's nodes for the compute card (`sinfo`), when Slurm is the server's
//! backend: asked in the background, so a page never waits on a slow `sinfo`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::launch::slurm::{self, NodeInfo};

/// What the last `sinfo` said.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterSnapshot {
    /// The partition shown (the server's default); None: all partitions.
    pub partition: Option<String>,
    pub nodes: Vec<NodeInfo>,
    /// Why the last query failed; the nodes of the last success stay listed.
    pub error: Option<String>,
}

pub struct ClusterMonitor {
    snapshot: RwLock<ClusterSnapshot>,
}

impl ClusterMonitor {
    pub async fn detect(partition: Option<String>) -> Arc<ClusterMonitor> {
        let monitor =
            Arc::new(ClusterMonitor { snapshot: RwLock::new(ClusterSnapshot { partition, ..Default::default() }) });
        monitor.refresh().await;
        monitor
    }

    pub fn snapshot(&self) -> ClusterSnapshot {
        self.snapshot.read().expect("cluster snapshot lock").clone()
    }

    pub async fn refresh(&self) {
        let partition = self.snapshot().partition;
        let found = slurm::nodes(partition.as_deref()).await;
        let mut snap = self.snapshot.write().expect("cluster snapshot lock");
        match found {
            Ok(nodes) => {
                snap.nodes = nodes;
                snap.error = None;
            }
            Err(e) => snap.error = Some(format!("{e:#}")),
        }
    }

    /// Refreshes every `every` until `shutdown`.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let me = self.clone();
        super::every_until(every, shutdown, move || {
            let me = me.clone();
            async move { me.refresh().await }
        });
    }
}
