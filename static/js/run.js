// One run: status with progress and ETA, live training curves, certification results, log tail,
// artifacts, and the stop / resume / certify actions. Everything follows the run's event stream.

import { api, pageData } from './api.js';
import { el, pct, num, int, duration, dateTime, bytes, coalesce, throttleByKey, setupDialog, DASH } from './dom.js';
import { subscribe } from './live.js';
import { ChartSlot, PALETTE, axisLabel } from './charts.js';
import { MetricStore, CertStore, smooth, positiveOnly, radiusGrid } from './metrics.js';
import { viewOf, wallTime, summaryQuery, deviceText, whereText } from './runs.js';
import './launch.js';

const data = pageData();
let view = viewOf(data.run);
const runId = view.run.id;
const radii = data.radii;
const $ = (id) => document.getElementById(id);

// ---------- status, progress, ETA ----------

const eta = { phase: null, t0: 0, done0: 0, text: '' };

/** Remaining time from the rate since the phase's first progress event seen on this page. */
function updateEta(p, ts) {
  if (p.phase !== eta.phase || p.done < eta.done0) Object.assign(eta, { phase: p.phase, t0: ts, done0: p.done });
  const elapsed = ts - eta.t0;
  const rate = elapsed > 0.5 ? (p.done - eta.done0) / elapsed : 0;
  eta.text = rate > 0 && p.done < p.total ? `ETA ${duration((p.total - p.done) / rate)}` : '';
}

function renderProgress() {
  const run = view.run;
  const p = run.progress;
  const bar = $('progress');
  let fraction = p && p.total > 0 ? Math.min(1, p.done / p.total) : 0;
  if (run.status === 'finished') fraction = 1;
  bar.querySelector('.progress-fill').style.width = `${(fraction * 100).toFixed(1)}%`;
  bar.setAttribute('aria-valuenow', String(Math.round(fraction * 100)));
  bar.dataset.state = run.status;
  $('progress-text').textContent = p ? `${p.phase}: ${int(p.done)} / ${int(p.total)} ${p.unit} (${Math.floor(fraction * 100)}%)` : run.status === 'queued' ? 'waiting in the queue' : 'no progress reported';
  $('eta').textContent = run.status === 'running' ? eta.text : '';
}

function summaryText(summary) {
  if (!summary || !Object.keys(summary).length) return DASH;
  return Object.entries(summary).map(([k, v]) => `${k} ${/acc/.test(k) ? pct(v, 2) : num(v, 4)}`).join(' · ');
}

function renderStatus() {
  const run = view.run;
  const badge = $('run-status');
  badge.className = `badge badge-lg status-${run.status}`;
  badge.textContent = run.status;
  $('fact-wall').textContent = duration(wallTime(run));
  $('fact-started').textContent = dateTime(run.started_at);
  $('fact-finished').textContent = dateTime(run.finished_at);
  $('fact-attempt').textContent = String(run.attempt);
  $('fact-device').textContent = deviceText(run);
  $('fact-where').textContent = whereText(run);
  $('fact-results').textContent = summaryText(run.summary);
  const error = $('run-error');
  error.hidden = !run.error;
  error.textContent = run.error || '';
  // External runs are ended by their MLflow client, not from here.
  $('stop-run').hidden = run.kind === 'external' || !['queued', 'running'].includes(run.status);
  const lastWrite = document.getElementById('fact-last-write');
  if (lastWrite && run.last_write_at) lastWrite.textContent = dateTime(run.last_write_at);
  $('resume-run').hidden = !view.resumable;
  renderProgress();
}

function renderConfig() {
  const config = document.getElementById('config');
  if (config) config.textContent = JSON.stringify(view.run.resolved_config || view.run.config, null, 2);
}

async function refreshRun() {
  try {
    view = viewOf(await api('GET', `/runs/${runId}`));
    renderStatus();
    renderConfig();
  } catch {
    // The next event retries.
  }
}
const refreshRunSoon = throttleByKey(refreshRun, 200);

// ---------- actions ----------

