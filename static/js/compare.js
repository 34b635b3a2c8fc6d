// Several runs side by side: certified accuracy at the standard radii with speedups, certified
// accuracy against radius, overlaid metric curves and a parameter diff. Follows the event
// streams of the experiments the runs belong to.

import { api, pageData } from './api.js';
import { el, pct, num, int, duration, coalesce, throttleByKey, DASH } from './dom.js';
import { subscribe } from './live.js';
import { ChartSlot, PALETTE, axisLabel } from './charts.js';
import { MetricStore, CertStore, smooth, positiveOnly, radiusGrid } from './metrics.js';
import { toCsv, download } from './table.js';
import { viewOf, certifiedAt, configOf, wallTime, summaryQuery } from './runs.js';

const data = pageData();
const radii = data.radii;
const $ = (id) => document.getElementById(id);

/** One compared run: its view, the certification describing it, and their data. */
const entries = data.entries.map((e, i) => ({
  view: viewOf(e.view),
  certId: e.certification ? e.certification.id : null,
  summary: e.summary,
  color: PALETTE[i % PALETTE.length],
  metrics: new MetricStore(),
  certs: new CertStore(),
}));
const byRun = (id) => entries.find((e) => e.view.run.id === id);
const byCert = (id) => entries.filter((e) => e.certId === id);
const label = (e) => `#${e.view.run.id} ${e.view.run.name}`;

// ---------- results table ----------

function resultValues(e) {
  const run = e.view.run;
  const s = e.summary && e.summary.n ? e.summary : null;
  const base = byRun(Number($('baseline').value));
  const wall = wallTime(run);
  const baseWall = base ? wallTime(base.view.run) : null;
  return {
    run: label(e),
    kind: run.kind,
    arch: run.arch,
    method: run.method,
    sigma: run.sigma,
    r: radii.map((r) => certifiedAt(s, r)),
    acr: s ? s.acr : null,
    // Sequential certification only: mean estimation samples per image.
    samples: s && s.samples ? s.samples.mean : null,
    wall,
    speedup: baseWall && wall > 0 ? baseWall / wall : null,
  };
}

const renderTable = coalesce(() => {
  const tbody = $('results-table').querySelector('tbody');
  tbody.replaceChildren(...entries.map((e) => {
    const v = resultValues(e);
    const certNote = e.certId !== null && e.certId !== e.view.run.id ? el('div', { class: 'row-sub' }, 'certified by ', el('a', { href: `/runs/${e.certId}` }, `#${e.certId}`)) : null;
    return el('tr', { 'data-id': e.view.run.id },
      el('td', {}, el('span', { class: 'swatch', style: `background:${e.color}` }), el('a', { href: `/runs/${e.view.run.id}` }, v.run), certNote),
      el('td', {}, v.kind), el('td', {}, v.arch ?? DASH), el('td', {}, v.method ?? DASH), el('td', { class: 'num' }, v.sigma ?? DASH),
      v.r.map((x) => el('td', { class: 'num' }, pct(x))),
      el('td', { class: 'num' }, num(v.acr), v.samples === null ? null : el('div', { class: 'row-sub', title: 'mean estimation samples per image (sequential certification)' }, `${int(Math.round(v.samples))} samples/image`)),
      el('td', { class: 'num' }, duration(v.wall)),
      el('td', { class: 'num' }, v.speedup === null ? DASH : `${v.speedup.toFixed(2)}×`));
  }));
});

$('baseline').addEventListener('change', renderTable);
$('export-csv').addEventListener('click', () => {
  const header = ['run_id', 'name', 'kind', 'arch', 'method', 'sigma', ...radii.map((r) => `certified_accuracy_r${r}`), 'acr', 'wall_time_s', `speedup_vs_${$('baseline').value}`, 'certification_run', 'samples_mean'];
  const rows = entries.map((e) => {
    const v = resultValues(e);
    return [e.view.run.id, e.view.run.name, v.kind, v.arch, v.method, v.sigma, ...v.r, v.acr, v.wall.toFixed(1), v.speedup === null ? null : v.speedup.toFixed(3), e.certId, v.samples];
  });
  download(`compare-${entries.map((e) => e.view.run.id).join('-')}.csv`, toCsv(header, rows));
});

// ---------- certified accuracy against radius ----------

const radiusSlot = new ChartSlot($('radius-chart'), 300);
const drawRadius = coalesce(() => {
  const shown = entries.filter((e) => e.certs.size > 0);
  $('radius-empty').hidden = shown.length > 0;
  $('radius-chart').hidden = shown.length === 0;
  if (!shown.length) return;
  const xs = radiusGrid(Math.max(...shown.map((e) => e.certs.maxRadius())));
  radiusSlot.render(
    { series: shown.map((e) => ({ label: label(e), color: e.color })), xLabel: 'L2 radius', percent: true, yRange: [0, 1] },
    [xs, ...shown.map((e) => e.certs.curve(xs))],
  );
});

// ---------- metric curves ----------

const curveSlot = new ChartSlot($('curve-chart'), 300);

/** Test accuracy once it is a curve (two evaluations or more), until then the training loss. */
function defaultMetric(keys) {
  const points = (key) => Math.max(0, ...entries.map((e) => (e.metrics.series.get(key) || new Map()).size));
  return ['test/acc', 'train/loss', 'train/acc'].find((k) => points(k) >= 2) || keys[0];
}

function fillMetricChoices() {
  const select = $('metric');
  const keys = [...new Set(entries.flatMap((e) => e.metrics.keys()))].sort();
  const current = select.dataset.chosen || defaultMetric(keys);
  if ([...select.options].map((o) => o.value).join() !== keys.join()) {
    select.replaceChildren(...keys.map((k) => el('option', { value: k }, k)));
  }
  if (current) select.value = current;
  return keys;
}

