// A service's recent output, following: `GET /v1/services/{id}/logs?lines=200&follow=1`
// streams NDJSON (one line object per line, `{"skipped": N}` when this page fell behind, an
// empty line now and then while quiet). Read with fetch and a stream reader; choosing another
// service aborts the stream.

import { call } from './api.js';
import { h, fmtClock } from './dom.js';

/** Lines kept on the page. */
const KEEP = 1000;
/** Lines asked for when a stream starts. */
const BACKLOG = 200;

export class LogsPanel {
  constructor({ select, follow, log, status }) {
    this.select = select;
    this.follow = follow;
    this.log = log;
    this.status = status;
    this.id = '';
    this.stream = null;
    this.retry = null;
    this.active = false;
    this.known = null;
    this.generation = null;
    select.addEventListener('change', () => this.choose(select.value));
    follow.addEventListener('change', () => {
      if (follow.checked) this.toEnd();
    });
    // Scrolling up to read stops keeping at the end; back at the end, it resumes.
    log.addEventListener('scroll', () => {
      const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
      if (follow.checked !== atEnd) follow.checked = atEnd;
    });
  }

  /** The services to choose from (the list from `GET /v1/services`). */
  setServices(services) {
    const ids = services.filter((s) => s.state !== 'deleted').map((s) => s.id);
    const key = ids.join('\n');
    if (key !== this.known) {
      this.known = key;
      const options = [new Option(ids.length ? 'Choose a service…' : 'No services', '')];
      for (const id of ids) options.push(new Option(id, id));
      this.select.replaceChildren(...options);
      this.select.value = ids.includes(this.id) ? this.id : '';
      this.select.hidden = !ids.length;
      this.follow.parentElement.hidden = !ids.length;
      this.log.hidden = !ids.length;
      if (!ids.length) {
        this.id = '';
        this.abort();
        this.status.textContent = 'This node runs no service, so there is no output to show.';
      }
    }
    if (this.active && !this.id && ids.length) this.choose(ids[0]);
  }

  /** Starts following service `id` (none when empty). */
  choose(id) {
    if (this.select.value !== id) this.select.value = id;
    if (id === this.id && this.stream) return;
    this.id = id;
    this.start();
  }

  /** Following resumes (after sign-in). */
  resume() {
    this.active = true;
    if (this.id) this.start();
  }

  /** Stops following (sign-out, token refused). */
  pause() {
    this.active = false;
    this.abort();
  }

  abort() {
    clearTimeout(this.retry);
    this.retry = null;
    if (this.stream) this.stream.abort();
    this.stream = null;
  }

  start() {
    this.abort();
    this.log.replaceChildren();
    this.generation = null;
    if (!this.id) {
      this.status.textContent = 'Choose a service to see what it prints.';
      return;
    }
    if (!this.active) return;
    const controller = new AbortController();
    this.stream = controller;
    this.read(this.id, controller).catch(() => {});
  }

  async read(id, controller) {
    const { signal } = controller;
    this.status.textContent = `Loading the output of ${id}…`;
    let ended = 'The node ended the stream.';
    try {
      const path = `/v1/services/${encodeURIComponent(id)}/logs?lines=${BACKLOG}&follow=1`;
      const response = await call('GET', path, { signal });
      this.status.textContent = `Output of ${id}, as it comes.`;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let pending = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += value;
        const lines = pending.split('\n');
        pending = lines.pop();
        this.add(lines.filter((line) => line.trim()).map((line) => JSON.parse(line)));
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status === 401) return;
      if (error.status === 404) {
        this.status.textContent = `${id}: ${error.message}`;
        this.stream = null;
        return;
      }
      ended = error.message;
    }
    if (signal.aborted || this.stream !== controller) return;
    // Try again shortly (the node restarted, or the connection dropped).
    this.status.textContent = `${ended} Trying again…`;
    this.stream = null;
    this.retry = setTimeout(() => {
      if (this.active && this.id === id && !this.stream) this.start();
    }, 2000);
  }

  add(entries) {
    if (!entries.length) return;
    const nodes = [];
    for (const entry of entries) {
      if (entry.skipped !== undefined) {
        nodes.push(h('div', { class: 'line line-note' }, `… ${entry.skipped} lines went by too fast to show …`));
        continue;
      }
      if (this.generation !== null && entry.generation !== this.generation) {
        nodes.push(h('div', { class: 'line line-note' }, `— started again (run ${entry.generation}, process ${entry.pid}) —`));
      }
      this.generation = entry.generation;
      nodes.push(h('div', { class: 'line', dataset: { stream: entry.stream } },
        h('time', { class: 'line-time' }, fmtClock(entry.at_unix_ms)),
        h('span', { class: 'line-text' }, entry.text)));
    }
    this.log.append(...nodes);
    const extra = this.log.childElementCount - KEEP;
    for (let i = 0; i < extra; i += 1) this.log.firstElementChild.remove();
    if (this.follow.checked) this.toEnd();
  }

  toEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }
}
