// The request broker (`GET /v1/broker`): per service its workers, waiting and held requests;
// each worker's credit and held requests; requests and errors per second over the last
// 5 minutes, from the counters' differences between two polls.

import { RateChart } from './chart.js';
import { h, fill, cell, table, note, fmtNumber, fmtDuration, plural } from './dom.js';

const WINDOW_MS = 5 * 60 * 1000;

/** Requests that ended in an error: refused at once, timed out waiting, or lost with their worker. */
function errors(stats) {
  return stats.refused + stats.timed_out + stats.lost;
}

export class BrokerPanel {
  constructor(root) {
    this.root = root;
    this.last = null;
    this.points = [];
    this.nowRequests = h('strong', { class: 'rate', id: 'broker-requests-rate' }, '—');
    this.nowErrors = h('strong', { class: 'rate', id: 'broker-errors-rate' }, '—');
    const legend = h('div', { class: 'legend' },
      h('span', { class: 'key key-blue' }, 'Requests per second: ', this.nowRequests),
      h('span', { class: 'key key-red' }, 'Errors per second: ', this.nowErrors));
    this.chartBox = h('div', { class: 'chart-box' });
    this.services = h('div');
    this.workers = h('div');
    this.view = h('div', { class: 'broker-view' },
      legend,
      this.chartBox,
      h('h3', null, 'Services'),
      this.services,
      h('h3', null, 'Workers'),
      this.workers);
    this.chart = null;
    this.shown = null;
  }

  show(what) {
    if (this.shown !== what) {
      fill(this.root, what);
      this.shown = what;
    }
    this.root.dataset.filled = what === this.view ? 'true' : 'false';
  }

  notRunning() {
    this.last = null;
    this.show(note('The request broker is not running on this node.'));
  }

  failed(error) {
    this.last = null;
    this.show(note(error.message, 'error'));
  }

  update(broker) {
    this.show(this.view);
    if (!this.chart) {
      this.chart = new RateChart(this.chartBox, [
        { key: 'requests', label: 'Requests per second', tone: 'blue' },
        { key: 'errors', label: 'Errors per second', tone: 'red' },
      ], WINDOW_MS);
    }
    this.sample(broker);
    this.renderServices(broker.services);
    this.renderWorkers(broker.services);
  }

  sample(broker) {
    const now = performance.now();
    const totals = { t: now, requests: 0, errors: 0 };
    for (const service of broker.services) {
      totals.requests += service.stats.requests;
      totals.errors += errors(service.stats);
    }
    const last = this.last;
    this.last = totals;
    if (last && now > last.t) {
      const seconds = (now - last.t) / 1000;
      const requests = (totals.requests - last.requests) / seconds;
      const failed = (totals.errors - last.errors) / seconds;
      // Counters that went down: the broker started again; start over from here.
      if (requests >= 0 && failed >= 0) {
        this.points.push({ t: now, requests, errors: failed });
      }
    }
    this.points = this.points.filter((p) => p.t >= now - WINDOW_MS);
    const latest = this.points[this.points.length - 1];
    this.nowRequests.textContent = latest ? fmtNumber(latest.requests) : '—';
    this.nowErrors.textContent = latest ? fmtNumber(latest.errors) : '—';
    this.chart.update(this.points);
  }

  renderServices(services) {
    if (!services.length) {
      fill(this.services, note('No broker services yet: they appear when workers offer them.'));
      return;
    }
    const { el, body } = table('stack broker-services',
      ['Service', 'Workers', 'Waiting', 'Being handled', 'Requests', 'Errors']);
    for (const service of services) {
      const where = service.frontend ? h('div', { class: 'muted small mono' }, `clients: ${service.frontend}`) : null;
      body.append(h('tr', { dataset: { brokerService: service.name } },
        cell('Service', h('span', { class: 'service-name' }, service.name), where),
        cell('Workers', fmtNumber(service.workers)),
        cell('Waiting', fmtNumber(service.waiting)),
        cell('Being handled', fmtNumber(service.held)),
        cell('Requests', fmtNumber(service.stats.requests)),
        cell('Errors', h('span', { class: errors(service.stats) ? 'bad' : '' }, fmtNumber(errors(service.stats))))));
    }
    fill(this.services, el);
  }

  renderWorkers(services) {
    const rows = [];
    for (const service of services) {
      for (const worker of service.worker_list) rows.push([service.name, worker]);
    }
    if (!rows.length) {
      fill(this.workers, note('No worker is connected.'));
      return;
    }
    const { el, body } = table('stack broker-workers',
      ['Worker', 'Service', 'Can take', 'Handling', 'Last heard']);
    for (const [name, worker] of rows) {
      const who = worker.service_id
        ? h('span', null, h('strong', null, worker.service_id), h('span', { class: 'muted small' }, ` process ${worker.pid}`))
        : h('span', { class: 'mono small' }, worker.identity);
      body.append(h('tr', { dataset: { worker: worker.identity } },
        cell('Worker', who),
        cell('Service', name),
        cell('Can take', plural(worker.credit, 'request')),
        cell('Handling', plural(worker.held, 'request')),
        cell('Last heard', `${fmtDuration(worker.last_heard_ms_ago)} ago`)));
    }
    fill(this.workers, el);
  }
}
