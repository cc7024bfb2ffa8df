// Services (`GET /v1/services`): one row per service, kept across updates so that its buttons
// stay where they are; restart, stop and start (`POST /v1/services/{id}/...`).

import { post } from './api.js';
import { h, fill, cell, table, note, fmtDuration, fmtNumber, fmtAgo, fmtClock } from './dom.js';

/** How long an action's result stays under its buttons. */
const RESULT_MS = 60 * 1000;

/** The badge (text, colour) and a sentence for a service's state. */
export function describe(service) {
  switch (service.state) {
    case 'running':
      return ['Running', 'green', ''];
    case 'ready':
      return ['Ready', 'green', 'Running, and its readiness check passed.'];
    case 'starting':
      return ['Starting', 'amber', 'Started; waiting for its readiness check.'];
    case 'stopping':
      return ['Stopping', 'amber', ''];
    case 'waiting':
      switch (service.waiting_for) {
        case 'restart':
          return ['Restarting', 'amber', service.restart_in_ms === null || service.restart_in_ms === undefined
            ? 'Will be started again shortly.'
            : `Starts again in ${fmtDuration(service.restart_in_ms)}.`];
        case 'after':
          return ['Waiting', 'amber', 'Waits for the services it starts after.'];
        case 'start':
          return ['Stopped', 'grey', 'Stays down until started.'];
        default:
          return ['Waiting', 'amber', service.waiting_for ? `Waiting for ${service.waiting_for}.` : ''];
      }
    case 'waiting_for_requirements':
      return ['Waiting for the cluster', 'amber', `Needs ${service.waiting_for || 'a resource'} from another node.`];
    case 'failed':
      return ['Failed', 'red', service.failure || 'Down until started again.'];
    case 'deleted':
      return ['Removed', 'grey', 'No longer configured.'];
    default:
      return [service.state, 'grey', ''];
  }
}

const UP = new Set(['running', 'ready', 'starting']);

/** Which actions make sense in a state (the node still has the last word). */
function allowed(service) {
  const { state } = service;
  const waiting = state === 'waiting';
  return {
    restart: UP.has(state) || (waiting && service.waiting_for === 'restart'),
    stop: UP.has(state) || (waiting && service.waiting_for !== 'start') || state === 'waiting_for_requirements',
    start: state === 'failed' || (waiting && service.waiting_for === 'start'),
  };
}

const ACTIONS = [
  ['restart', 'Restart'],
  ['stop', 'Stop'],
  ['start', 'Start'],
];

export class ServicesPanel {
  /** `onShowOutput(id)` is called when a service's output is asked for. */
  constructor(root, { onShowOutput }) {
    this.root = root;
    this.onShowOutput = onShowOutput;
    this.rows = new Map();
    this.busy = new Set();
    const { el, body } = table('stack services',
      ['Service', 'State', 'Process id', 'Up for', 'Restarts', 'Last exit', 'Actions']);
    this.table = el;
    this.body = body;
    this.empty = note('No services are configured on this node.');
    this.shown = null;
  }

  show(what) {
    if (this.shown !== what) {
      fill(this.root, what);
      this.shown = what;
    }
  }

