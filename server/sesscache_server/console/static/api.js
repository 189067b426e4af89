// The sesscache.v1 RPCs as JSON over HTTP, and the live event stream.
// The bearer token lives in sessionStorage (this tab only) and travels in the
// Authorization header: never in a URL, never in a cookie.

const BASE = '/api/sesscache.v1.SessionCache/';
const TOKEN_KEY = 'sesscache.token';

export class ApiError extends Error {
  constructor(status, body) {
    const data = body && typeof body === 'object' ? body : {};
    super(String(data.message || `HTTP ${status}`));
    this.status = status;
    this.code = String(data.code || 'UNKNOWN');
    this.details = Array.isArray(data.details) ? data.details : [];
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(session) {
  const result = { 'Content-Type': 'application/json' };
  const bearer = token();
  if (bearer) result.Authorization = `Bearer ${bearer}`;
  if (session) result['Session-Id'] = session;
  return result;
}

async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch { body = { message: response.statusText }; }
  return new ApiError(response.status, body);
}

/** Call RPC ``method`` with the JSON ``request``; ``session``: the Session-Id to send. */
export async function call(method, request = {}, { session, signal } = {}) {
  const response = await fetch(BASE + method, {
    method: 'POST',
    headers: headers(session),
    body: JSON.stringify(request),
    credentials: 'omit',
    cache: 'no-store',
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * Follow GET /api/events (Server-Sent Events, read with fetch so the token stays
 * in a header). ``on``: {stats(frame), cache(event), error(ApiError), open(), close()}.
 * Reconnects after a dropped connection (not after a refusal); returns {close()}.
 */
export function follow(params, on) {
  const controller = new AbortController();
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(key, String(value));
  }
  let closed = false;
  const run = async () => {
    while (!closed) {
      let response;
      try {
        response = await fetch(`/api/events?${query}`, {
          headers: headers(),
          credentials: 'omit',
          cache: 'no-store',
          signal: controller.signal,
        });
      } catch (error) {
        if (closed) return;
        on.close?.('the connection failed; retrying');
        await sleep(2000);
        continue;
      }
      if (!response.ok) {
        on.error?.(await errorOf(response));
        return;
      }
      on.open?.();
      try {
        await readEvents(response.body, on);
      } catch (error) {
        if (closed) return;
      }
      if (closed) return;
      on.close?.('the stream ended; reconnecting');
      await sleep(2000);
    }
  };
  run();
  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}

async function readEvents(body, on) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (!data.length) continue;
      let parsed;
      try { parsed = JSON.parse(data.join('\n')); } catch { continue; }
      if (event === 'error') on.error?.(new ApiError(0, parsed));
      else on[event]?.(parsed);
    }
    if (buffer.length > 1 << 20) throw new Error('event too large');
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
