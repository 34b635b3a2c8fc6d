// The experiments list: create, edit (name, description, tags), delete with confirmation.
// The list refreshes itself while the page is visible (run counts change as runs progress).

import { api, pageData } from './api.js';
import { el, localizeTimes, setupDialog, dateTime } from './dom.js';
import { busy, clearErrors, showError } from './forms.js';

const REFRESH_MS = 5000;
let experiments = pageData().experiments || [];

const tbody = document.querySelector('#experiments-table tbody');
const empty = document.getElementById('experiments-empty');
const count = document.getElementById('experiments-count');
const editDialog = document.getElementById('edit-dialog');
const editForm = document.getElementById('edit-experiment');
const deleteDialog = document.getElementById('delete-dialog');
const deleteForm = document.getElementById('delete-experiment');
let editing = null;

function parseTags(text) {
  return text.split(',').map((t) => t.trim()).filter(Boolean);
}

function totalRuns(e) {
  return Object.values(e.run_counts || {}).reduce((a, b) => a + b, 0);
}

function row(e) {
  const statusChips = Object.entries(e.run_counts || {}).map(([status, n]) => el('span', { class: `chip status-${status}` }, `${n} ${status}`));
  return el(
    'tr',
    { 'data-id': e.id },
    el('td', {}, el('a', { class: 'row-title', href: `/experiments/${e.id}` }, e.name), e.description ? el('div', { class: 'row-sub' }, e.description) : null),
    el('td', {}, e.tags.map((t) => el('span', { class: 'tag' }, t))),
    el('td', { class: 'num' }, totalRuns(e)),
    el('td', {}, statusChips),
    el('td', {}, el('time', { 'data-ts': e.updated_at }, dateTime(e.updated_at))),
    el(
      'td',
      { class: 'actions-col' },
      el('div', { class: 'row-actions' },
        el('button', { type: 'button', class: 'btn btn-small', 'aria-label': `Edit ${e.name}`, onclick: () => openEdit(e) }, 'Edit'),
        el('button', { type: 'button', class: 'btn btn-small btn-danger-quiet', 'aria-label': `Delete ${e.name}`, onclick: () => openDelete(e) }, 'Delete')),
    ),
  );
}

function render() {
  tbody.replaceChildren(...experiments.map(row));
  empty.hidden = experiments.length > 0;
  count.textContent = String(experiments.length);
  localizeTimes(tbody);
}

async function refresh() {
  try {
    const fresh = await api('GET', '/experiments');
    // Redraw only on a change, so keyboard focus in the table survives the polling.
    if (JSON.stringify(fresh) === JSON.stringify(experiments)) return;
    experiments = fresh;
    render();
  } catch {
    // A failed background refresh keeps the current list; the next one retries.
  }
}

function openEdit(e) {
  editing = e;
  clearErrors(editForm);
  editForm.elements.name.value = e.name;
  editForm.elements.description.value = e.description;
  editForm.elements.tags.value = e.tags.join(', ');
  editDialog.showModal();
}

function openDelete(e) {
  editing = e;
  clearErrors(deleteForm);
  const n = totalRuns(e);
  document.getElementById('delete-dialog-text').textContent =
    `Delete “${e.name}”${n ? ` and its ${n} run${n === 1 ? '' : 's'} with their files` : ''}? This cannot be undone.`;
  deleteDialog.showModal();
}

document.getElementById('new-experiment').addEventListener('submit', async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const body = {
    name: form.elements.name.value,
    description: form.elements.description.value,
    tags: parseTags(form.elements.tags.value),
  };
  await busy(form, async () => {
    try {
      const created = await api('POST', '/experiments', body);
      window.location.assign(`/experiments/${created.id}`);
    } catch (err) {
      showError(form, err);
    }
  });
});

editForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  clearErrors(editForm);
  const body = {
    name: editForm.elements.name.value,
    description: editForm.elements.description.value,
    tags: parseTags(editForm.elements.tags.value),
  };
  await busy(editForm, async () => {
    try {
      await api('PATCH', `/experiments/${editing.id}`, body);
      editDialog.close();
      await refresh();
    } catch (err) {
      showError(editForm, err);
    }
  });
});

deleteForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  await busy(deleteForm, async () => {
    try {
      await api('DELETE', `/experiments/${editing.id}`);
      deleteDialog.close();
      await refresh();
    } catch (err) {
      showError(deleteForm, err);
    }
  });
});

setupDialog(editDialog);
setupDialog(deleteDialog);
render();
setInterval(() => {
  if (document.visibilityState === 'visible' && !editDialog.open && !deleteDialog.open) refresh();
}, REFRESH_MS);
