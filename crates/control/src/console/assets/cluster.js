// The cluster map, from `GET /v1/cluster` (this node's cluster client: its beacons and
// requirements) and `GET /v1/cluster/nodes` (every node the beacons know). Each node is a
// card listing what it offers and what it needs; an arrow goes from each need to every node
// offering it. A node that offers a `control` resource with an http(s) endpoint named
// `control` links to its own console.

import { h, s, fill, note, fmtDuration } from './dom.js';

/** Every resource a node offers: its primary one and those in `offers`. */
function resources(node) {
  const names = new Set(Object.keys(node.offers || {}));
  if (node.resource) names.add(node.resource);
  return [...names].sort();
}

function endpoints(node, resource) {
  return (node.offers && node.offers[resource]) || (node.resource === resource ? node.endpoints : null) || {};
}

/** The node's console address, when it offers one that is an http(s) URL. */
function consoleUrl(node) {
  const address = endpoints(node, 'control').control;
  if (typeof address !== 'string') return null;
  try {
    const url = new URL(address);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

const BEACON_STATES = {
  up: ['connected', 'green'],
  handshake: ['connecting', 'amber'],
  refused: ['refused this node', 'red'],
  down: ['not reachable', 'red'],
};

export class ClusterPanel {
  constructor(root) {
    this.root = root;
    this.key = '';
    this.map = null;
    this.arrows = null;
    this.ages = new Map();
    this.pending = false;
    this.observer = new ResizeObserver(() => this.redrawSoon());
  }

  notRunning() {
    this.key = '';
    this.root.dataset.filled = 'false';
    fill(this.root, note('This node is not part of a cluster: its [cluster] settings name no beacons.'));
  }

  failed(error) {
    this.key = '';
    this.root.dataset.filled = 'false';
    fill(this.root, note(error.message, 'error'));
  }

  /** `status`: `GET /v1/cluster`; `list`: `GET /v1/cluster/nodes`, or the ApiError it gave. */
  update(status, list) {
    const self = status.client.node;
    const nodes = list instanceof Error ? null : list.nodes;
    // Rebuilt only when something other than "last heard" changed.
    const key = JSON.stringify([status.client.beacons.map((b) => [b.endpoint, b.state, b.refusal]),
      status.client.unmet, status.requirements, list instanceof Error ? list.message : nodes.map((n) => ({ ...n, last_seen_ms: 0 }))]);
    if (key === this.key) {
      this.updateAges(nodes || []);
      return;
    }
    this.key = key;
    const parts = [];
    if (nodes) {
      parts.push(this.buildMap(nodes, self));
    } else {
      parts.push(note(`The cluster's nodes are not known right now: ${list.message}`, 'error'));
    }
    parts.push(this.summary(status));
    this.root.dataset.filled = nodes ? 'true' : 'false';
    fill(this.root, ...parts);
    this.redrawSoon();
  }

  summary(status) {
    const client = status.client;
    const beacons = h('ul', { class: 'beacons' }, client.beacons.map((b) => {
      const [state, tone] = BEACON_STATES[b.state] || [b.state, 'grey'];
      return h('li', null, h('span', { class: `dot dot-${tone}` }), h('span', { class: 'mono small' }, b.endpoint), ` ${state}`,
        b.refusal ? h('span', { class: 'muted small' }, ` (${b.refusal})`) : null);
    }));
    // The beacons' answer now; when none answered, what the client saw last.
    const missing = Array.isArray(status.requirements.unmet) ? status.requirements.unmet : client.unmet;
    const needs = client.registration ? client.registration.requires || [] : [];
    let met = null;
    if (missing.length) {
      met = h('p', { class: 'note note-error' }, `This node needs what no other online node offers: ${missing.join(', ')}.`);
    } else if (needs.length) {
      met = h('p', { class: 'note note-good' }, `Everything this node needs is offered: ${needs.join(', ')}.`);
    }
    return h('div', { class: 'cluster-summary' },
      met, h('h3', null, 'Cluster directories (beacons) this node uses'), beacons);
  }

  buildMap(nodes, self) {
    this.ages.clear();
    if (!nodes.length) return note('The beacons know no node yet.');
    this.nodes = nodes;
    const cards = nodes.map((node) => this.card(node, node.name === self));
    const grid = h('div', { class: 'map-grid' }, cards);
    this.arrows = s('svg', { class: 'map-arrows', 'aria-hidden': 'true' });
    const legend = h('p', { class: 'muted small legend-line' },
      h('span', { class: 'chip chip-offer' }, 'offers'), ' what a node provides; ',
      h('span', { class: 'chip chip-need' }, 'needs'), ' what it requires, with an arrow to each other node offering it.');
    this.map = h('div', { class: 'cluster-map', id: 'cluster-map' }, grid, this.arrows);
    this.observer.disconnect();
    this.observer.observe(this.map);
    return h('div', null, this.map, legend);
  }

  card(node, isSelf) {
    const online = node.status === 'online';
    const url = isSelf ? null : consoleUrl(node);
    const title = url
      ? h('a', { class: 'map-name', href: url, rel: 'noopener noreferrer', title: `Open the console of ${node.name}` }, node.name)
      : h('span', { class: 'map-name' }, node.name);
    const age = h('span', { class: 'muted small' });
    this.ages.set(node.name, age);
    this.setAge(age, node);
    const offers = resources(node).map((r) => {
      const eps = Object.entries(endpoints(node, r)).map(([k, v]) => `${k}: ${v}`).join('\n');
      return h('li', { class: 'chip chip-offer', dataset: { resource: r }, title: eps || r }, r);
    });
    // A node's requirement is met by the other nodes only, as the beacons count it.
    const provided = (r) => this.nodes.some((n) => n.name !== node.name && n.status === 'online' && resources(n).includes(r));
    const needs = (node.requires || []).map((r) => h('li', {
      class: `chip chip-need${provided(r) ? '' : ' chip-unmet'}`,
      dataset: { need: r },
      title: provided(r) ? `needs ${r}` : `needs ${r}: no other online node offers it`,
    }, `${r}`));
    return h('article', {
      class: 'map-node',
      dataset: { node: node.name, status: node.status, self: isSelf ? 'true' : 'false' },
    },
    h('header', null,
      h('span', { class: `dot dot-${online ? 'green' : 'grey'}`, title: online ? 'online' : 'offline' }),
      title,
      isSelf ? h('span', { class: 'tag' }, 'this node') : null),
    h('p', { class: 'map-status' }, online ? 'Online' : 'Offline', ' ', age),
    h('div', { class: 'map-section' }, h('span', { class: 'map-label' }, 'Offers'),
      offers.length ? h('ul', { class: 'chips' }, offers) : h('span', { class: 'muted small' }, 'nothing')),
    needs.length ? h('div', { class: 'map-section' }, h('span', { class: 'map-label' }, 'Needs'), h('ul', { class: 'chips' }, needs)) : null);
  }

  setAge(el, node) {
    el.textContent = node.status !== 'online' && node.last_seen_ms !== undefined && node.last_seen_ms !== null
      ? `· last heard ${fmtDuration(node.last_seen_ms)} ago`
      : '';
  }

  updateAges(nodes) {
    for (const node of nodes) {
      const el = this.ages.get(node.name);
      if (el) this.setAge(el, node);
    }
  }

  redrawSoon() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.drawArrows();
    });
  }

  /** An arrow from each need chip to every other node offering it (at its offer chip). */
  drawArrows() {
    if (!this.map || !this.map.isConnected) return;
    const box = this.map.getBoundingClientRect();
    const rect = (el) => {
      const r = el.getBoundingClientRect();
      return { left: r.left - box.left, right: r.right - box.left, top: r.top - box.top, bottom: r.bottom - box.top };
    };
    const cards = new Map([...this.map.querySelectorAll('.map-node')].map((c) => [c.dataset.node, c]));
    const paths = [];
    for (const [name, card] of cards) {
      const from = rect(card);
      for (const need of card.querySelectorAll('[data-need]')) {
        const resource = need.dataset.need;
        const chip = rect(need);
        const y0 = (chip.top + chip.bottom) / 2;
        for (const [other, target] of cards) {
          if (other === name) continue;
          const offer = [...target.querySelectorAll('.chip-offer')].find((c) => c.dataset.resource === resource);
          if (!offer) continue;
          const to = rect(target);
          const end = rect(offer);
          const y1 = (end.top + end.bottom) / 2;
          let d;
          const overlap = from.left < to.right && to.left < from.right;
          if (overlap) {
            // Same column: a loop on the right side.
            const x0 = from.right;
            const x1 = to.right;
            const out = Math.max(x0, x1) + 28;
            d = `M${x0},${y0} C${out},${y0} ${out},${y1} ${x1 + 2},${y1}`;
          } else if (to.left >= from.right) {
            const x0 = from.right;
            const x1 = to.left;
            const dx = Math.max(24, (x1 - x0) / 2);
            d = `M${x0},${y0} C${x0 + dx},${y0} ${x1 - dx},${y1} ${x1 - 2},${y1}`;
          } else {
            const x0 = from.left;
            const x1 = to.right;
            const dx = Math.max(24, (x0 - x1) / 2);
            d = `M${x0},${y0} C${x0 - dx},${y0} ${x1 + dx},${y1} ${x1 + 2},${y1}`;
          }
          const live = target.dataset.status === 'online';
          paths.push(s('path', {
            class: `arrow ${live ? 'arrow-live' : 'arrow-off'}`,
            d,
            'marker-end': `url(#${live ? 'head-live' : 'head-off'})`,
            dataset: { from: name, to: other, resource },
          }));
        }
      }
    }
    const marker = (id) => s('marker', {
      id, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
    }, s('path', { d: 'M0,0 L10,5 L0,10 z', class: id }));
    this.arrows.setAttribute('width', box.width);
    this.arrows.setAttribute('height', box.height);
    this.arrows.setAttribute('viewBox', `0 0 ${box.width} ${box.height}`);
    this.arrows.replaceChildren(s('defs', null, marker('head-live'), marker('head-off')), ...paths);
  }
}
