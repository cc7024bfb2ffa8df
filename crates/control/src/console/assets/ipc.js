// The local message hub (`GET /v1/ipc`): its connections, mailboxes and counters.

import { h, fill, cell, table, note, fmtNumber, fmtBytes } from './dom.js';

/** Counters shown as tiles: [key, label, how to show it]. */
const TILES = [
  ['connections', 'Connected programs'],
  ['registered', 'Known by name'],
  ['channels_attached', 'Service channels'],
  ['requests_in_flight', 'Requests waiting for an answer'],
  ['mailbox_messages', 'Messages held for absent programs'],
  ['delivered', 'Messages delivered'],
  ['connections_accepted', 'Connections so far'],
  ['errors_sent', 'Errors answered'],
];

/** Counters that only matter when they are not zero. */
const PROBLEMS = [
  ['expired', 'held messages expired'],
  ['overflowed', 'messages refused: mailbox full'],
  ['requests_timed_out', 'requests got no answer in time'],
  ['undeliverable', 'answers for programs that had gone'],
  ['malformed', 'unreadable messages'],
  ['oversize_frames', 'messages too large'],
  ['foreign_frames', 'messages with another process id'],
  ['spoofing_refused', 'registrations refused (wrong process id)'],
  ['stalled_closed', 'connections closed: they stopped reading'],
  ['resyncs', 'streams repaired after damage'],
];

export class IpcPanel {
  constructor(root) {
    this.root = root;
  }

  notRunning() {
    this.root.dataset.filled = 'false';
    fill(this.root, note('The local message hub is not running on this node.'));
  }

  failed(error) {
    this.root.dataset.filled = 'false';
    fill(this.root, note(error.message, 'error'));
  }

  update(view) {
    const stats = view.stats;
    const tiles = h('dl', { class: 'tiles' }, TILES.map(([key, label]) =>
      h('div', { class: 'tile', dataset: { counter: key } },
        h('dt', null, label),
        h('dd', null, fmtNumber(stats[key]),
          key === 'mailbox_messages' && stats.mailbox_bytes ? h('span', { class: 'muted small' }, ` (${fmtBytes(stats.mailbox_bytes)})`) : null))));
    const problems = PROBLEMS.filter(([key]) => stats[key] > 0);
    const health = problems.length
      ? h('ul', { class: 'problems' }, problems.map(([key, label]) => h('li', null, h('strong', null, fmtNumber(stats[key])), ` ${label}`)))
      : note('No problems counted.', 'good');

    let connections;
    if (view.connections.length) {
      const { el, body } = table('stack ipc-connections',
        ['Process id', 'Name', 'Service', 'Waiting to send', 'Requests out']);
      for (const c of view.connections) {
        body.append(h('tr', { dataset: { pid: c.pid } },
          cell('Process id', h('span', { class: 'mono' }, String(c.pid))),
          cell('Name', c.name || h('span', { class: 'muted' }, c.registered ? '(registered)' : '—')),
          cell('Service', c.service || '—'),
          cell('Waiting to send', fmtBytes(c.outbox_bytes)),
          cell('Requests out', fmtNumber(c.requests_in_flight))));
      }
      connections = el;
    } else {
      connections = note('No program is connected.');
    }

    let mailboxes = null;
    if (view.mailboxes.length) {
      const { el, body } = table('stack ipc-mailboxes', ['Held for', 'Messages', 'Size']);
      for (const m of view.mailboxes) {
        body.append(h('tr', null,
          cell('Held for', m.receiver),
          cell('Messages', fmtNumber(m.messages)),
          cell('Size', fmtBytes(m.bytes))));
      }
      mailboxes = [h('h3', null, `Mailboxes (${fmtNumber(view.mailbox_count)})`), el];
    }
    this.root.dataset.filled = 'true';
    fill(this.root, tiles, health, h('h3', null, 'Connections'), connections, mailboxes);
  }
}
