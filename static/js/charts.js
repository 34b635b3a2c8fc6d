// Line charts with uPlot (static/vendor, copied from npm by scripts/assets.sh).

export const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777', '#4b5563', '#65a30d', '#7c3aed', '#0d9488'];

const AXIS = { stroke: '#5b6475', grid: { stroke: '#e9edf3', width: 1 }, ticks: { stroke: '#d7dde6', width: 1 }, font: '12px system-ui, sans-serif', labelFont: '12px system-ui, sans-serif' };

function percentTicks(_u, values) {
  return values.map((v) => (v === null ? '' : `${Number((v * 100).toFixed(1))}%`));
}

function formatValue(percent) {
  return (_u, v) => {
    if (v === null || v === undefined) return '—';
    if (percent) return `${(v * 100).toFixed(2)}%`;
    return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(3) : Number(v.toPrecision(5)).toString();
  };
}

/** A chart in `container` that is rebuilt when its shape (series, scales) changes and only
 * refilled otherwise, resizing with its container. */
export class ChartSlot {
  constructor(container, height = 260) {
    this.container = container;
    this.height = height;
    this.plot = null;
    this.signature = '';
    this.observer = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: this.height });
    });
    this.observer.observe(container);
  }

  width() {
    return Math.max(280, this.container.clientWidth);
  }

  /** spec: {series: [{label, color, dash?, width?, alpha?}], xLabel, yLabel, log, percent, yRange?} */
  render(spec, data) {
    if (typeof window.uPlot !== 'function') {
      this.container.textContent = 'Charts need static/vendor/uPlot.iife.min.js: run scripts/assets.sh.';
      return;
    }
    // How many x values are drawn: lets a reader (or a browser test) see the chart grow.
    this.container.dataset.points = String(data[0].length);
    // The drawn values themselves, so a browser test can check what the chart shows.
    this.container.chartData = data;
    const signature = JSON.stringify(spec);
    if (this.plot && signature === this.signature) {
      this.plot.setData(data);
      return;
    }
    this.destroy();
    this.signature = signature;
    this.plot = new window.uPlot(this.options(spec), data, this.container);
  }

  options(spec) {
    return {
      width: this.width(),
      height: this.height,
      scales: {
        x: { time: false },
        y: spec.log ? { distr: 3 } : { auto: true, range: spec.yRange ? () => spec.yRange : undefined },
      },
      axes: [
        { ...AXIS, label: spec.xLabel },
        { ...AXIS, label: spec.yLabel, size: 60, values: spec.percent ? percentTicks : undefined },
      ],
      series: [
        { label: spec.xLabel, value: (_u, v) => (v === null ? '—' : Number(v.toPrecision(6)).toString()) },
        ...spec.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width ?? 2,
          dash: s.dash,
          alpha: s.alpha,
          spanGaps: true,
          value: formatValue(spec.percent),
          points: { size: 5, fill: s.color },
        })),
      ],
      cursor: { drag: { x: true, y: false }, points: { size: 7 } },
      legend: { live: true },
    };
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.container.replaceChildren();
  }
}

/** The x-axis caption for a choice of `step`, `epoch` or `time`. */
export function axisLabel(axis) {
  return { step: 'step', epoch: 'epoch', time: 'wall time (s)' }[axis] || axis;
}