async function action(path) {
  const box = $('action-error');
  box.hidden = true;
  try {
    view = viewOf(await api('POST', `/runs/${runId}/${path}`));
    renderStatus();
  } catch (err) {
    box.textContent = err.message;
    box.hidden = false;
  }
}
$('stop-run').addEventListener('click', () => action('stop'));
$('resume-run').addEventListener('click', () => action('resume'));
const certifyDialog = $('certify-dialog');
if (certifyDialog) {
  setupDialog(certifyDialog);
  $('certify-run').addEventListener('click', () => {
    certifyDialog.showModal();
    const first = certifyDialog.querySelector('input:not([type="hidden"])');
    if (first) first.focus();
  });
}

// ---------- training curves ----------

const metrics = new MetricStore();
const GROUPS = [
  { id: 'loss', title: 'Loss', test: (k) => /loss/.test(k) },
  { id: 'acc', title: 'Accuracy', test: (k) => /acc/.test(k), percent: true },
  { id: 'lr', title: 'Learning rate', test: (k) => k === 'lr' || /(^|\/)lr$/.test(k) },
  { id: 'other', title: 'Other metrics', test: () => true },
];
const slots = new Map();

function chartSlot(group) {
  if (!slots.has(group.id)) {
    const box = el('div', { class: 'chart-box', 'data-group': group.id }, el('h3', { class: 'chart-title' }, group.title), el('div', { class: 'chart', role: 'img', 'aria-label': `${group.title} chart` }));
    const order = GROUPS.map((g) => g.id);
    const after = [...$('charts').querySelectorAll('.chart-box')].find((b) => order.indexOf(b.dataset.group) > order.indexOf(group.id));
    $('charts').insertBefore(box, after || null);
    slots.set(group.id, new ChartSlot(box.querySelector('.chart'), 240));
  }
  return slots.get(group.id);
}

function groupKeys() {
  const groups = new Map();
  for (const key of metrics.keys()) {
    const group = GROUPS.find((g) => g.test(key));
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(key);
  }
  return groups;
}

const drawCharts = coalesce(() => {
  if (!$('charts')) return;
  const axis = $('x-axis').value;
  const log = $('log-scale').checked;
  const weight = Number($('smoothing').value);
  const groups = groupKeys();
  $('charts-empty').hidden = groups.size > 0;
  for (const [group, keys] of groups) {
    // A lone point of a miscellaneous metric (a per-epoch timing) is no curve yet.
    const curve = keys.some((k) => metrics.series.get(k).size >= 2);
    if (group.id === 'other' && !curve && !slots.has(group.id)) continue;
    const [xs, ...ys] = metrics.aligned(keys, axis);
    const series = [];
    const columns = [xs];
    keys.forEach((key, i) => {
      const color = PALETTE[i % PALETTE.length];
      const raw = log ? positiveOnly(ys[i]) : ys[i];
      if (weight > 0) {
        series.push({ label: `${key} (raw)`, color, width: 1, alpha: 0.25 });
        columns.push(raw);
      }
      series.push({ label: key, color });
      columns.push(smooth(raw, weight));
    });
    chartSlot(group).render({ series, xLabel: axisLabel(axis), log, percent: Boolean(group.percent) && !log }, columns);
  }
});

// ---------- certification ----------

const certs = new CertStore();
let certSummary = null;
let showAllCerts = false;
const CERT_ROWS = 200;
const certSlot = $('cert-chart') ? new ChartSlot($('cert-chart'), 280) : null;

function renderCertStats() {
  const s = certSummary;
  const total = view.run.progress && view.run.progress.unit === 'images' ? view.run.progress.total : null;
  const tile = (label, value, note) => el('div', { class: 'stat' }, el('div', { class: 'stat-label' }, label), el('div', { class: 'stat-value' }, value), note ? el('div', { class: 'stat-note' }, note) : null);
  const at = (r) => (s && s.n ? s.radii.find((x) => Math.abs(x.radius - r) < 1e-9) : null);
  $('cert-stats').replaceChildren(
    tile('Images', s ? int(s.n) : DASH, total ? `of ${int(total)}` : null),
    tile('Smoothed accuracy', pct(s && s.n ? s.accuracy : null), 'certified at r = 0'),
    tile('ACR', num(s && s.n ? s.acr : null), 'average certified radius'),
    tile('Abstained', pct(s && s.n ? s.abstain_rate : null)),
    ...radii.filter((r) => r > 0).map((r) => tile(`r = ${r}`, pct(at(r) ? at(r).certified_accuracy : null), 'certified accuracy')),
    // Sequential certification: estimation samples per image (fixed N draws N for every image).
    ...(s && s.samples ? [
      tile('Samples / image', int(Math.round(s.samples.mean)), `mean; median ${int(s.samples.median)}, p90 ${int(s.samples.p90)}, max ${int(s.samples.max)}`),
      tile('Decisions', Object.entries(s.samples.decisions).map(([d, k]) => `${d.replace('_', ' ')} ${int(k)}`).join(', ')),
    ] : []),
  );
  renderPLowerHistogram(s);
}

