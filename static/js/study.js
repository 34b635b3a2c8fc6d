// A CRT study: the form that creates one (with the MNIST quick-start preset), and the study
// page, whose comparison table and certified-accuracy chart refill as the study's runs end.

import { api, ApiError, pageData } from './api.js';
import { ChartSlot, PALETTE } from './charts.js';
import { CertStore, radiusGrid } from './metrics.js';
import { showError, clearErrors, busy } from './forms.js';

/** Sized to finish in a few minutes on a laptop CPU: a LeNet teacher trained with Gaussian
 * noise for one epoch on 10 000 images, one linear student, 30 certified test images. */
export const QUICK_START = {
  name: 'Quick start: CRT on MNIST',
  dataset: 'mnist',
  // A robust (SmoothAdv) teacher, so the baseline pays what robust training costs and the
  // speedup column means something; small enough to finish in minutes on a laptop CPU.
  teacher: {
    arch: 'lenet',
    method: { name: 'smoothadv', sigma: 0.25, m: 4, steps: 2, epsilon: 0.5, warmup_epochs: 1 },
    epochs: 2,
  },
  students: ['mlp'],
  transfer: { logit_weight: 1 },
  certify: { n0: 100, n: 1000, alpha: 0.001, skip: 200, max: 50 },
  train_subset: 20000,
};

async function start(body) {
  const created = await api('POST', '/studies', body);
  window.location.assign(`/studies/${created.experiment_id}`);
}

function formBody(form) {
  const v = (path) => form.querySelector(`[data-path="${path}"]`).value.trim();
  const n = (path) => (v(path) === '' ? undefined : Number(v(path)));
  const body = {
    name: v('name'),
    dataset: v('dataset'),
    teacher: { arch: v('teacher.arch'), method: { name: v('teacher.method.name'), sigma: n('teacher.method.sigma') }, epochs: n('teacher.epochs') },
    students: v('students').split(',').map((s) => s.trim()).filter(Boolean),
    transfer: { logit_weight: n('transfer.logit_weight') },
    certify: { n0: n('certify.n0'), n: n('certify.n'), alpha: n('certify.alpha'), skip: n('certify.skip'), max: n('certify.max') },
    train_subset: n('train_subset'),
    test_subset: n('test_subset'),
  };
  const rows = [...form.querySelectorAll('#s-baseline-list .baseline-row')];
  // No rows: the field stays out and the server trains one baseline the teacher's way.
  if (rows.length > 0) {
    body.baselines = rows.map((row, i) => {
      const path = (key) => `baselines[${i}].${key}`;
      const params = v(path('method.params'));
      let extra = {};
      if (params !== '') {
        try {
          extra = JSON.parse(params);
        } catch {
          // Shown next to the input, as the server's own field errors are; nothing is sent.
          throw new ApiError(0, 'not JSON: write the parameters as an object, e.g. {"k": 4}', path('method.params'));
        }
        if (extra === null || typeof extra !== 'object' || Array.isArray(extra)) {
          throw new ApiError(0, 'must be a JSON object, e.g. {"k": 4}', path('method.params'));
        }
      }
      return {
        method: { ...extra, name: v(path('method.name')), sigma: n(path('method.sigma')) ?? extra.sigma },
        epochs: n(path('epochs')),
      };
    });
  }
  const optims = optimizerBody(form);
  if (optims) body.arch_optim = optims;
  return body;
}

/** The optimizer rows as `arch_optim` ({arch: {optimizer, lr, weight_decay}}), or nothing when
 * there are none (every run then keeps SGD). */
function optimizerBody(form) {
  const rows = [...form.querySelectorAll('#s-optim-list .optim-row')];
  if (rows.length === 0) return undefined;
  const out = {};
  for (const row of rows) {
    const get = (key) => row.querySelector(`[data-key="${key}"]`).value.trim();
    const num = (key) => (get(key) === '' ? undefined : Number(get(key)));
    const arch = get('arch');
    if (arch in out) {
      throw new ApiError(0, `${arch} is listed twice: one optimizer per architecture`, `arch_optim.${arch}`);
    }
    out[arch] = { optimizer: { name: get('optimizer.name') }, lr: num('lr'), weight_decay: num('weight_decay') };
  }
  return out;
}

/** Gives each optimizer row's inputs ids, labels and the `data-path` the server's errors name,
 * which is keyed by the row's architecture (`arch_optim.vit.lr`). */
function numberOptimizers(list) {
  [...list.querySelectorAll('.optim-row')].forEach((row, i) => {
    const arch = row.querySelector('[data-key="arch"]').value;
    for (const input of row.querySelectorAll('[data-key]')) {
      const key = input.dataset.key;
      input.id = `s-o${i}-${key.replace(/\W/g, '-')}`;
      input.dataset.path = key === 'arch' ? `arch_optim.${arch}` : `arch_optim.${arch}.${key}`;
      const label = row.querySelector(`label[data-for="${key}"]`);
      if (label) label.htmlFor = input.id;
    }
  });
}

