// The node itself (`GET /v1/node`): name, roles, uptime, version.

import { h, fill, fmtDuration, fmtNumber, note } from './dom.js';

const ROLE_NAMES = {
  supervisor: 'services',
  broker: 'request broker',
  beacon: 'cluster directory (beacon)',
  ipc: 'local message hub',
  cluster: 'cluster member',
};

const ROLE_STATES = {
  starting: ['starting', 'amber'],
  running: ['running', 'green'],
  stopping: ['stopping', 'amber'],
  stopped: ['stopped', 'grey'],
  abandoned: ['did not stop', 'red'],
};

export class NodePanel {
  constructor(facts, title) {
    this.facts = facts;
    this.title = title;
    this.name = '';
  }

  update(node) {
    this.name = node.name;
    this.title.textContent = node.name;
    document.title = `${node.name} · Troupe console`;
    const roles = h('ul', { class: 'chips' }, node.roles.map((role) => {
      const [state, tone] = ROLE_STATES[role.state] || [role.state, 'grey'];
      return h('li', { class: `chip chip-${tone}`, title: `${role.name}: ${state}`, dataset: { role: role.name } },
        ROLE_NAMES[role.name] || role.name,
        role.state === 'running' ? null : h('span', { class: 'chip-note' }, ` (${state})`));
    }));
    fill(this.facts,
      fact('Node', h('strong', { class: 'node-name', id: 'node-name' }, node.name)),
      fact('Up for', h('span', { id: 'node-uptime' }, fmtDuration(node.uptime_ms))),
      fact('Version', node.version),
      fact('Process id', String(node.pid)),
      fact('Settings reloaded', { 0: 'never', 1: 'once' }[node.reloads] || `${fmtNumber(node.reloads)} times`),
      fact('Settings from', h('span', { class: 'path' }, node.config_source)),
      fact('Runs', node.roles.length ? roles : 'no roles'));
  }

  failed(error) {
    fill(this.facts, note(error.message, 'error'));
  }
}

function fact(term, ...detail) {
  return h('div', { class: 'fact' }, h('dt', null, term), h('dd', null, ...detail));
}
