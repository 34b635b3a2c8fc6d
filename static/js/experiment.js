// One experiment: its runs in a sortable, filterable table that follows the experiment's event
// stream, multi-select to compare, CSV export.

import { api, apiUpload, pageData } from './api.js';
import { el, pct, num, duration, statusBadge, coalesce, throttleByKey, DASH } from './dom.js';
import { sortRows, toCsv, download, markSorted } from './table.js';
import { subscribe } from './live.js';
import { viewOf, epochsOf, testAccuracy, certifiedAt, wallTime, progressFraction, newestCertification, summaryQuery } from './runs.js';

const data = pageData();
const experimentId = data.experiment.id;
const radii = data.radii;
const views = new Map(data.runs.map((json) => [json.id, viewOf(json)]));
const summaries = new Map(Object.entries(data.summaries).map(([id, s]) => [Number(id), s]));
const selected = new Set();
const filters = { status: '', kind: '', arch: '', method: '' };
let sort = { col: 'id', descending: true };

const table = document.getElementById('runs-table');
const tbody = table.querySelector('tbody');
const compareButton = document.getElementById('compare-selected');
const selectAll = document.getElementById('select-all');

/** The certification whose numbers a row shows: its own, or its model's newest. */
function certificationOf(view) {
  if (view.run.is_certification) return view.run.id;
  return newestCertification([...views.values()], view.run.id);
}

/** Every column's value for sorting, display and CSV. */
function values(view) {
  const run = view.run;
  const certId = certificationOf(view);
  const summary = certId === null ? null : summaries.get(certId);
  const clean = run.is_certification ? (summary && summary.n ? summary.accuracy : null) : testAccuracy(view);
  return {
    id: run.id,
    name: run.name,
    status: run.status,
    kind: run.kind,
    arch: run.arch,
    method: run.method,
    sigma: run.sigma,
    epochs: epochsOf(run),
    clean,
    'r0.25': certifiedAt(summary, 0.25),
    'r0.5': certifiedAt(summary, 0.5),
    'r0.75': certifiedAt(summary, 0.75),
    r1: certifiedAt(summary, 1.0),
    acr: summary && summary.n ? summary.acr : null,
    wall: wallTime(run),
    certId,
    ...Object.fromEntries(Object.entries(run.params || {}).map(([k, val]) => [`param:${k}`, paramValue(val)])),
  };
}

/** A param as logged (text); numbers sort as numbers. */
function paramValue(text) {
  const n = Number(text);
  return text !== '' && Number.isFinite(n) ? n : text;
}

/** Params of external (MLflow) runs become columns, at most this many. */
const MAX_PARAM_COLUMNS = 12;
let paramKeys = [];

function currentParamKeys() {
  const keys = new Set();
  for (const v of views.values()) for (const k of Object.keys(v.run.params || {})) keys.add(k);
  return [...keys].sort().slice(0, MAX_PARAM_COLUMNS);
}

/** Keeps one header cell per param key after the fixed columns. */
function syncParamHeaders() {
  const keys = currentParamKeys();
  if (keys.join('\u0000') === paramKeys.join('\u0000')) return;
  paramKeys = keys;
  const headRow = table.querySelector('thead tr');
  for (const th of headRow.querySelectorAll('th.param-col')) th.remove();
  for (const key of keys) {
    const button = el('button', { type: 'button', class: 'sort', title: `param ${key}` }, key);
    const th = el('th', { scope: 'col', class: 'param-col', 'data-col': `param:${key}` }, button);
    button.addEventListener('click', () => sortBy(th.dataset.col));
    headRow.append(th);
  }
}

const CERT_COLUMNS = ['r0.25', 'r0.5', 'r0.75', 'r1'];

function visibleViews() {
  const shown = [...views.values()].filter((v) => Object.entries(filters).every(([k, want]) => !want || v.run[k] === want));
  return sortRows(shown, (v) => values(v)[sort.col], sort.descending);
}

function statusCell(run) {
  const fraction = run.status === 'running' ? progressFraction(run) : null;
  return el('td', { class: 'status-cell' }, statusBadge(run.status, fraction === null ? '' : ` ${Math.floor(fraction * 100)}%`));
}

function certCell(value, v) {
  const derived = v.certId !== null && v.certId !== v.id;
  return el('td', { class: 'num', title: derived ? `from certification run #${v.certId}` : null }, pct(value));
}

