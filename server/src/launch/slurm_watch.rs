//! One `squeue` call per poll for every Slurm job the server follows.
//!
//! Each run's supervision asks about its own job; the answers come from one shared poll, made
//! again when the last one is older than [`POLL_EVERY`]. A job is only called gone by a poll that
//! began after the job was submitted (a poll already on its way would not list it yet).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::slurm::{self, JobInfo};
use super::Observed;

/// How old a poll may be before the next question triggers a new one.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// Job id → when the server started following it.
    jobs: HashMap<String, Instant>,
    /// The last poll: when it began, and what it said.
    last: Option<(Instant, HashMap<String, JobInfo>)>,
}

#[derive(Default)]
pub struct SlurmWatch {
    state: Mutex<State>,
}

impl SlurmWatch {
    /// Follows `job_id` from now on (a new submission, or one found again after a restart).
    pub fn watch(&self, job_id: &str) {
        // try_lock: a poll in progress holds the lock; then the job is added on its next look.
        if let Ok(mut st) = self.state.try_lock() {
            st.jobs.entry(job_id.to_string()).or_insert_with(Instant::now);
        }
    }

    pub async fn observe(&self, job_id: &str) -> Observed {
        let mut st = self.state.lock().await;
        let registered = *st.jobs.entry(job_id.to_string()).or_insert_with(Instant::now);
        let fresh = st.last.as_ref().is_some_and(|(at, _)| at.elapsed() < POLL_EVERY);
        if !fresh {
            let ids: Vec<String> = st.jobs.keys().cloned().collect();
            let began = Instant::now();
            match slurm::poll(&ids).await {
                Ok(jobs) => st.last = Some((began, jobs)),
                Err(e) => {
                    tracing::warn!("squeue failed: {e:#}");
                    return Observed::Unknown;
                }
            }
        }
        let Some((began, jobs)) = &st.last else { return Observed::Unknown };
        let observed = match jobs.get(job_id) {
            Some(info) => from_state(info),
            None if *began > registered => Observed::Gone { why: None },
            None => Observed::Unknown,
        };
        if matches!(observed, Observed::Gone { .. }) {
            st.jobs.remove(job_id);
        }
        observed
    }
}

/// Slurm's job state in CRT Lab's words.
pub fn from_state(info: &JobInfo) -> Observed {
    match info.state.as_str() {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "RESV_DEL_HOLD" | "REQUEUE_HOLD" | "REQUEUE_FED" | "SUSPENDED" => {
            Observed::Pending { reason: info.reason.clone() }
        }
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" | "STOPPED" | "RESIZING" => {
            Observed::Running { node: info.node.clone() }
        }
        "COMPLETED" => Observed::Gone { why: None },
        "CANCELLED" => Observed::Gone { why: Some("the Slurm job was cancelled (scancel) outside CRT Lab".into()) },
        "TIMEOUT" => Observed::Gone { why: Some("the Slurm job reached its time limit".into()) },
        "NODE_FAIL" => Observed::Gone { why: Some("the Slurm node failed (NODE_FAIL)".into()) },
        "OUT_OF_MEMORY" => Observed::Gone { why: Some("the Slurm job ran out of memory (OUT_OF_MEMORY)".into()) },
        "PREEMPTED" => Observed::Gone { why: Some("the Slurm job was preempted".into()) },
        "BOOT_FAIL" => Observed::Gone { why: Some("the Slurm node failed to boot (BOOT_FAIL)".into()) },
        "DEADLINE" => Observed::Gone { why: Some("the Slurm job missed its deadline".into()) },
        other => Observed::Gone { why: Some(format!("the Slurm job ended in state {other}")) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(state: &str) -> JobInfo {
        JobInfo { state: state.into(), reason: "Resources".into(), node: Some("n1".into()) }
    }

    #[test]
    fn states_in_our_words() {
        assert_eq!(from_state(&info("PENDING")), Observed::Pending { reason: "Resources".into() });
        assert_eq!(from_state(&info("RUNNING")), Observed::Running { node: Some("n1".into()) });
        assert_eq!(from_state(&info("COMPLETED")), Observed::Gone { why: None });
        for (state, word) in [("CANCELLED", "cancelled"), ("NODE_FAIL", "NODE_FAIL"), ("OUT_OF_MEMORY", "memory")] {
            match from_state(&info(state)) {
                Observed::Gone { why: Some(w) } => assert!(w.contains(word), "{state}: {w}"),
                other => panic!("{state}: {other:?}"),
            }
        }
    }
}
