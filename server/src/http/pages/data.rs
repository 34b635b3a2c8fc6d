//! What the pages read from the store, in the JSON API's shapes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crt_trainer::config::RunKind;

use super::PageError;
use crate::certified::{self, CertSummary};
use crate::http::runs::RunView;
use crate::http::AppState;
use crate::runs::RunStatus;
use crate::store::certificates;
use crate::store::journal::{self, Scope};
use crate::store::runs::{self, Run, RunFilter};

/// The radii of the certified-accuracy columns (Cohen et al.'s table; 0 is the smoothed accuracy).
pub const STANDARD_RADII: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// The most runs one compare page shows (each is one fetch of its history per metric).
pub const MAX_COMPARE: usize = 12;

/// The most runs an experiment page lists.
const MAX_EXPERIMENT_RUNS: i64 = 5000;

/// A run named on another run's page (parent, child, certification).
#[derive(Debug, Clone, Serialize)]
pub struct RunBrief {
    pub id: i64,
    pub experiment_id: i64,
    pub name: String,
    pub kind: RunKind,
    pub status: RunStatus,
}

impl From<&Run> for RunBrief {
    fn from(r: &Run) -> Self {
        RunBrief { id: r.id, experiment_id: r.experiment_id, name: r.name.clone(), kind: r.kind, status: r.status }
    }
}

/// The run as `GET /api/v1/runs/{id}` returns it. The stream position is read before the
/// run, so every change after the snapshot reaches the page over SSE.
pub async fn run_view(app: &AppState, id: i64) -> anyhow::Result<Option<RunView>> {
    let last_seq = journal::last_seq(&app.store.pool, Scope::Run(id)).await?;
    let Some(run) = runs::get(&app.store.pool, id).await? else { return Ok(None) };
    Ok(Some(RunView::load(&app.store.pool, run, last_seq).await?))
}

pub async fn experiment_runs(app: &AppState, experiment_id: i64) -> anyhow::Result<Vec<RunView>> {
    let filter = RunFilter { experiment_id: Some(experiment_id), limit: MAX_EXPERIMENT_RUNS, ..RunFilter::default() };
    let mut views = Vec::new();
    for run in runs::list(&app.store.pool, &filter).await? {
        let last_seq = journal::last_seq(&app.store.pool, Scope::Run(run.id)).await?;
        views.push(RunView::load(&app.store.pool, run, last_seq).await?);
    }
    Ok(views)
}

/// Certified accuracy at the standard radii, ACR, … of each certification run.
pub async fn summaries(app: &AppState, ids: impl Iterator<Item = i64>) -> anyhow::Result<BTreeMap<i64, CertSummary>> {
    let mut out = BTreeMap::new();
    for id in ids {
        out.insert(id, summary(app, id).await?);
    }
    Ok(out)
}

async fn summary(app: &AppState, id: i64) -> anyhow::Result<CertSummary> {
    let certs = certificates::list(&app.store.pool, id, -1, i64::MAX).await?;
    Ok(certified::summarize(&certs, &STANDARD_RADII))
}

pub async fn briefs(app: &AppState, ids: &[i64]) -> anyhow::Result<Vec<RunBrief>> {
    let mut out = Vec::new();
    for id in ids {
        if let Some(run) = runs::get(&app.store.pool, *id).await? {
            out.push(RunBrief::from(&run));
        }
    }
    Ok(out)
}

/// The run whose certificates describe `run`: itself for a certification, otherwise the newest
/// certification of this model, preferring finished ones.
pub async fn certification_of(app: &AppState, run: &Run) -> anyhow::Result<Option<RunBrief>> {
    if certified::is_certification(run.kind, &run.config) {
        return Ok(Some(RunBrief::from(run)));
    }
    let mut best: Option<Run> = None;
    for id in runs::children_of(&app.store.pool, run.id).await? {
        let Some(child) = runs::get(&app.store.pool, id).await? else { continue };
        if child.kind != RunKind::Certify {
            continue;
        }
        let rank = |r: &Run| (r.status == RunStatus::Finished, r.id);
        if best.as_ref().is_none_or(|b| rank(&child) > rank(b)) {
            best = Some(child);
        }
    }
    Ok(best.as_ref().map(RunBrief::from))
}

/// One column of the compare page.
#[derive(Serialize)]
pub struct CompareEntry {
    pub view: RunView,
    pub certification: Option<RunBrief>,
    pub summary: Option<CertSummary>,
}

pub async fn compare_entries(app: &AppState, ids: &[i64]) -> Result<Vec<CompareEntry>, PageError> {
    let mut out = Vec::new();
    for &id in ids {
        let last_seq = journal::last_seq(&app.store.pool, Scope::Run(id)).await?;
        let run = runs::get(&app.store.pool, id)
            .await?
            .ok_or_else(|| PageError::NotFound(format!("run {id} does not exist")))?;
        let certification = certification_of(app, &run).await?;
        let view = RunView::load(&app.store.pool, run, last_seq).await?;
        let summary = match &certification {
            Some(c) => Some(summary(app, c.id).await?),
            None => None,
        };
        out.push(CompareEntry { view, certification, summary });
    }
    Ok(out)
}

/// An experiment event stream a page listens to, and where to start it.
#[derive(Serialize)]
pub struct StreamStart {
    pub experiment_id: i64,
    pub last_seq: i64,
}

/// The experiment streams that carry the events of the compared runs and their certifications.
pub async fn experiment_streams(app: &AppState, entries: &[CompareEntry]) -> anyhow::Result<Vec<StreamStart>> {
    let ids: BTreeSet<i64> = entries
        .iter()
        .flat_map(|e| std::iter::once(e.view.experiment_id).chain(e.certification.as_ref().map(|c| c.experiment_id)))
        .collect();
    let mut out = Vec::new();
    for experiment_id in ids {
        let last_seq = journal::last_seq(&app.store.pool, Scope::Experiment(experiment_id)).await?;
        out.push(StreamStart { experiment_id, last_seq });
    }
    Ok(out)
}
