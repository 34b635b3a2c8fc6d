// What the tables show of a run (an API RunView), shared by the experiment and compare pages.

import { DASH } from './dom.js';

/** The API's run JSON (the run's fields beside `metrics`, `makes_model`, `resumable`, `last_seq`)
 * as {run, metrics, makes_model, resumable, last_seq}. `makes_model` (a train or transfer run: it
 * has a checkpoint, can be a teacher or be certified) is the server's rule; don't list kinds here. */
export function viewOf(json) {
  return {
    run: json,
    metrics: json.metrics || {},
    makes_model: Boolean(json.makes_model),
    resumable: Boolean(json.resumable),
    last_seq: json.last_seq || 0,
  };
}

export function configOf(run) {
  return run.resolved_config || run.config || {};
}

export function epochsOf(run) {
  const optim = configOf(run).optim;
  return optim && Number.isFinite(optim.epochs) ? optim.epochs : null;
}

/** The model's test accuracy: the latest `test/acc` metric, or the final summary's. */
export function testAccuracy(view) {
  const latest = view.metrics && view.metrics['test/acc'];
  if (latest) return latest.value;
  const summary = view.run.summary;
  return summary && Number.isFinite(summary['test/acc']) ? summary['test/acc'] : null;
}

/** Certified accuracy at radius `r` from a certificate summary (`GET …/certificates/summary`). */
export function certifiedAt(summary, r) {
  if (!summary || !summary.n) return null;
  const entry = summary.radii.find((x) => Math.abs(x.radius - r) < 1e-9);
  return entry ? entry.certified_accuracy : null;
}

/** Where the run ran ("cuda:1"), with what it asked for when that says more ("asked: gpu"). */
// Where a run executes: the backend, and what it last said (Slurm: job id, state, reason, node).
export function whereText(run) {
  if (run.kind === 'external' && run.is_certification) return 'imported (a certification file)';
  if (run.kind === 'external') return run.makes_model ? 'imported (a PyTorch checkpoint)' : 'an MLflow client';
  const backend = run.backend || 'local';
  const h = run.handle;
  const st = run.backend_state || {};
  if (!h) return backend;
  if (h.backend === 'slurm') {
    const state = st.state ? ` · ${st.state}` : '';
    const reason = st.state === 'PENDING' && st.reason ? ` (${st.reason})` : '';
    const node = st.node ? ` on ${st.node}` : '';
    return `slurm job ${h.job_id}${state}${reason}${node}`;
  }
  return `local (pid ${h.pid})`;
}

export function deviceText(run) {
  const asked = run.device_request || 'auto';
  if (!run.device) return asked === 'auto' ? DASH : `asked: ${asked}`;
  return asked === 'auto' || asked === run.device ? run.device : `${run.device} (asked: ${asked})`;
}

/** Wall time so far: the stored total plus the running attempt. */
export function wallTime(run, now = Date.now() / 1000) {
  const running = run.status === 'running' && run.started_at ? Math.max(0, now - run.started_at) : 0;
  return run.wall_time_s + running;
}

export function progressFraction(run) {
  const p = run.progress;
  return p && p.total > 0 ? Math.min(1, p.done / p.total) : null;
}

/** The newest certification of `modelId` among `views`, finished ones first. */
export function newestCertification(views, modelId) {
  let best = null;
  for (const v of views) {
    const r = v.run;
    if (r.kind !== 'certify' || r.parents[0] !== modelId) continue;
    const rank = [r.status === 'finished' ? 1 : 0, r.id];
    if (!best || rank[0] > best.rank[0] || (rank[0] === best.rank[0] && rank[1] > best.rank[1])) best = { id: r.id, rank };
  }
  return best ? best.id : null;
}

export const summaryQuery = (radii) => `radii=${radii.join(',')}`;
