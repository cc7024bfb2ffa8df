// The node's API as the console uses it: every call carries the token kept in this tab's
// sessionStorage; a 401 forgets it and asks for it again.

const KEY = 'troupe-console-token';

/** An answer other than 2xx, or no answer at all (`status` 0). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }

  /** The role is not run by this node (404 `role_not_running`, `no_cluster_client`). */
  get notRunning() {
    return this.status === 404 && (this.code === 'role_not_running' || this.code === 'no_cluster_client');
  }

  get unreachable() {
    return this.status === 0;
  }
}

let unauthorized = () => {};

export const token = {
  get() {
    return sessionStorage.getItem(KEY) || '';
  },
  set(value) {
    sessionStorage.setItem(KEY, value);
  },
  forget() {
    sessionStorage.removeItem(KEY);
  },
};

/** Calls `handler(message)` whenever the node refuses the token. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** `fetch` with the token; resolves to the Response when it is 2xx, else throws ApiError. */
export async function call(method, path, { signal, body } = {}) {
  const headers = { Authorization: `Bearer ${token.get()}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      signal,
      cache: 'no-store',
      credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'unreachable', 'The node does not answer.');
  }
  if (response.ok) return response;
  let code = 'error';
  let message = `The node answered ${response.status} ${response.statusText}.`;
  try {
    const answer = await response.json();
    if (answer && answer.error) {
      code = answer.error.code || code;
      message = answer.error.message || message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  const error = new ApiError(response.status, code, message);
  if (response.status === 401) {
    token.forget();
    unauthorized(message);
  }
  throw error;
}

export async function get(path, options) {
  return (await call('GET', path, options)).json();
}

export async function post(path, options) {
  return (await call('POST', path, options)).json();
}