const drawCurves = coalesce(() => {
  const keys = fillMetricChoices();
  const key = $('metric').value;
  const shown = entries.filter((e) => e.metrics.series.has(key));
  $('curves-empty').hidden = keys.length > 0;
  $('curve-chart').hidden = keys.length === 0;
  if (!shown.length) return;
  const axis = $('x-axis').value;
  const log = $('log-scale').checked;
  const weight = Number($('smoothing').value);
  // One x column for all runs: the union of their x values, each run's y where it has one.
  const columns = shown.map((e) => e.metrics.aligned([key], axis));
  const xs = [...new Set(columns.flatMap((c) => c[0]))].sort((a, b) => a - b);
  const ys = columns.map(([cx, cy]) => {
    const at = new Map(cx.map((x, i) => [x, cy[i]]));
    const values = xs.map((x) => (at.has(x) ? at.get(x) : null));
    return smooth(log ? positiveOnly(values) : values, weight);
  });
  curveSlot.render(
    { series: shown.map((e) => ({ label: label(e), color: e.color })), xLabel: axisLabel(axis), log, percent: /acc/.test(key) && !log },
    [xs, ...ys],
  );
});

$('metric').addEventListener('change', () => {
  $('metric').dataset.chosen = $('metric').value;
});
for (const id of ['metric', 'x-axis', 'log-scale']) $(id).addEventListener('change', drawCurves);
$('smoothing').addEventListener('input', () => {
  $('smoothing-value').textContent = $('smoothing').value;
  drawCurves();
});

// ---------- parameters ----------

/** Paths the server fills per run (directories); they always differ and say nothing. */
const SERVER_PATHS = ['out_dir', 'data.data_dir', 'data_dir', 'teacher', 'model.path', 'resume'];

function flatten(value, prefix = '', out = {}) {
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (!SERVER_PATHS.includes(prefix)) {
    out[prefix] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

function renderParams() {
  const flat = entries.map((e) => flatten(configOf(e.view.run)));
  const keys = [...new Set(flat.flatMap(Object.keys))].sort();
  const onlyDiff = $('only-diff').checked;
  const table = $('params-table');
  table.querySelector('thead').replaceChildren(el('tr', {}, el('th', { scope: 'col' }, 'Parameter'),
    entries.map((e) => el('th', { scope: 'col' }, el('span', { class: 'swatch', style: `background:${e.color}` }), `#${e.view.run.id}`))));
  const rows = [];
  for (const key of keys) {
    const values = flat.map((f) => (key in f ? f[key] : null));
    const differs = new Set(values.map((v) => JSON.stringify(v))).size > 1;
    if (onlyDiff && !differs) continue;
    rows.push(el('tr', { class: differs ? 'differs' : null },
      el('th', { scope: 'row' }, key, differs ? el('span', { class: 'visually-hidden' }, ' (differs)') : null),
      values.map((v) => el('td', {}, v === null || v === undefined ? DASH : String(v)))));
  }
  table.querySelector('tbody').replaceChildren(...rows);
}
$('only-diff').addEventListener('change', renderParams);

// ---------- loading and live updates ----------

async function loadMetrics(e) {
  if (!e.view.makes_model) return;
  e.metrics.addHistory(await api('GET', `/runs/${e.view.run.id}/metrics?points=2000`));
  drawCurves();
}

async function loadCerts(e) {
  if (e.certId === null) return;
  for (const c of await api('GET', `/runs/${e.certId}/certificates?limit=100000`)) e.certs.add(c);
  drawRadius();
}

async function refreshSummary(certId) {
  const summary = await api('GET', `/runs/${certId}/certificates/summary?${summaryQuery(radii)}`);
  for (const e of byCert(certId)) e.summary = summary;
  renderTable();
}

async function refreshRun(id) {
  const e = byRun(id);
  if (e) {
    e.view = viewOf(await api('GET', `/runs/${id}`));
    renderTable();
    renderParams();
    return;
  }
  // A new certification of a compared model takes over its certified numbers.
  const fresh = viewOf(await api('GET', `/runs/${id}`));
  const model = fresh.run.kind === 'certify' ? byRun(fresh.run.parents[0]) : null;
  if (model && (model.certId === null || fresh.run.id > model.certId)) {
    Object.assign(model, { certId: fresh.run.id, summary: null, certs: new CertStore() });
    await loadCerts(model);
    await refreshSummary(fresh.run.id);
  }
}

const refreshRunSoon = throttleByKey((id) => refreshRun(id).catch(() => {}), 300);
const refreshSummarySoon = throttleByKey((id) => refreshSummary(id).catch(() => {}), 1500);

const handlers = {
  // Re-read every run when a stream (re)connects: nothing changed between page and stream is lost.
  open: () => entries.forEach((e) => refreshRunSoon(e.view.run.id)),
  status: (ev) => refreshRunSoon(ev.run_id),
  metrics: (ev) => {
    const e = byRun(ev.run_id);
    if (!e) return;
    e.metrics.addEvent(ev);
    drawCurves();
  },
  certificate: (ev) => {
    const list = byCert(ev.run_id);
    if (!list.length) return;
    list.forEach((e) => e.certs.add(ev));
    drawRadius();
    refreshSummarySoon(ev.run_id);
  },
};
const indicator = $('live');
for (const s of data.streams) subscribe(`/experiments/${s.experiment_id}/events`, s.last_seq, handlers, indicator);

entries.forEach((e) => {
  loadMetrics(e).catch(() => {});
  loadCerts(e).catch(() => {});
});
renderTable();
renderParams();
drawRadius();
drawCurves();
setInterval(() => {
  if (entries.some((e) => e.view.run.status === 'running')) renderTable();
}, 1000);