/** The distribution of the lower confidence bounds on p_A (20 bins over [0, 1]), as bars. */
function renderPLowerHistogram(s) {
  const chart = $('cert-chart');
  if (!chart) return;
  let box = $('cert-plower');
  if (!box) {
    box = el('div', { class: 'chart-box', id: 'cert-plower' },
      el('h3', { class: 'chart-title' }, 'Images by lower bound on p', el('sub', {}, 'A')),
      el('div', { class: 'plower-bars', role: 'img', 'aria-label': 'Histogram of the lower confidence bounds on pA',
        style: 'display:flex;align-items:flex-end;gap:2px;height:120px' }),
      el('div', { class: 'stat-note', style: 'display:flex;justify-content:space-between' }, el('span', {}, '0'), el('span', {}, '0.5'), el('span', {}, '1')));
    chart.closest('.chart-box').after(box);
  }
  const bins = s && s.p_lower_histogram ? s.p_lower_histogram : [];
  const top = Math.max(1, ...bins);
  box.hidden = !bins.some((k) => k > 0);
  box.querySelector('.plower-bars').replaceChildren(...bins.map((k, i) => el('div', {
    title: `${(i / bins.length).toFixed(2)}–${((i + 1) / bins.length).toFixed(2)}: ${k} images`,
    style: `flex:1;background:${PALETTE[0]};opacity:0.8;height:${(100 * k) / top}%;min-height:${k ? 1 : 0}px`,
  })));
}

const drawCerts = coalesce(() => {
  if (!certSlot) return;
  const list = certs.list();
  const xs = radiusGrid(certs.maxRadius());
  certSlot.render({ series: [{ label: 'certified accuracy', color: PALETTE[0] }], xLabel: 'L2 radius', percent: true, yRange: [0, 1] }, [xs, certs.curve(xs)]);
  const shown = (showAllCerts ? list : list.slice(-CERT_ROWS)).reverse();
  $('cert-table').querySelector('tbody').replaceChildren(...shown.map((c) => el('tr', { class: c.correct ? null : 'wrong' },
    el('td', { class: 'num' }, c.idx),
    el('td', { class: 'num' }, c.label),
    el('td', { class: 'num' }, c.predict < 0 ? 'abstain' : c.predict),
    el('td', { class: 'num' }, c.radius === undefined || c.radius === null ? DASH : c.radius.toFixed(3)),
    el('td', { class: 'num', title: c.samples ? `${c.decision}: ${int(c.samples)} samples, p_A in [${c.p_lower.toFixed(4)}, ${c.p_upper.toFixed(4)}]` : null }, c.p_lower === undefined || c.p_lower === null ? DASH : c.p_lower.toFixed(4)),
    el('td', {}, c.correct ? el('span', { class: 'ok' }, '✓ correct') : el('span', { class: 'bad' }, c.predict < 0 ? '– abstained' : '✗ wrong')),
    el('td', { class: 'num' }, duration(c.time)),
  )));
  $('cert-count').textContent = list.length ? `(${showAllCerts || list.length <= CERT_ROWS ? list.length : `newest ${CERT_ROWS} of ${list.length}`})` : '';
  $('cert-more').hidden = showAllCerts || list.length <= CERT_ROWS;
});

async function loadSummary() {
  try {
    certSummary = await api('GET', `/runs/${runId}/certificates/summary?${summaryQuery(radii)}`);
    renderCertStats();
  } catch {
    // The next certificate event retries.
  }
}
const loadSummarySoon = throttleByKey(loadSummary, 1000);

// ---------- artifacts ----------

const artifacts = new Map(data.artifacts.map((a) => [a.path, a]));

