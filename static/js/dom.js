// Small DOM and formatting helpers. Text always goes in as text nodes, never as HTML, so names
// and log lines from the server cannot inject markup.

/** el('a', {href: '/x', class: 'y'}, 'text', child, …) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const DASH = '—';

export function pct(x, digits = 1) {
  return x === null || x === undefined || !Number.isFinite(x) ? DASH : `${(100 * x).toFixed(digits)}%`;
}

export function num(x, digits = 3) {
  if (x === null || x === undefined || !Number.isFinite(x)) return DASH;
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return String(Number(x.toFixed(digits)));
}

export function int(x) {
  return x === null || x === undefined ? DASH : Number(x).toLocaleString('en-US');
}

/** 12.3 s, 4m 05s, 2h 03m */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
  const s = Math.max(0, seconds);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  return `${h}h ${String(m % 60).padStart(2, '0')}m`;
}

export function dateTime(ts) {
  if (!ts) return DASH;
  return new Date(ts * 1000).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export function bytes(n) {
  if (n === null || n === undefined) return DASH;
  const units = ['B', 'KB', 'MB', 'GB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** Fills every `<time data-ts>` with a local date. */
export function localizeTimes(root = document) {
  for (const node of root.querySelectorAll('time[data-ts]')) {
    const ts = Number(node.dataset.ts);
    node.textContent = dateTime(ts);
    node.dateTime = new Date(ts * 1000).toISOString();
  }
}

export function statusBadge(status, extra = '') {
  return el('span', { class: `badge status-${status}` }, status, extra);
}

let toastTimer = null;
/** A short notice at the bottom of the screen (announced to screen readers). */
export function toast(message) {
  const node = document.getElementById('toast');
  if (!node) return;
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.hidden = true;
  }, 4000);
}

/** Runs `fn` at most once per animation frame however often it is asked for. */
export function coalesce(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

/** Calls `fn(key)` at most once per `ms` per key, the last request winning. */
export function throttleByKey(fn, ms) {
  const timers = new Map();
  return (key) => {
    if (timers.has(key)) return;
    timers.set(
      key,
      setTimeout(() => {
        timers.delete(key);
        fn(key);
      }, ms),
    );
  };
}

/** Wires `[data-close]` buttons and Escape for a `<dialog>`. */
export function setupDialog(dialog) {
  for (const button of dialog.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => dialog.close());
  }
}
