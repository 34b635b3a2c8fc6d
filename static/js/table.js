// Sorting and CSV export for data tables.

/** Ascending order with nulls (and NaN) last, numbers before text. */
export function compareValues(a, b) {
  const missing = (v) => v === null || v === undefined || (typeof v === 'number' && Number.isNaN(v));
  if (missing(a) || missing(b)) return missing(a) - missing(b);
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

/** Sorts rows by `value(row)`; nulls stay last in both directions. */
export function sortRows(rows, value, descending) {
  return [...rows].sort((x, y) => {
    const a = value(x);
    const b = value(y);
    const missing = (v) => v === null || v === undefined;
    if (missing(a) || missing(b)) return missing(a) - missing(b);
    return descending ? compareValues(b, a) : compareValues(a, b);
  });
}

function csvCell(value) {
  if (value === null || value === undefined) return '';
  const text = String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function toCsv(header, rows) {
  return [header, ...rows].map((row) => row.map(csvCell).join(',')).join('\r\n') + '\r\n';
}

export function download(filename, text, type = 'text/csv') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Marks the sorted column of a table for screen readers (`aria-sort`). */
export function markSorted(table, column, descending) {
  for (const th of table.querySelectorAll('th[data-col]')) {
    if (th.dataset.col === column) th.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
    else th.removeAttribute('aria-sort');
  }
}