function renderArtifacts() {
  const list = [...artifacts.values()].sort((a, b) => a.path.localeCompare(b.path));
  $('artifacts').replaceChildren(...list.map((a) => el('li', {},
    el('a', { href: `/api/v1/runs/${runId}/artifacts/${a.path.split('/').map(encodeURIComponent).join('/')}`, download: a.path.split('/').pop(), title: `sha256 ${a.sha256}` }, a.path),
    el('span', { class: 'chip' }, a.kind),
    el('span', { class: 'muted' }, bytes(a.size)))));
  $('artifacts-empty').hidden = list.length > 0;
}

// ---------- log ----------

const MAX_LOG_LINES = 2000;
const logLines = new Map(); // id → line, as fetched or streamed
const shownLog = []; // ids in the box, in order
const logBox = $('log');
const follow = $('follow-log');

function logLine(l) {
  const time = new Date(l.ts * 1000).toLocaleTimeString(undefined, { hour12: false });
  return el('div', { class: `log-line stream-${l.stream}${l.level ? ` level-${l.level}` : ''}` },
    el('time', {}, time), el('span', { class: 'log-stream' }, l.stream), el('span', { class: 'log-text' }, l.line));
}

// Lines usually arrive in order and are appended; a late page of history rebuilds the box.
const renderLog = coalesce(() => {
  const shown = new Set(shownLog);
  const fresh = [...logLines.keys()].filter((id) => !shown.has(id)).sort((a, b) => a - b);
  if (!fresh.length) return;
  if (!shownLog.length || fresh[0] > shownLog[shownLog.length - 1]) {
    logBox.append(...fresh.map((id) => logLine(logLines.get(id))));
    shownLog.push(...fresh);
  } else {
    shownLog.splice(0, shownLog.length, ...[...logLines.keys()].sort((a, b) => a - b));
    logBox.replaceChildren(...shownLog.map((id) => logLine(logLines.get(id))));
  }
  while (shownLog.length > MAX_LOG_LINES) {
    logLines.delete(shownLog.shift());
    logBox.firstElementChild.remove();
  }
  if (follow.checked) logBox.scrollTop = logBox.scrollHeight;
});

function addLog(l) {
  logLines.set(l.id, l);
  renderLog();
}

logBox.addEventListener('scroll', () => {
  follow.checked = logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 24;
});
follow.addEventListener('change', () => {
  if (follow.checked) logBox.scrollTop = logBox.scrollHeight;
});

// ---------- wiring ----------

subscribe(`/runs/${runId}/events`, view.last_seq, {
  open: refreshRun,
  status: (e) => {
    view.run.status = e.status;
    renderStatus();
    refreshRunSoon('run');
  },
  started: () => refreshRunSoon('run'),
  launched: () => refreshRunSoon('run'),
  backend: () => refreshRunSoon('run'),
  progress: (e) => {
    view.run.progress = { phase: e.phase, done: e.done, total: e.total, unit: e.unit };
    updateEta(e, e.ts);
    renderProgress();
  },
  metrics: (e) => {
    metrics.addEvent(e);
    if ($('charts')) $('charts').dataset.liveEvents = String(Number($('charts').dataset.liveEvents || 0) + 1);
    drawCharts();
  },
  certificate: (e) => {
    certs.add(e);
    drawCerts();
    loadSummarySoon('summary');
  },
  artifact: (e) => {
    artifacts.set(e.path, e);
    renderArtifacts();
  },
  log: addLog,
}, $('live'));

if ($('charts')) {
  for (const id of ['x-axis', 'log-scale']) $(id).addEventListener('change', drawCharts);
  $('smoothing').addEventListener('input', () => {
    $('smoothing-value').textContent = $('smoothing').value;
    drawCharts();
  });
  api('GET', `/runs/${runId}/metrics?points=3000`).then((h) => {
    metrics.addHistory(h);
    drawCharts();
  }).catch(() => {});
}

if (certSlot) {
  $('cert-more').addEventListener('click', () => {
    showAllCerts = true;
    drawCerts();
  });
  api('GET', `/runs/${runId}/certificates?limit=100000`).then((list) => {
    list.forEach((c) => certs.add(c));
    drawCerts();
  }).catch(() => {});
  renderCertStats();
  loadSummary();
}

api('GET', `/runs/${runId}/logs?tail=true&limit=500`).then((page) => page.lines.forEach(addLog)).catch(() => {});
setInterval(() => {
  if (view.run.status === 'running') $('fact-wall').textContent = duration(wallTime(view.run));
}, 1000);
renderStatus();
renderArtifacts();
