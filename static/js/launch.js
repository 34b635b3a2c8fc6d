// The launch forms (training, CRT transfer, certification): each posts a create-run request
// built from its `data-path` inputs and shows the server's validation message next to the
// field it names. Used on the launch page and in the run page's "certify this model" dialog.

import { api } from './api.js';
import { applySwitches, busy, clearErrors, collect, showError } from './forms.js';

/** The create-run request of a form: {experiment_id, name?, parents, config: {kind, …}}. */
export function request(form) {
  const body = collect(form);
  body.parents = body.parents || [];
  body.config = { ...(body.config || {}), kind: form.dataset.kind };
  return body;
}

/** A transfer's dataset follows its teacher's unless changed by hand afterwards, and the σ
 * field says which σ a blank means. */
function followTeacher(form) {
  const teacher = form.querySelector('select[data-path="parents"]');
  const dataset = form.querySelector('select[data-path="config.data.dataset"]');
  const sigma = form.querySelector('input[data-path="config.sigma"]');
  if (!teacher || !dataset) return;
  const sync = () => {
    const option = teacher.selectedOptions[0];
    if (option && option.dataset.dataset) dataset.value = option.dataset.dataset;
    if (sigma) sigma.placeholder = option && option.dataset.sigma ? `the teacher's: ${option.dataset.sigma}` : "the teacher's σ";
  };
  teacher.addEventListener('change', sync);
  sync();
}

export function setupLaunchForm(form) {
  applySwitches(form);
  for (const select of form.querySelectorAll('select[data-switch]')) select.addEventListener('change', () => applySwitches(form));
  if (form.dataset.kind === 'transfer') followTeacher(form);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    await busy(form, async () => {
      try {
        const created = await api('POST', '/runs', request(form));
        window.location.assign(`/runs/${created.id}`);
      } catch (err) {
        showError(form, err);
      }
    });
  });
}

/** Tabs that are links (`?kind=…`, working without scripts) switch in place. */
function setupTabs() {
  const tabs = [...document.querySelectorAll('.tabs [role="tab"]')];
  const show = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute('aria-controls')).hidden = !on;
    }
  };
  tabs.forEach((tab, i) => {
    tab.tabIndex = tab.getAttribute('aria-selected') === 'true' ? 0 : -1;
    tab.addEventListener('click', (event) => {
      event.preventDefault();
      show(tab);
      history.replaceState(null, '', tab.getAttribute('href'));
    });
    tab.addEventListener('keydown', (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      next.focus();
      next.click();
    });
  });
}

for (const form of document.querySelectorAll('form.launch-form')) setupLaunchForm(form);
setupTabs();
