// The machine's devices on the experiments page: CPU cores and run slots, and each GPU's
// utilisation, memory and the run it is busy with. Polls GET /api/v1/devices while visible.

import { api, pageData } from './api.js';
import { el, DASH } from './dom.js';

const REFRESH_MS = 3000;

const cpuLine = document.getElementById('devices-cpu');
const list = document.getElementById('devices-gpus');
const none = document.getElementById('devices-none');
const error = document.getElementById('devices-error');

function gib(mib) {
  return mib === null || mib === undefined ? DASH : (mib / 1024).toFixed(1);
}

/** A bar for a fraction in [0, 1] (null: unknown), with its text beside it. */
function meter(label, fraction, text) {
  const known = fraction !== null && Number.isFinite(fraction);
  const percent = known ? Math.round(Math.min(1, Math.max(0, fraction)) * 100) : 0;
  return el(
    'div',
    { class: 'meter-row' },
    el('span', { class: 'meter-label' }, label),
    el('div', { class: 'meter', role: 'meter', 'aria-label': label, 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': known ? percent : null },
      el('div', { class: 'meter-fill', style: `width: ${percent}%` })),
    el('span', { class: 'meter-text' }, text),
  );
}

function gpuItem(g) {
  const util = g.utilization_pct === null ? null : g.utilization_pct / 100;
  const memory = g.memory_used_mib !== null && g.memory_total_mib ? g.memory_used_mib / g.memory_total_mib : null;
  const busy = g.busy_run === null
    ? el('span', { class: 'chip' }, 'idle')
    : el('a', { class: 'chip status-running', href: `/runs/${g.busy_run}` }, `run #${g.busy_run}`);
  return el(
    'li',
    { class: 'device', 'data-index': g.index },
    el('div', { class: 'device-head' },
      el('span', { class: 'device-name' }, el('code', {}, `cuda:${g.index}`), ' ', g.name),
      busy),
    meter('Utilisation', util, g.utilization_pct === null ? DASH : `${Math.round(g.utilization_pct)}%`),
    meter('Memory', memory, `${gib(g.memory_used_mib)} / ${gib(g.memory_total_mib)} GiB`),
  );
}

const slurmBox = document.getElementById('devices-slurm');
const slurmTitle = document.getElementById('devices-slurm-title');
const slurmNodes = document.getElementById('devices-slurm-nodes');
const slurmError = document.getElementById('devices-slurm-error');

/** One Slurm node: name, state, CPUs and GPUs (gres). */
function nodeItem(n) {
  const gres = n.gres ? ` · ${n.gres}` : '';
  return el(
    'li',
    { class: 'device', 'data-node': n.name },
    el('div', { class: 'device-head' },
      el('span', { class: 'device-name' }, el('code', {}, n.name), ` ${n.cpus} CPUs${gres}`),
      el('span', { class: 'chip' }, n.state)),
  );
}

function renderSlurm(slurm) {
  if (!slurmBox) return;
  slurmBox.hidden = !slurm;
  if (!slurm) return;
  slurmTitle.textContent = `Slurm partition ${slurm.partition || '(all)'}: ${slurm.nodes.length} nodes`;
  slurmNodes.replaceChildren(...slurm.nodes.map(nodeItem));
  slurmError.hidden = !slurm.error;
  slurmError.textContent = slurm.error || '';
}

let shown = null;

function render(devices) {
  // Redraw only on a change, so a link in the list keeps focus across polls.
  const text = JSON.stringify(devices);
  if (text === shown) return;
  shown = text;
  const cpu = devices.cpu;
  cpuLine.textContent = `CPU: ${cpu.cores} cores · ${cpu.running} of ${cpu.max_concurrent_runs} run slots busy`;
  list.replaceChildren(...devices.gpus.map(gpuItem));
  none.hidden = devices.gpus.length > 0;
  error.hidden = !devices.gpu_error;
  error.textContent = devices.gpu_error || '';
  renderSlurm(devices.slurm);
}

async function refresh() {
  try {
    render(await api('GET', '/devices'));
  } catch {
    // Keep the last view; the next poll retries.
  }
}

if (list) {
  render(pageData().devices);
  setInterval(() => {
    if (document.visibilityState === 'visible') refresh();
  }, REFRESH_MS);
}
