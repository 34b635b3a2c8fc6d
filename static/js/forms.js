// Form errors next to the field the server names, and request bodies built from `data-path`
// inputs. The server validates everything: the forms only carry values and show its answers.

import { ApiError } from './api.js';

/** The input a server error names: the exact `data-path`, the path without list indices
 * (`parents[0]` → `parents`), or the first input below it (`config.method` → its name). */
function inputFor(form, field) {
  const usable = (node) => node && !node.disabled && !node.closest('[hidden]');
  const candidates = [field, field.replace(/\[\d+\]/g, '')];
  for (const path of candidates) {
    const exact = [...form.querySelectorAll(`[data-path="${CSS.escape(path)}"]`)].find(usable);
    if (exact) return exact;
    const below = [...form.querySelectorAll(`[data-path^="${CSS.escape(path)}."]`)].find(usable);
    if (below) return below;
  }
  return null;
}

function formError(form) {
  return form.querySelector('.form-error');
}

export function clearErrors(form) {
  for (const node of form.querySelectorAll('.field-error')) node.remove();
  for (const node of form.querySelectorAll('[aria-invalid]')) {
    node.removeAttribute('aria-invalid');
    node.removeAttribute('aria-describedby');
  }
  const box = formError(form);
  if (box) {
    box.hidden = true;
    box.textContent = '';
  }
}

/** Shows an error: next to the named field when there is one, else at the form's foot. */
export function showError(form, err) {
  clearErrors(form);
  const message = err instanceof Error ? err.message : String(err);
  const field = err instanceof ApiError ? err.field : null;
  const input = field ? inputFor(form, field) : null;
  if (input) {
    const text = message.startsWith(`${field}: `) ? message.slice(field.length + 2) : message;
    const note = document.createElement('p');
    note.className = 'field-error';
    note.id = `${input.id || field.replace(/\W/g, '-')}-error`;
    note.textContent = text;
    const container = input.closest('.field') || input.parentElement;
    container.append(note);
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', note.id);
    const details = input.closest('details');
    if (details) details.open = true;
    input.focus();
    const box = formError(form);
    if (box) {
      box.textContent = 'Please correct the highlighted field.';
      box.hidden = false;
    }
    return;
  }
  const box = formError(form);
  if (box) {
    box.textContent = message;
    box.hidden = false;
  }
}

/** The typed value of one input, or undefined when it is blank (the server's default applies). */
function valueOf(input) {
  const type = input.dataset.type || 'str';
  if (type === 'bool') return input.checked;
  const raw = input.value.trim();
  if (raw === '') return undefined;
  switch (type) {
    case 'int':
    case 'float':
      return Number(raw);
    case 'int-list':
      return raw.split(',').map((s) => s.trim()).filter(Boolean).map(Number);
    case 'parent':
      return [Number(raw)];
    default:
      return raw;
  }
}

function setPath(target, path, value) {
  const parts = path.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
    node = node[part];
  }
  node[parts[parts.length - 1]] = value;
}

/** The request body from every enabled `data-path` input of the form. */
export function collect(form) {
  const body = {};
  for (const input of form.querySelectorAll('[data-path]')) {
    if (input.disabled) continue;
    const value = valueOf(input);
    if (value !== undefined) setPath(body, input.dataset.path, value);
  }
  return body;
}

/** Shows the parts of a form that belong to the current choice of each `select[data-switch]`
 * (elements marked `data-<switch>="choice …"`) and disables the inputs of the others, so they
 * are neither seen nor sent. */
export function applySwitches(form) {
  for (const select of form.querySelectorAll('select[data-switch]')) {
    const name = select.dataset.switch;
    for (const node of form.querySelectorAll(`[data-${name}]`)) {
      const on = node.getAttribute(`data-${name}`).split(/\s+/).includes(select.value);
      node.hidden = !on;
      const inputs = node.matches('input, select, textarea') ? [node] : node.querySelectorAll('input, select, textarea');
      for (const input of inputs) input.disabled = !on;
    }
  }
}

/** Disables the submit button while `work` runs. */
export async function busy(form, work) {
  const button = form.querySelector('button[type="submit"]');
  if (button) button.disabled = true;
  form.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    if (button) button.disabled = false;
    form.removeAttribute('aria-busy');
  }
}