/** Gives each baseline row's inputs their list index: ids, labels and the `data-path` the
 * server's error names (`baselines[1].method.sigma`). */
function numberBaselines(list) {
  [...list.querySelectorAll('.baseline-row')].forEach((row, i) => {
    for (const input of row.querySelectorAll('[data-key]')) {
      const key = input.dataset.key;
      input.id = `s-b${i}-${key.replace(/\W/g, '-')}`;
      input.dataset.path = `baselines[${i}].${key}`;
      const label = row.querySelector(`label[data-for="${key}"]`);
      if (label) label.htmlFor = input.id;
    }
  });
}

/** A list of rows made from a <template>: an add button appends one, each row's [data-remove]
 * button removes it, and `renumber` refreshes the rows' ids and error paths after either. */
function setupRows(form, { list, template, add, row, renumber }) {
  const listEl = document.getElementById(list);
  const templateEl = document.getElementById(template);
  document.getElementById(add).addEventListener('click', () => {
    listEl.append(templateEl.content.cloneNode(true));
    renumber(listEl);
    listEl.lastElementChild.querySelector('select').focus();
  });
  listEl.addEventListener('click', (event) => {
    const remove = event.target.closest('[data-remove]');
    if (!remove) return;
    remove.closest(row).remove();
    clearErrors(form);
    renumber(listEl);
  });
  listEl.addEventListener('change', () => renumber(listEl));
}

function setupForm(form) {
  setupRows(form, { list: 's-baseline-list', template: 's-baseline-row', add: 's-add-baseline', row: '.baseline-row', renumber: numberBaselines });
  setupRows(form, { list: 's-optim-list', template: 's-optim-row', add: 's-add-optim', row: '.optim-row', renumber: numberOptimizers });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearErrors(form);
    busy(form, () =>
      Promise.resolve()
        .then(() => start(formBody(form)))
        .catch((e) => showError(form, e)),
    );
  });
  document.getElementById('study-quick').addEventListener('click', () => {
    clearErrors(form);
    busy(form, () => start(QUICK_START).catch((e) => showError(form, e)));
  });
  // The dashboard's "Quick start" link lands here with ?quick=1: one click starts the study.
  if (new URLSearchParams(window.location.search).get('quick') === '1') {
    busy(form, () => start(QUICK_START).catch((e) => showError(form, e)));
  }
}