  update({ services }) {
    if (!services.length) {
      this.show(this.empty);
      return;
    }
    this.show(this.table);
    const seen = new Set();
    let previous = null;
    for (const service of services) {
      seen.add(service.id);
      let row = this.rows.get(service.id);
      if (!row) {
        row = this.row(service.id);
        this.rows.set(service.id, row);
      }
      // Keep the node's order.
      const expected = previous ? previous.nextSibling : this.body.firstChild;
      if (expected !== row.tr) this.body.insertBefore(row.tr, expected);
      this.render(row, service);
      previous = row.tr;
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
  }

  notRunning() {
    this.show(note('The service supervisor is not running on this node.'));
  }

  failed(error) {
    this.show(note(error.message, 'error'));
  }

  row(id) {
    const name = h('span', { class: 'service-name' }, id);
    const kind = h('span', { class: 'muted small' });
    const output = h('button', {
      type: 'button',
      class: 'btn btn-link small',
      dataset: { action: 'output' },
      on: { click: () => this.onShowOutput(id) },
    }, 'Show output');
    const badge = h('span', { class: 'badge' });
    const detail = h('div', { class: 'detail small' });
    const pid = h('span', { class: 'pid mono' });
    const uptime = h('span', { class: 'uptime' });
    const restarts = h('span', { class: 'restarts' });
    const exit = h('div', { class: 'exit' });
    const exitWhen = h('div', { class: 'muted small' });
    const result = h('p', { class: 'result small', role: 'status' });
    const buttons = {};
    for (const [action, label] of ACTIONS) {
      buttons[action] = h('button', {
        type: 'button',
        class: `btn btn-${action}`,
        dataset: { action },
        on: { click: () => this.act(id, action, row) },
      }, label);
    }
    const tr = h('tr', { dataset: { service: id } },
      cell('Service', h('div', { class: 'name-line' }, name, ' ', kind), output),
      cell('State', badge, detail),
      cell('Process id', pid),
      cell('Up for', uptime),
      cell('Restarts', restarts),
      cell('Last exit', exit, exitWhen),
      cell('Actions', h('div', { class: 'actions' }, Object.values(buttons)), result));
    const row = { tr, kind, badge, detail, pid, uptime, restarts, exit, exitWhen, result, buttons, service: null };
    return row;
  }

  render(row, service) {
    row.service = service;
    const [label, tone, sentence] = describe(service);
    row.tr.dataset.state = service.state;
    row.badge.textContent = label;
    row.badge.dataset.tone = tone;
    row.badge.dataset.state = service.state;
    row.detail.textContent = sentence;
    row.detail.title = sentence;
    row.kind.textContent = service.kind === 'actor' ? 'built-in' : 'program';
    row.pid.textContent = service.pid ? String(service.pid) : '—';
    row.uptime.textContent = UP.has(service.state) && service.uptime_ms !== null ? fmtDuration(service.uptime_ms) : '—';
    row.restarts.textContent = fmtNumber(service.restarts);
    const last = service.last_exit;
    if (last) {
      row.exit.textContent = last.reason;
      row.exit.dataset.tone = last.requested ? 'quiet' : 'bad';
      row.exitWhen.textContent = `${last.requested ? 'on request' : 'unexpected'} · ${fmtClock(last.at_unix_ms)} (${fmtAgo(last.at_unix_ms)})`;
    } else {
      row.exit.textContent = '—';
      delete row.exit.dataset.tone;
      row.exitWhen.textContent = '';
    }
    const can = allowed(service);
    const busy = this.busy.has(service.id);
    for (const [action] of ACTIONS) {
      row.buttons[action].disabled = busy || !can[action];
    }
  }

  async act(id, action, row) {
    if (this.busy.has(id)) return;
    this.busy.add(id);
    for (const button of Object.values(row.buttons)) button.disabled = true;
    row.buttons[action].dataset.busy = 'true';
    const doing = { restart: 'Restarting…', stop: 'Stopping…', start: 'Starting…' }[action];
    clearTimeout(row.clear);
    row.result.textContent = doing;
    row.result.dataset.tone = 'busy';
    try {
      const answer = await post(`/v1/services/${encodeURIComponent(id)}/${action}`);
      row.result.dataset.tone = 'good';
      row.result.textContent = {
        restart: `Restarted${answer.pid ? ` as process ${answer.pid}` : ''}`,
        stop: 'Stopped',
        start: `Started${answer.pid ? ` as process ${answer.pid}` : ''}`,
      }[action];
    } catch (error) {
      row.result.dataset.tone = 'bad';
      row.result.textContent = `Could not ${action} ${id}: ${error.message.replace(/\.$/, '')}`;
    } finally {
      row.result.append(h('span', { class: 'muted' }, ` · ${fmtClock(Date.now())}`));
      row.clear = setTimeout(() => { row.result.textContent = ''; }, RESULT_MS);
      this.busy.delete(id);
      delete row.buttons[action].dataset.busy;
      if (row.service) this.render(row, row.service);
    }
  }
}
