// Small live line charts (uPlot, vendored): the last minutes of one or more series, with
// the latest value written beside the title. A chart is destroyed with its view.
import './locale.js';
import uPlot from '../vendor/uPlot.esm.js';
import { h } from './core.js';

/** Points kept per chart (one a second for a container, one per 2 s for a machine). */
const KEEP = 120;

function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

export class LiveChart {
  /**
   * @param {string} id  element id (the test and screen readers find the value by it)
   * @param {string} title
   * @param {{label: string, color: string}[]} series
   * @param {(v: number) => string} fmt  formats a value for the axis and the label
   * @param {number} floor  the y axis shows at least 0..floor
   */
  constructor(id, title, series, fmt, floor) {
    this.fmt = fmt;
    this.series = series;
    this.data = [[], ...series.map(() => [])];
    this.value = h('span', { class: 'chart-value', 'aria-live': 'off' }, '–');
    this.plotEl = h('div', { class: 'chart-plot' });
    this.el = h('figure', { class: 'card chart', id },
      h('figcaption', {}, h('span', { class: 'chart-title' }, title), this.value),
      this.plotEl,
      h('div', { class: 'chart-legend' }, series.map((s) => h('span', {}, h('i', { style: `background:${s.color}` }), s.label))));
    const axis = { stroke: cssVar('--muted'), grid: { stroke: cssVar('--border'), width: 1 }, ticks: { show: false }, font: '11px system-ui' };
    this.opts = {
      width: 300, height: 96,
      legend: { show: false }, cursor: { show: false },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(floor, max * 1.1)] } },
      // Time runs left to right over the last minutes; its labels would only crowd a small chart.
      axes: [{ show: false },
        { ...axis, size: 64, values: (u, vals) => vals.map((v) => fmt(v)) }],
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, fill: s.color + '22', points: { show: false } }))],
    };
    this.plot = null;
    this.ro = new ResizeObserver(() => this.fit());
    this.ro.observe(this.plotEl);
  }

  fit() {
    const w = Math.max(120, Math.floor(this.plotEl.clientWidth));
    if (!this.plot) {
      if (!this.plotEl.isConnected || !this.plotEl.clientWidth) return;
      this.plot = new uPlot({ ...this.opts, width: w }, this.data, this.plotEl);
    } else if (w !== this.plot.width) {
      this.plot.setSize({ width: w, height: this.opts.height });
    }
  }

  /** Adds a point: `t` in ms since the epoch, one value per series (null: a gap). */
  push(tMs, values, label) {
    this.data[0].push(tMs / 1000);
    values.forEach((v, i) => this.data[i + 1].push(v));
    if (this.data[0].length > KEEP) for (const d of this.data) d.shift();
    const last = values[0];
    this.el.dataset.last = last == null ? '' : String(last);
    this.el.dataset.points = String(this.data[0].length);
    this.value.textContent = label ?? (last == null ? '–' : this.fmt(last));
    this.fit();
    if (this.plot) this.plot.setData(this.data);
  }

  destroy() {
    this.ro.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

export const COLORS = { a: '#3b82f6', b: '#f59e0b', c: '#10b981', d: '#ef4444' };