function row(view) {
  const v = values(view);
  const id = v.id;
  const box = el('input', { type: 'checkbox', 'aria-label': `Select run #${id}`, 'data-select': id, checked: selected.has(id) });
  box.addEventListener('change', () => {
    if (box.checked) selected.add(id);
    else selected.delete(id);
    updateSelection();
  });
  return el(
    'tr',
    { 'data-id': id, class: selected.has(id) ? 'selected' : null },
    el('td', { class: 'select-col' }, box),
    // Default names already end in "#id".
    el('td', {}, el('a', { class: 'row-title', href: `/runs/${id}` }, v.name.endsWith(`#${id}`) ? null : el('span', { class: 'muted' }, `#${id} `), v.name)),
    statusCell(view.run),
    // Where it ran, under its kind: a column of its own would not fit beside the results.
    el('td', {}, v.kind, view.run.device ? el('div', { class: 'row-sub', title: 'device' }, view.run.device) : null),
    el('td', {}, v.arch ?? DASH),
    el('td', {}, v.method ?? DASH),
    el('td', { class: 'num' }, v.sigma ?? DASH),
    el('td', { class: 'num' }, v.epochs ?? DASH),
    el('td', { class: 'num' }, pct(v.clean)),
    CERT_COLUMNS.map((c) => certCell(v[c], v)),
    el('td', { class: 'num' }, num(v.acr)),
    el('td', { class: 'num wall', 'data-wall': id }, duration(v.wall)),
    paramKeys.map((k) => el('td', { class: 'param-col' }, (view.run.params || {})[k] ?? DASH)),
  );
}

function fillFilterOptions() {
  for (const select of document.querySelectorAll('select[data-filter]')) {
    const key = select.dataset.filter;
    const present = [...new Set([...views.values()].map((v) => v.run[key]).filter(Boolean))].sort();
    const current = select.value;
    select.replaceChildren(el('option', { value: '' }, 'All'), present.map((p) => el('option', { value: p, selected: p === current }, p)));
  }
}

/** Where keyboard focus is in the table (row and element kind), to restore it after a redraw. */
function focusInTable() {
  const active = document.activeElement;
  const tr = active && tbody.contains(active) ? active.closest('tr') : null;
  return tr ? { id: tr.dataset.id, tag: active.tagName.toLowerCase() } : null;
}

const render = coalesce(() => {
  const focused = focusInTable();
  syncParamHeaders();
  const shown = visibleViews();
  tbody.replaceChildren(...shown.map(row));
  document.getElementById('runs-empty').hidden = shown.length > 0;
  document.getElementById('runs-count').textContent = shown.length === views.size ? String(views.size) : `${shown.length} of ${views.size}`;
  markSorted(table, sort.col, sort.descending);
  fillFilterOptions();
  updateSelection();
  if (focused) {
    const again = tbody.querySelector(`tr[data-id="${focused.id}"] ${focused.tag}`);
    if (again) again.focus();
  }
});

function updateSelection() {
  for (const id of [...selected]) if (!views.has(id)) selected.delete(id);
  compareButton.disabled = selected.size < 2;
  compareButton.textContent = selected.size ? `Compare selected (${selected.size})` : 'Compare selected';
  const boxes = [...tbody.querySelectorAll('input[data-select]')];
  selectAll.checked = boxes.length > 0 && boxes.every((b) => b.checked);
  selectAll.indeterminate = !selectAll.checked && boxes.some((b) => b.checked);
  for (const tr of tbody.rows) tr.classList.toggle('selected', selected.has(Number(tr.dataset.id)));
}

// ---- live updates ----

async function refreshRun(id) {
  try {
    const view = viewOf(await api('GET', `/runs/${id}`));
    views.set(id, view);
    if (view.run.is_certification && !summaries.has(id)) refreshSummary(id);
    render();
  } catch (err) {
    if (err.status === 404) {
      views.delete(id);
      render();
    }
  }
}

async function loadSummary(id) {
  try {
    summaries.set(id, await api('GET', `/runs/${id}/certificates/summary?${summaryQuery(radii)}`));
    render();
  } catch {
    // Kept as it was; the next certificate event retries.
  }
}

const refreshRunSoon = throttleByKey(refreshRun, 250);
const refreshSummary = throttleByKey(loadSummary, 1500);

