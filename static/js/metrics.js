// Metric histories and certificates held in the page, kept by step (resp. image index) so that a
// point seen twice (history fetch, then SSE replay) is stored once, as the server stores it.

export class MetricStore {
  constructor() {
    this.series = new Map(); // key → Map(step → {step, epoch, ts, value})
  }

  add(key, point) {
    if (!this.series.has(key)) this.series.set(key, new Map());
    this.series.get(key).set(point.step, point);
  }

  /** `GET /runs/{id}/metrics` */
  addHistory(history) {
    for (const [key, series] of Object.entries(history.metrics || {})) {
      for (const p of series.points) this.add(key, p);
    }
  }

  /** A `metrics` SSE event: a trainer's {step, epoch, values, ts}, or an MLflow client's batch
   *  {points: [{key, step, ts, value}]} (a later value at a step replaces the shown one). */
  addEvent(event) {
    for (const [key, value] of Object.entries(event.values || {})) {
      this.add(key, { step: event.step, epoch: event.epoch ?? null, ts: event.ts, value });
    }
    for (const p of event.points || []) this.add(p.key, { step: p.step, epoch: null, ts: p.ts, value: p.value });
  }

  keys() {
    return [...this.series.keys()].sort();
  }

  firstTs() {
    let first = Infinity;
    for (const points of this.series.values()) for (const p of points.values()) first = Math.min(first, p.ts);
    return Number.isFinite(first) ? first : 0;
  }

  /** One x value per step: the step, its epoch, or seconds since `t0`; null where unknown. */
  xOf(point, axis, t0) {
    if (axis === 'epoch') return point.epoch ?? null;
    if (axis === 'time') return point.ts - t0;
    return point.step;
  }

  /** uPlot data for `keys`: [xs, ys_key1, …] over the union of their steps. */
  aligned(keys, axis, t0 = this.firstTs()) {
    const steps = new Set();
    for (const key of keys) for (const step of (this.series.get(key) || new Map()).keys()) steps.add(step);
    const rows = [];
    for (const step of [...steps].sort((a, b) => a - b)) {
      const points = keys.map((k) => (this.series.get(k) || new Map()).get(step));
      const any = points.find(Boolean);
      const x = this.xOf(any, axis, t0);
      if (x === null || x === undefined) continue;
      rows.push([x, ...points.map((p) => (p ? p.value : null))]);
    }
    rows.sort((a, b) => a[0] - b[0]);
    return [rows.map((r) => r[0]), ...keys.map((_, i) => rows.map((r) => r[i + 1]))];
  }
}

/** Exponential moving average with TensorBoard's bias correction; gaps stay gaps. */
export function smooth(values, weight) {
  if (!weight) return values;
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return null;
    last = last * weight + (1 - weight) * v;
    n += 1;
    return last / (1 - weight ** n);
  });
}

/** Log axes cannot show zero or negative values: those become gaps. */
export function positiveOnly(values) {
  return values.map((v) => (v !== null && v > 0 ? v : null));
}

/** Certificates by image index. */
export class CertStore {
  constructor() {
    this.byIdx = new Map();
  }

  add(cert) {
    this.byIdx.set(cert.idx, cert);
  }

  list() {
    return [...this.byIdx.values()].sort((a, b) => a.idx - b.idx);
  }

  get size() {
    return this.byIdx.size;
  }

  maxRadius() {
    let max = 0;
    for (const c of this.byIdx.values()) if (c.correct && c.radius) max = Math.max(max, c.radius);
    return max;
  }

  /** Certified accuracy at each radius in `xs`: the share of images predicted correctly with a
   * certified radius of at least r (at r = 0, every correct prediction). */
  curve(xs) {
    const n = this.byIdx.size;
    const radii = [];
    for (const c of this.byIdx.values()) if (c.correct) radii.push(c.radius ?? 0);
    radii.sort((a, b) => a - b);
    let i = 0;
    return xs.map((r) => {
      while (i < radii.length && radii[i] < r) i += 1;
      return n === 0 ? null : (radii.length - i) / n;
    });
  }
}

/** Radii from 0 to a little past `max` (at least 1), for plotting. */
export function radiusGrid(max, points = 241) {
  const top = Math.max(1, max * 1.05);
  return Array.from({ length: points }, (_, i) => (top * i) / (points - 1));
}
