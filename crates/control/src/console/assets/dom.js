// Small helpers: building elements (text always goes in as text, never as markup) and
// putting numbers, sizes and times into words.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.setAttribute('class', value);
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'on') {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: `h('td', {class: 'x'}, 'text', otherElement)`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces what `el` holds with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  return build(el, null, children);
}

/** A muted sentence, e.g. "Not running on this node." */
export function note(text, kind = 'muted') {
  return h('p', { class: `note note-${kind}` }, text);
}

const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

export function fmtNumber(n) {
  return n === undefined || n === null ? '—' : number.format(n);
}

export function fmtBytes(n) {
  if (n === undefined || n === null) return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${number.format(value)} ${units[unit]}`;
}

/** `3 h 12 min`, `5 min 3 s`, `42 s`, `250 ms`. */
export function fmtDuration(ms) {
  if (ms === undefined || ms === null) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  let secs = Math.floor(ms / 1000);
  const days = Math.floor(secs / 86400);
  secs %= 86400;
  const hours = Math.floor(secs / 3600);
  secs %= 3600;
  const mins = Math.floor(secs / 60);
  secs %= 60;
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${mins} min`;
  if (mins > 0) return `${mins} min ${secs} s`;
  return `${secs} s`;
}

/** The time of day of a Unix time in milliseconds, e.g. `14:03:07`. */
export function fmtClock(unixMs) {
  if (!unixMs) return '—';
  return new Date(unixMs).toLocaleTimeString(undefined, { hour12: false });
}

/** `5 min ago`, `just now`. */
export function fmtAgo(unixMs) {
  if (!unixMs) return '';
  const ms = Date.now() - unixMs;
  if (ms < 2000) return 'just now';
  return `${fmtDuration(ms).replace(/ \d+ (s|min|h)$/, '')} ago`;
}

/** `1 service`, `2 services`. */
export function plural(n, one, many = `${one}s`) {
  return `${fmtNumber(n)} ${n === 1 ? one : many}`;
}

/** A table with a header row; returns it and its body. */
export function table(className, headings) {
  const body = h('tbody');
  const el = h('table', { class: `table ${className}` },
    h('thead', null, h('tr', null, headings.map((text) => h('th', { scope: 'col' }, text)))),
    body);
  return { el, body };
}

/** A table cell that names its column on narrow screens (see `.stack` in style.css). */
export function cell(label, ...children) {
  return h('td', { dataset: { label } }, h('div', { class: 'cell' }, ...children));
}
