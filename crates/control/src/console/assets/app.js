// The console's entry point: sign-in with the node's token, then every panel updated from the
// API once a second (the cluster every two), and a service's output streamed as it comes.

import * as api from './api.js';
import { NodePanel } from './node.js';
import { ServicesPanel } from './services.js';
import { LogsPanel } from './logs.js';
import { BrokerPanel } from './broker.js';
import { ClusterPanel } from './cluster.js';
import { IpcPanel } from './ipc.js';

/** Time between the starts of two polls: the API is asked at most once a second. */
const POLL_MS = 1000;

const $ = (id) => document.getElementById(id);
const ui = {
  login: $('login'),
  form: $('login-form'),
  input: $('token'),
  error: $('login-error'),
  submit: $('login-submit'),
  dashboard: $('dashboard'),
  signOut: $('sign-out'),
  live: $('live'),
  banner: $('banner'),
};

const logs = new LogsPanel({ select: $('log-service'), follow: $('log-follow'), log: $('log'), status: $('log-status') });
const panels = {
  node: new NodePanel($('node-facts'), $('node-title')),
  services: new ServicesPanel($('services-body'), {
    onShowOutput(id) {
      logs.choose(id);
      $('logs-panel').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
    },
  }),
  broker: new BrokerPanel($('broker-body')),
  cluster: new ClusterPanel($('cluster-body')),
  ipc: new IpcPanel($('ipc-body')),
};

/** Bumped whenever polling stops, so that a loop of an earlier session ends. */
let session = 0;

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

function setLive(state, text) {
  ui.live.dataset.state = state;
  ui.live.textContent = text;
}

function showLogin(message) {
  session += 1;
  logs.pause();
  ui.dashboard.hidden = true;
  ui.signOut.hidden = true;
  ui.login.hidden = false;
  ui.error.hidden = !message;
  ui.error.textContent = message || '';
  ui.submit.disabled = false;
  setLive('idle', 'Not connected');
  ui.input.value = '';
  ui.input.focus();
}

function start() {
  ui.login.hidden = true;
  ui.dashboard.hidden = false;
  ui.signOut.hidden = false;
  setLive('wait', 'Connecting…');
  session += 1;
  logs.resume();
  poll(session);
}

/** Asks `path` and hands the answer to `panel`; returns what happened. */
async function load(path, panel) {
  try {
    panel.update(await api.get(path));
    return 'ok';
  } catch (error) {
    return fail(error, panel);
  }
}

function fail(error, panel) {
  if (error.status === 401) return 'unauthorized';
  if (error.notRunning) {
    panel.notRunning(error);
    return 'ok';
  }
  if (error instanceof api.ApiError) {
    if (!error.unreachable) panel.failed(error);
    return error.unreachable ? 'unreachable' : 'error';
  }
  // A bug of the page itself: shown, and logged for whoever debugs it.
  panel.failed(error);
  throw error;
}

async function loadCluster() {
  try {
    const [status, list] = await Promise.all([
      api.get('/v1/cluster'),
      api.get('/v1/cluster/nodes').catch((error) => {
        if (error.status === 401 || error.unreachable || !(error instanceof api.ApiError)) throw error;
        return error;
      }),
    ]);
    panels.cluster.update(status, list);
    return 'ok';
  } catch (error) {
    return fail(error, panels.cluster);
  }
}

const servicesAndOutput = {
  update(answer) {
    panels.services.update(answer);
    logs.setServices(answer.services);
  },
  notRunning(error) {
    panels.services.notRunning(error);
    logs.setServices([]);
  },
  failed(error) {
    panels.services.failed(error);
  },
};

/** The roles the node runs, from its last answer; a role it does not run is not asked. */
let roles = null;

const nodeAndRoles = {
  update(node) {
    roles = new Set(node.roles.map((role) => role.name));
    panels.node.update(node);
  },
  failed(error) {
    panels.node.failed(error);
  },
};

function runs(role) {
  return !roles || roles.has(role);
}

function skip(panel) {
  panel.notRunning();
  return 'ok';
}

function down() {
  setLive('down', 'Node not answering');
  ui.banner.hidden = false;
  ui.banner.textContent = 'The node does not answer. The figures below are from before; trying again every second…';
}

async function tick(round) {
  const first = await load('/v1/node', nodeAndRoles);
  if (first === 'unauthorized') return;
  if (first === 'unreachable') {
    down();
    return;
  }
  const jobs = [
    runs('supervisor') ? load('/v1/services', servicesAndOutput) : skip(servicesAndOutput),
    runs('broker') ? load('/v1/broker', panels.broker) : skip(panels.broker),
    runs('ipc') ? load('/v1/ipc', panels.ipc) : skip(panels.ipc),
  ];
  if (round % 2 === 0) jobs.push(runs('cluster') ? loadCluster() : skip(panels.cluster));
  const results = await Promise.all(jobs);
  if (results.includes('unauthorized')) return;
  if (results.includes('unreachable')) {
    down();
    return;
  }
  ui.banner.hidden = true;
  setLive('ok', `Live · ${new Date().toLocaleTimeString(undefined, { hour12: false })}`);
}

async function poll(mine) {
  for (let round = 0; mine === session; ) {
    const began = performance.now();
    if (!document.hidden) {
      try {
        await tick(round);
      } catch (error) {
        console.error(error);
      }
      round += 1;
    }
    await sleep(Math.max(0, POLL_MS - (performance.now() - began)));
  }
}

api.onUnauthorized(() => {
  if (!ui.login.hidden) return;
  showLogin('The node did not accept the token. Enter it again.');
});

ui.form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const value = ui.input.value.trim();
  if (!value) return;
  ui.submit.disabled = true;
  ui.error.hidden = true;
  api.token.set(value);
  try {
    await api.get('/v1/node');
    start();
  } catch (error) {
    if (error.status === 401) {
      showLogin('The node did not accept this token. Check it and try again.');
    } else {
      ui.error.hidden = false;
      ui.error.textContent = error.message;
      ui.submit.disabled = false;
    }
  }
});

ui.signOut.addEventListener('click', () => {
  api.token.forget();
  showLogin('Signed out. The token was forgotten.');
});

if (api.token.get()) start();
else showLogin('');
