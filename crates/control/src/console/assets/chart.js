// A small line chart (SVG) of rates over a time window, drawn at the width it is given.

import { s, fmtNumber } from './dom.js';

const HEIGHT = 150;
const PAD = { left: 44, right: 12, top: 12, bottom: 24 };

/** The smallest 1, 2 or 5 × 10^n at least `value` (and at least 1). */
function ceiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

export class RateChart {
  /** `series`: `[{key, label, tone}]`; `windowMs`: the time shown, ending now. */
  constructor(root, series, windowMs) {
    this.root = root;
    this.series = series;
    this.windowMs = windowMs;
    this.points = [];
    this.width = 0;
    // Redrawn in the next frame: never inside the observer's own notification.
    new ResizeObserver(() => {
      requestAnimationFrame(() => {
        if (this.root.clientWidth !== this.width) this.draw();
      });
    }).observe(root);
  }

  /** `points`: `[{t, KEY: rate, ...}]`, `t` from `performance.now()`, oldest first. */
  update(points) {
    this.points = points;
    this.draw();
  }

  draw() {
    const width = this.root.clientWidth;
    this.width = width;
    if (width < 100) return;
    const now = performance.now();
    const from = now - this.windowMs;
    const inner = { w: width - PAD.left - PAD.right, h: HEIGHT - PAD.top - PAD.bottom };
    let peak = 0;
    for (const point of this.points) {
      for (const { key } of this.series) peak = Math.max(peak, point[key]);
    }
    const top = ceiling(peak);
    const x = (t) => PAD.left + ((t - from) / this.windowMs) * inner.w;
    const y = (v) => PAD.top + inner.h - (v / top) * inner.h;
    const parts = [];
    for (const fraction of [0, 0.5, 1]) {
      const value = top * fraction;
      parts.push(
        s('line', { class: 'grid', x1: PAD.left, x2: width - PAD.right, y1: y(value), y2: y(value) }),
        s('text', { class: 'axis', x: PAD.left - 6, y: y(value) + 4, 'text-anchor': 'end' }, fmtNumber(value)),
      );
    }
    parts.push(
      s('text', { class: 'axis', x: PAD.left, y: HEIGHT - 6 }, `${Math.round(this.windowMs / 60000)} min ago`),
      s('text', { class: 'axis', x: width - PAD.right, y: HEIGHT - 6, 'text-anchor': 'end' }, 'now'),
    );
    const shown = this.points.filter((p) => p.t >= from);
    if (shown.length >= 2) {
      for (const { key, tone } of this.series) {
        const line = shown.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ');
        const first = x(shown[0].t).toFixed(1);
        const last = x(shown[shown.length - 1].t).toFixed(1);
        const base = y(0).toFixed(1);
        parts.push(
          s('path', { class: `area area-${tone}`, d: `${line} L${last},${base} L${first},${base} Z` }),
          s('path', { class: `series series-${tone}`, d: line }),
        );
      }
    } else {
      parts.push(s('text', { class: 'axis', x: PAD.left + inner.w / 2, y: PAD.top + inner.h / 2, 'text-anchor': 'middle' },
        'Collecting data…'));
    }
    const latest = this.points[this.points.length - 1];
    const label = this.series
      .map(({ key, label: name }) => `${name}: ${latest ? fmtNumber(latest[key]) : 'no data yet'}`)
      .join(', ');
    const chart = s('svg', {
      class: 'chart',
      width,
      height: HEIGHT,
      viewBox: `0 0 ${width} ${HEIGHT}`,
      role: 'img',
      'aria-label': `Per second over the last ${Math.round(this.windowMs / 60000)} minutes. ${label}`,
    }, parts);
    this.root.replaceChildren(chart);
  }
}