subscribe(`/experiments/${experimentId}/events`, data.last_seq, {
  status: (e) => refreshRunSoon(e.run_id),
  started: (e) => refreshRunSoon(e.run_id),
  progress: (e) => {
    const view = views.get(e.run_id);
    if (!view) return refreshRunSoon(e.run_id);
    view.run.progress = { phase: e.phase, done: e.done, total: e.total, unit: e.unit };
    render();
  },
  metrics: (e) => {
    const view = views.get(e.run_id);
    if (!view) return refreshRunSoon(e.run_id);
    for (const [key, value] of Object.entries(e.values || {})) view.metrics[key] = { step: e.step, epoch: e.epoch, ts: e.ts, value };
    // An MLflow client's batch: points of any keys and steps; the latest per key wins.
    for (const p of e.points || []) {
      const old = view.metrics[p.key];
      if (!old || p.step > old.step || (p.step === old.step && p.ts >= old.ts)) view.metrics[p.key] = { step: p.step, epoch: null, ts: p.ts, value: p.value };
    }
    render();
  },
  certificate: (e) => refreshSummary(e.run_id),
}, document.getElementById('live'));

// Wall time of running runs ticks between events.
setInterval(() => {
  for (const cell of tbody.querySelectorAll('[data-wall]')) {
    const view = views.get(Number(cell.dataset.wall));
    if (view && view.run.status === 'running') cell.textContent = duration(wallTime(view.run));
  }
}, 1000);

// ---- controls ----

function sortBy(col) {
  const textual = ['name', 'kind', 'arch', 'method', 'status'].includes(col) || col.startsWith('param:');
  sort = { col, descending: sort.col === col ? !sort.descending : !textual };
  render();
}

for (const th of table.querySelectorAll('th[data-col]')) {
  th.querySelector('button').addEventListener('click', () => sortBy(th.dataset.col));
}

for (const select of document.querySelectorAll('select[data-filter]')) {
  select.addEventListener('change', () => {
    filters[select.dataset.filter] = select.value;
    render();
  });
}

selectAll.addEventListener('change', () => {
  for (const box of tbody.querySelectorAll('input[data-select]')) {
    const id = Number(box.dataset.select);
    if (selectAll.checked) selected.add(id);
    else selected.delete(id);
  }
  render();
});

compareButton.addEventListener('click', () => {
  const ids = [...selected].sort((a, b) => a - b);
  window.location.assign(`/compare?runs=${ids.join(',')}`);
});

document.getElementById('export-csv').addEventListener('click', () => {
  const header = ['id', 'name', 'status', 'kind', 'arch', 'method', 'sigma', 'epochs', 'clean_accuracy',
    ...radii.filter((r) => r > 0).map((r) => `certified_accuracy_r${r}`), 'acr', 'wall_time_s', 'certification_run', 'device',
    ...paramKeys.map((k) => `param_${k}`)];
  const rows = visibleViews().map((view) => {
    const v = values(view);
    return [v.id, v.name, v.status, v.kind, v.arch, v.method, v.sigma, v.epochs, v.clean, v['r0.25'], v['r0.5'], v['r0.75'], v.r1, v.acr, v.wall.toFixed(1), v.certId, view.run.device ?? '',
      ...paramKeys.map((k) => (view.run.params || {})[k] ?? '')];
  });
  const slug = data.experiment.name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '') || `experiment-${experimentId}`;
  download(`${slug}-runs.csv`, toCsv(header, rows));
});

// ---- imports: a certification made elsewhere (a reference TSV), a reference checkpoint ----

/** Posts the form's file to `path` with the form's `keys` as query parameters; the new run joins
 *  the table, or the server's message (naming the line, key or setting) shows by the form. */
function importForm(prefix, path, keys, contentType, missing) {
  const form = document.getElementById(`${prefix}-form`);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = document.getElementById(`${prefix}-error`);
    const status = document.getElementById(`${prefix}-status`);
    const submit = document.getElementById(`${prefix}-submit`);
    const file = document.getElementById(`${prefix}-file`).files[0];
    error.hidden = true;
    if (!file) {
      error.textContent = missing;
      error.hidden = false;
      return;
    }
    const query = new URLSearchParams();
    for (const key of keys) {
      const value = form.elements[key].value.trim();
      if (value !== '') query.set(key, value);
    }
    submit.disabled = true;
    status.textContent = `Importing ${file.name}…`;
    try {
      const run = await apiUpload(`/experiments/${experimentId}/imports/${path}?${query}`, file, contentType);
      views.set(run.id, viewOf(run));
      await loadSummary(run.id);
      render();
      status.textContent = `Imported as #${run.id} ${run.name}.`;
      form.reset();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
      status.textContent = '';
      const field = err.field && form.elements[err.field];
      if (field) field.focus();
    } finally {
      submit.disabled = false;
    }
  });
}

importForm('import', 'certification', ['sigma', 'n', 'n0', 'alpha', 'name'], 'text/tab-separated-values',
  'Choose the TSV file to import.');
importForm('import-model', 'model', ['arch', 'dataset', 'name', 'normalization', 'sigma'], 'application/octet-stream',
  'Choose the checkpoint file to import.');

render();