const fmt = {
  pct: (x) => (x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)}%`),
  num: (x, d = 3) => (x === null || x === undefined ? '—' : x.toFixed(d)),
};

function cell(text, numeric = false) {
  const td = document.createElement('td');
  if (numeric) td.className = 'num';
  td.textContent = text;
  return td;
}

function runLink(id, status) {
  const td = document.createElement('td');
  if (id === null || id === undefined) {
    td.textContent = '—';
    return td;
  }
  const a = document.createElement('a');
  a.href = `/runs/${id}`;
  a.className = `chip status-${status}`;
  a.textContent = status;
  td.append(a);
  return td;
}

/** Certified accuracy with its binomial standard error, e.g. "60.0% ± 4.9%". */
function pctSe(p, se) {
  if (p === null || p === undefined) return '—';
  return se === null || se === undefined ? fmt.pct(p) : `${fmt.pct(p)} ± ${fmt.pct(se)}`;
}

const speedupText = (s) => (s === null || s === undefined ? '—' : `${s.toFixed(2)}×`);

function modelRow(r) {
  const tr = document.createElement('tr');
  tr.dataset.role = r.role;
  if (r.role_kind === 'baseline') tr.className = 'row-baseline';
  tr.append(
    cell(r.role),
    cell(r.arch ?? '—'),
    runLink(r.train_run, r.train_status),
    runLink(r.certify_run, r.certify_status),
    cell(fmt.pct(r.test_acc), true),
    cell(fmt.pct(r.clean_acc), true),
    ...r.certified_acc.map((a, i) => cell(pctSe(a, (r.certified_acc_se ?? [])[i]), true)),
    cell(fmt.num(r.acr), true),
    cell(fmt.num(r.train_wall_time_s, 1), true),
    cell(speedupText(r.speedup), true),
  );
  return tr;
}

function groupHead(text, columns) {
  const tr = document.createElement('tr');
  tr.className = 'row-group';
  const th = document.createElement('th');
  th.scope = 'colgroup';
  th.colSpan = columns;
  th.textContent = text;
  tr.append(th);
  return tr;
}

/** The teacher (and any model outside a student's group) first, then each student: its CRT
 * model, then its baselines. */
function drawTable(table) {
  const body = document.querySelector('#study-table tbody');
  const columns = document.querySelectorAll('#study-table thead th').length;
  const byRole = new Map(table.rows.map((r) => [r.role, r]));
  const grouped = new Set();
  const parts = [];
  for (const g of table.students ?? []) {
    const members = [g.crt, ...g.baselines.map((b) => b.role)].filter((role) => byRole.has(role));
    members.forEach((role) => grouped.add(role));
    parts.push(groupHead(`Student ${g.arch}`, columns), ...members.map((role) => modelRow(byRole.get(role))));
  }
  const loose = table.rows.filter((r) => !grouped.has(r.role)).map(modelRow);
  body.replaceChildren(...loose, ...parts);
  drawLineage(table);
  document.getElementById('study-state').textContent = table.done ? 'all runs ended' : 'running…';
}

function chip(r) {
  const a = document.createElement('a');
  a.href = `/runs/${r.train_run}`;
  a.className = `chip status-${r.train_status}`;
  a.textContent = r.train_status;
  return a;
}

function describe(r) {
  const method = r.method ? ` · ${r.method}${r.sigma !== null && r.sigma !== undefined ? ` σ=${r.sigma}` : ''}` : '';
  return `${r.role} (${r.arch ?? '?'}${method}) `;
}

/** The models as a tree by parent (teacher → CRT students → …, one level per generation), each
 * student's baselines listed beside its CRT model with CRT's speedup against each. */
function drawLineage(table) {
  const list = document.getElementById('study-lineage');
  if (!list) return;
  const baselineRoles = new Set((table.students ?? []).flatMap((g) => g.baselines.map((b) => b.role)));
  const versusOf = new Map((table.students ?? []).filter((g) => g.crt).map((g) => [g.crt, g.baselines]));
  const byRole = new Map(table.rows.map((r) => [r.role, r]));
  const node = (r) => {
    const li = document.createElement('li');
    li.dataset.role = r.role;
    li.dataset.generation = r.generation;
    const head = document.createElement('span');
    head.className = 'lineage-model';
    head.append(describe(r), chip(r));
    li.append(head);
    const versus = versusOf.get(r.role) ?? [];
    if (versus.length > 0) {
      const beside = document.createElement('span');
      beside.className = 'lineage-baselines muted';
      beside.textContent = ` beside baselines: ${versus
        .map((v) => `${v.label} (${byRole.get(v.role)?.arch ?? ''}, CRT speedup ${speedupText(v.speedup)})`)
        .join(', ')}`;
      li.append(beside);
    }
    const children = table.rows.filter((c) => c.parent === r.role);
    if (children.length > 0) {
      const ul = document.createElement('ul');
      ul.append(...children.map(node));
      li.append(ul);
    }
    return li;
  };
  // Roots: models trained from scratch that are not some student's baseline.
  const roots = table.rows.filter((r) => (r.parent === null || !byRole.has(r.parent)) && !baselineRoles.has(r.role));
  list.replaceChildren(...roots.map(node));
}

/** Per-image certificates of each finished certification, by certify run id: the chart draws
 * the exact curve from them (as the compare page does), not a line between the summary's radii. */
const certsByRun = new Map();

async function loadCerts(rows) {
  const wanted = rows.filter((r) => r.certify_run !== null && r.certify_status === 'finished' && !certsByRun.has(r.certify_run));
  await Promise.all(
    wanted.map(async (r) => {
      const store = new CertStore();
      for (const c of await api('GET', `/runs/${r.certify_run}/certificates?limit=100000`)) store.add(c);
      certsByRun.set(r.certify_run, store);
    }),
  );
}

function drawChart(slot, table) {
  const shown = table.rows.filter((r) => certsByRun.has(r.certify_run) && certsByRun.get(r.certify_run).size > 0);
  document.getElementById('study-chart-empty').hidden = shown.length > 0;
  if (shown.length === 0) return;
  const stores = shown.map((r) => certsByRun.get(r.certify_run));
  const xs = radiusGrid(Math.max(...stores.map((s) => s.maxRadius())));
  const series = shown.map((r) => ({
    label: r.role,
    color: PALETTE[table.rows.indexOf(r) % PALETTE.length],
    dash: r.role.startsWith('baseline/') ? [6, 4] : undefined,
  }));
  slot.render({ series, xLabel: 'L2 radius', yLabel: 'certified accuracy', percent: true, yRange: [0, 1] }, [xs, ...stores.map((s) => s.curve(xs))]);
}

function setupStudy(initial) {
  const slot = new ChartSlot(document.getElementById('study-chart'), 300);
  const draw = async (table) => {
    drawTable(table);
    await loadCerts(table.rows);
    drawChart(slot, table);
  };
  draw(initial).catch((e) => console.error(e));
  let pending = false;
  const refresh = async () => {
    if (pending) return;
    pending = true;
    try {
      await draw(await api('GET', `/studies/${initial.experiment_id}`));
    } finally {
      pending = false;
    }
  };
  if (initial.done) return;
  // Status changes are what change the table (a run ends with its summary).
  const source = new EventSource(`/api/v1/experiments/${initial.experiment_id}/events`);
  // The stream replays past events first: coalesce bursts into one refetch.
  let timer = null;
  source.addEventListener('status', () => {
    clearTimeout(timer);
    timer = setTimeout(() => refresh().catch(() => {}), 250);
  });
  window.addEventListener('pagehide', () => source.close());
}

const data = pageData();
if (data && data.rows) {
  setupStudy(data);
} else {
  const form = document.getElementById('study-form');
  if (form) setupForm(form);
}
