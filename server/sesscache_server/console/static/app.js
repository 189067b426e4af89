// The sesscache web console: overview, sessions, entries and live events.
// Hash routes (#/, #/sessions, #/entries?session=ID, #/events); every value shown
// is inserted as text (see dom.js).

import { ApiError, call, follow, setToken, token } from './api.js';
import { ago, bytes, duration, enumName, fill, h, num, pct, when } from './dom.js';
import { Plot } from './plot.js';

const view = document.getElementById('view');
const me = { admin: false, info: null, authOn: false };
/** What the current page must stop when another one opens. */
let stops = [];

const EVENT_TYPES = ['hit', 'miss', 'store', 'invalidate', 'evict', 'expire', 'session_end'];
const SESSION_ORDERS = {
  created: 'SESSION_ORDER_CREATED',
  last_active: 'SESSION_ORDER_LAST_ACTIVE',
  entries: 'SESSION_ORDER_ENTRIES',
  bytes: 'SESSION_ORDER_BYTES',
  hits: 'SESSION_ORDER_HITS',
};
const ENTRY_ORDERS = {
  stored: 'CACHE_ENTRY_ORDER_STORED',
  hits: 'CACHE_ENTRY_ORDER_HITS',
  size: 'CACHE_ENTRY_ORDER_SIZE',
};
const LIMITS = [
  'max_sessions', 'max_sessions_per_principal', 'max_cache_bytes', 'max_entries_per_session',
  'max_bytes_per_session', 'session_idle_timeout', 'watch_buffer', 'max_watchers',
  'max_watchers_per_principal', 'max_request_bytes', 'max_response_bytes',
];
/** Events kept while paused; beyond it the oldest are dropped (and counted). */
const PAUSE_BUFFER = 5000;
/** Rows the live table keeps. */
const EVENT_ROWS = 300;

// -- the shell ---------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, search] = hash.split('?');
  return { page: path.replace(/^\//, '') || 'overview', params: new URLSearchParams(search || '') };
}

function go(page, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) query.set(key, value);
  const text = query.toString();
  location.hash = `#/${page}${text ? `?${text}` : ''}`;
}

function stopPage() {
  for (const stop of stops) stop();
  stops = [];
}

function errorBox(error) {
  const code = error instanceof ApiError ? error.code : 'ERROR';
  const box = h('div', { class: 'error', role: 'alert' }, h('strong', { text: code }), ' ',
    h('span', { class: 'message', text: error.message || String(error) }));
  for (const detail of error.details || []) {
    for (const violation of detail.fieldViolations || []) {
      box.append(h('div', { class: 'violation' }, h('code', { text: violation.field }), ': ',
        violation.description));
    }
  }
  return box;
}

function card(label, value, extra, id) {
  return h('div', { class: 'card', id: id ? `card-${id}` : undefined }, h('div', { class: 'label', text: label }),
    h('div', { class: 'value', text: value }), extra ? h('div', { class: 'extra', text: extra }) : null);
}

function section(title, ...children) {
  return h('section', { class: 'panel' }, h('h2', { text: title }), ...children);
}

async function signIn() {
  const form = document.getElementById('login');
  form.hidden = false;
  view.hidden = true;
  document.getElementById('token').focus();
}

async function whoami() {
  try {
    me.info = await call('GetServerInfo');
  } catch (error) {
    if (error instanceof ApiError && error.code === 'UNAUTHENTICATED') {
      me.info = null;
      document.getElementById('login-error').textContent = token() ? error.message : '';
      await signIn();
      return false;
    }
    throw error;
  }
  const settings = me.info.settings || {};
  me.admin = Object.keys(settings).length > 0;
  me.authOn = me.admin ? Boolean(settings.auth_tokens || settings.auth_tokens_file) : Boolean(token());
  document.getElementById('login').hidden = true;
  view.hidden = false;
  for (const link of document.querySelectorAll('#nav a[data-admin]')) link.hidden = !me.admin;
  const who = document.getElementById('who');
  fill(who,
    h('span', { class: `role ${me.admin ? 'admin' : 'viewer'}`, id: 'role',
      text: me.admin ? 'admin' : 'no admin role' }),
    me.authOn ? null : h('span', { class: 'muted', text: ' auth off' }),
    token() ? h('button', { class: 'link', onclick: () => { setToken(''); location.reload(); } },
      'Sign out') : null);
  return true;
}

async function render() {
  stopPage();
  const { page, params } = route();
  for (const link of document.querySelectorAll('#nav a')) {
    link.classList.toggle('active', link.dataset.page === page);
  }
  fill(view);
  const pages = { overview, sessions, entries, events };
  const show = pages[page] || overview;
  try {
    await show(params);
  } catch (error) {
    view.append(errorBox(error));
  }
  performance.mark(`rendered:${page}`); // for bench.console's page-load figures
}

function limitText(name, value) {
  if (name.includes('bytes')) return bytes(value);
  if (name.endsWith('timeout')) return Number(value) < 0 ? 'never' : duration(`${value}s`);
  return num(value);
}

/** The database URL (password masked by the server); of a SQLite file, its name only. */
function databaseText(info) {
  const url = String(info.database_url || '');
  return info.database_kind === 'sqlite' ? url.split('/').pop() : url;
}

// -- Overview ------------------------------------------------------------------------

async function overview() {
  const info = me.info;
  view.append(h('h1', { text: 'Overview' }));
  view.append(h('div', { class: 'cards' },
    card('version', info.version, info.python_version),
    card('uptime', duration(info.uptime), `since ${when(info.started)}`, 'uptime'),
    card('database', info.database_kind, databaseText(info)),
    card('replica', info.replica)));
  const cards = h('div', { class: 'cards', id: 'stats' });
  view.append(h('h2', { class: 'sub', text: me.admin ? 'The whole server' : 'Your sessions' }),
    cards);
  const canvas = h('canvas', { class: 'plot', id: 'plot', width: 800, height: 220 });
  const series = [
    { name: 'hits/s', color: '#16a34a' },
    { name: 'misses/s', color: '#dc2626' },
    { name: 'SQL saved/s', color: '#2563eb' },
  ];
  const plot = new Plot(canvas, series);
  const rates = h('div', { class: 'legend' });
  view.append(section('Hits, misses and SQL saved per second (up to the last 5 minutes)', rates, canvas));
  if (me.admin) {
    const settings = info.settings || {};
    const recent = h('div', { id: 'recent' });
    view.append(section('Most recently active sessions', recent));
    view.append(section('Limits', h('div', { class: 'limits' },
      LIMITS.filter((name) => name in settings).map((name) => h('div', { class: 'limit' },
        h('span', { class: 'muted', text: name.replaceAll('_', ' ') }),
        h('strong', { text: limitText(name, settings[name]) }))))));
    const refresh = async () => {
      try {
        const page = await call('ListSessions', { page_size: 8, order_by: SESSION_ORDERS.last_active });
        fill(recent, sessionTable(page.sessions, null),
          h('p', { class: 'muted' }, `${num(page.total_size)} live sessions · `,
            h('a', { href: '#/sessions?order=last_active', text: 'all sessions' })));
      } catch (error) {
        fill(recent, errorBox(error));
      }
    };
    await refresh();
    // Ranking 10,000 sessions takes the server some milliseconds: every 10 s, and only
    // while the page is seen.
    const timer = setInterval(() => { if (!document.hidden) refresh(); }, 10000);
    stops.push(() => clearInterval(timer));
  }
  let previous = null;
  const stream = follow({ stats: 1 }, {
    stats(frame) {
      const uptime = document.querySelector('#card-uptime .value');
      const started = Date.parse(info.started) / 1000;
      if (uptime && started) uptime.textContent = duration(`${Math.max(0, frame.time - started)}s`);
      const stats = (me.admin ? frame.server : frame.principal) || {};
      fill(cards,
        card('sessions', num(stats.sessions)),
        card('entries', num(stats.entries)),
        card('bytes', bytes(stats.size_bytes)),
        card('hit ratio', pct(stats.hit_ratio), `${num(stats.hits)} hits, ${num(stats.misses)} misses`));
      if (previous) {
        const dt = Math.max(0.001, frame.time - previous.time);
        const old = (me.admin ? previous.server : previous.principal) || {};
        const rate = (name) => Math.max(0, (Number(stats[name] || 0) - Number(old[name] || 0)) / dt);
        const values = [rate('hits'), rate('misses'), rate('sql_statements_saved')];
        plot.push(frame.time, values);
        fill(rates, series.map((s, i) => h('span', { class: 'key' },
          h('i', { class: `swatch s${i}` }), `${s.name} ${values[i].toFixed(1)}`)));
      }
      previous = frame;
    },
    error(error) { cards.after(errorBox(error)); },
  });
  stops.push(() => stream.close());
}

// -- Sessions --------------------------------------------------------------------------

function entriesLink(session) {
  // With authentication on, ids are hashes ("h:..."): the handle names the session.
  const real = !String(session.id).startsWith('h:');
  return `#/entries?${new URLSearchParams(real ? { session: session.id, handle: session.handle }
    : { handle: session.handle })}`;
}

function sessionTable(list, sort) {
  const columns = [
    ['id', null], ['peer', null], ['created', 'created'], ['last active', 'last_active'],
    ['entries', 'entries'], ['bytes', 'bytes'], ['hits', 'hits'], ['misses', null],
    ['in flight', null],
  ];
  const head = h('tr', {}, columns.map(([label, order]) => {
    if (!sort || !order) return h('th', { text: label });
    const active = sort.order === order;
    return h('th', { class: active ? 'sorted' : '' }, h('button', {
      class: 'link', onclick: () => sort.by(order), title: `order by ${label}`,
    }, label, active ? (order === 'created' ? ' ▲' : ' ▼') : ''));
  }));
  const rows = list.map((s) => h('tr', { dataset: { session: s.id } },
    h('td', {}, h('a', { href: entriesLink(s), class: 'mono', text: s.id })),
    h('td', { class: 'mono muted', text: s.peer }),
    h('td', { text: when(s.created) }),
    h('td', { text: ago(s.last_active), title: s.last_active }),
    h('td', { class: 'num', text: num(s.entries) }),
    h('td', { class: 'num', text: bytes(s.size_bytes) }),
    h('td', { class: 'num', text: num(s.hits) }),
    h('td', { class: 'num', text: num(s.misses) }),
    h('td', { class: 'num', text: num(s.calls_in_flight) })));
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: columns.length, class: 'muted', text: 'no sessions' })));
  return h('table', { class: 'grid', id: 'sessions' }, h('thead', {}, head), h('tbody', {}, rows));
}

async function sessions(params) {
  view.append(h('h1', { text: 'Sessions' }));
  if (!me.admin) {
    view.append(h('p', { class: 'denied', id: 'denied', text: 'Listing sessions needs the admin role. Open your own session under Entries.' }));
    return;
  }
  const state = { order: params.get('order') || 'last_active', tokens: [''], index: 0, size: 50 };
  if (!(state.order in SESSION_ORDERS)) state.order = 'last_active';
  const holder = h('div', {});
  const status = h('span', { class: 'muted' });
  const prev = h('button', { onclick: () => { state.index -= 1; load(); } }, '‹ Previous');
  const next = h('button', { onclick: () => { state.index += 1; load(); } }, 'Next ›');
  view.append(h('div', { class: 'toolbar' }, prev, next, status,
    h('button', { onclick: () => load() }, 'Refresh')), holder);
  const sort = {
    get order() { return state.order; },
    by(order) { state.order = order; state.tokens = ['']; state.index = 0; history.replaceState(null, '', `#/sessions?order=${order}`); load(); },
  };
  async function load() {
    try {
      const page = await call('ListSessions', {
        page_size: state.size, page_token: state.tokens[state.index], order_by: SESSION_ORDERS[state.order],
      });
      state.tokens[state.index + 1] = page.next_page_token;
      fill(holder, sessionTable(page.sessions, sort));
      const first = state.index * state.size;
      status.textContent = ` ${num(page.total_size)} live sessions · ${page.sessions.length ? `${num(first + 1)}–${num(first + page.sessions.length)}` : 'none'} · ordered by ${state.order.replace('_', ' ')} (server-side)`;
      prev.disabled = state.index === 0;
      next.disabled = !page.next_page_token;
    } catch (error) {
      fill(holder, errorBox(error));
    }
  }
  await load();
}

// -- Entries ------------------------------------------------------------------------------

async function entries(params) {
  const session = params.get('session') || '';
  const handle = params.get('handle') || '';
  view.append(h('h1', { text: 'Entries' }));
  const input = h('input', { id: 'session-id', name: 'session', value: session, placeholder: 'session id', spellcheck: 'false', autocomplete: 'off' });
  view.append(h('form', { class: 'toolbar', id: 'open-session', onsubmit: (e) => { e.preventDefault(); go('entries', { session: input.value.trim() }); } },
    h('label', { for: 'session-id', text: 'Session' }), input, h('button', { type: 'submit' }, 'Open')));
  if (!session && !handle) {
    view.append(h('p', { class: 'muted', text: me.admin ? 'Pick a session under Sessions, or type a session id.' : 'Type the id of one of your sessions.' }));
    return;
  }
  const filters = {
    region: params.get('region') || 'local_session',
    entity: params.get('entity') || '',
    order: params.get('order') || 'stored',
  };
  const regionSelect = h('select', { id: 'region' }, ['local_session', ...(me.admin ? ['default', '*'] : [])].map((r) => h('option', { value: r, text: r === '*' ? 'both regions' : r })));
  regionSelect.value = filters.region;
  const entity = h('input', { id: 'entity', value: filters.entity, placeholder: 'entity, e.g. Person', spellcheck: 'false' });
  const order = h('select', { id: 'order' }, Object.keys(ENTRY_ORDERS).map((o) => h('option', { value: o, text: `order: ${o}` })));
  order.value = filters.order;
  const apply = () => go('entries', { session, handle, region: regionSelect.value, entity: entity.value.trim(), order: order.value });
  regionSelect.addEventListener('change', apply);
  order.addEventListener('change', apply);
  entity.addEventListener('change', apply);
  const notice = h('div', { class: 'notice', id: 'notice' });
  const actions = h('div', { class: 'toolbar' }, regionSelect, entity, order);
  const canInvalidate = Boolean(session);
  if (canInvalidate) {
    const name = h('input', { id: 'query-name', placeholder: 'person name, e.g. person 10', spellcheck: 'false' });
    actions.append(
      h('form', { class: 'inline', onsubmit: async (e) => {
        e.preventDefault();
        await invalidate({ query: { name: name.value } }, notice, session);
        await load();
      } }, name, h('button', { type: 'submit', id: 'invalidate-query' }, 'Invalidate query')),
      h('button', { class: 'danger', id: 'invalidate-all', onclick: async () => {
        await invalidate({ session_cache: true }, notice, session);
        await load();
      } }, 'Invalidate session cache'));
  } else {
    actions.append(h('span', { class: 'muted', text: 'Invalidation needs the session id (ids are hashed with authentication on).' }));
  }
  if (me.admin) {
    actions.append(h('button', { class: 'danger admin-only', id: 'invalidate-shared', onclick: async () => {
      await invalidate({ shared_region: true }, notice, session);
      await load();
    } }, 'Invalidate shared region'));
  }
  view.append(h('p', { class: 'muted' }, 'Session ', h('code', { text: session || handle })), actions, notice);
  const holder = h('div', {});
  const pager = h('div', { class: 'toolbar' });
  view.append(holder, pager);
  const tokens = [''];
  let index = 0;
  async function load() {
    const request = {
      page_size: 50, page_token: tokens[index], region: filters.region, entity: filters.entity,
      order_by: ENTRY_ORDERS[filters.order] || ENTRY_ORDERS.stored,
    };
    if (!session) request.session = handle;
    try {
      const page = await call('ListCacheKeys', request, { session: session || undefined });
      tokens[index + 1] = page.next_page_token;
      fill(holder, entryTable(page.entries, canInvalidate ? async (entry) => {
        await invalidate({ key: entry.digest || entry.key }, notice, session);
        await load();
      } : null));
      fill(pager,
        h('button', { disabled: index === 0, onclick: () => { index -= 1; load(); } }, '‹ Previous'),
        h('button', { disabled: !page.next_page_token, onclick: () => { index += 1; load(); } }, 'Next ›'),
        h('span', { class: 'muted', text: ` ${num(page.total_size)} entries` }));
    } catch (error) {
      fill(holder, errorBox(error));
      fill(pager);
    }
  }
  await load();
}

async function invalidate(target, notice, session) {
  try {
    const result = await call('Invalidate', target, { session: session || undefined });
    fill(notice, h('span', { text: `removed ${num(result.removed_count)} entr${Number(result.removed_count) === 1 ? 'y' : 'ies'}` }));
  } catch (error) {
    fill(notice, errorBox(error));
  }
}

function entryTable(list, onInvalidate) {
  const head = h('tr', {}, ['digest', 'region', 'entity', 'rows', 'size', 'hits', 'stored', 'last access', 'expires', 'live', 'SQL', ''].map((t) => h('th', { text: t })));
  const rows = list.map((e) => {
    const parameters = Object.entries(e.parameters || {});
    const sql = h('details', {}, h('summary', { text: (e.statement || e.key).slice(0, 60) }),
      h('pre', { class: 'sql', text: e.statement || e.key }),
      parameters.length ? h('table', { class: 'kv params' }, h('tbody', {}, parameters.map(([k, v]) => h('tr', {}, h('th', { text: k }), h('td', { class: 'mono', text: v }))))) : null);
    const local = e.region === 'local_session';
    return h('tr', { dataset: { digest: e.digest } },
      h('td', { class: 'mono digest', text: e.digest }),
      h('td', { text: e.region }),
      h('td', { text: e.entity }),
      h('td', { class: 'num', text: num(e.rows) }),
      h('td', { class: 'num', text: bytes(e.size_bytes) }),
      h('td', { class: 'num', text: num(e.hits) }),
      h('td', { text: when(e.stored_at) }),
      h('td', { text: when(e.last_access) }),
      h('td', { text: e.no_expiry ? 'never' : duration(e.expires_in) }),
      h('td', { class: 'num', text: num(e.live_objects) }),
      h('td', { class: 'sqlcell' }, sql),
      h('td', {}, onInvalidate && (local || me.admin) ? h('button', { class: 'small', title: 'invalidate this entry', onclick: () => onInvalidate(e) }, 'Invalidate') : null));
  });
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 12, class: 'muted', text: 'no entries' })));
  return h('table', { class: 'grid', id: 'entries' }, h('thead', {}, head), h('tbody', {}, rows));
}

// -- Live events -------------------------------------------------------------------------

async function events(params) {
  view.append(h('h1', { text: 'Live events' }));
  const chosen = new Set((params.get('types') || '').split(',').filter((t) => EVENT_TYPES.includes(t)));
  const sessionFilter = params.get('session') || '';
  const boxes = EVENT_TYPES.map((t) => {
    const box = h('input', { type: 'checkbox', value: t, checked: chosen.has(t) });
    return h('label', { class: `chip t-${t}` }, box, ` ${t}`);
  });
  const sessionInput = h('input', { id: 'event-session', value: sessionFilter, placeholder: me.admin ? 'session (all when empty)' : 'your session id', spellcheck: 'false' });
  const apply = () => go('events', {
    types: boxes.map((b) => b.firstChild).filter((b) => b.checked).map((b) => b.value).join(','),
    session: sessionInput.value.trim(),
  });
  for (const b of boxes) b.firstChild.addEventListener('change', apply);
  sessionInput.addEventListener('change', apply);
  const counters = { received: 0, lost: 0, dropped: 0 };
  const buffer = [];
  let paused = false;
  const status = h('span', { class: 'muted', id: 'event-status' });
  const pause = h('button', { id: 'pause', onclick: () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) { for (const event of buffer.splice(0)) show(event); }
    showCounts();
  } }, 'Pause');
  const tbody = h('tbody', {});
  view.append(h('div', { class: 'toolbar' }, ...boxes), h('div', { class: 'toolbar' }, sessionInput, pause,
    h('button', { onclick: () => { tbody.replaceChildren(); } }, 'Clear'), status));
  const problem = h('div', {});
  view.append(problem, h('table', { class: 'grid', id: 'events' }, h('thead', {}, h('tr', {},
    ['time', 'type', 'session', 'region', 'digest', 'rows', 'lost'].map((t) => h('th', { text: t })))), tbody));
  function showCounts() {
    status.textContent = ` received ${num(counters.received)} · lost ${num(counters.lost)}${paused ? ` · paused, ${num(buffer.length)} waiting` : ''}${counters.dropped ? ` · ${num(counters.dropped)} dropped while paused` : ''}`;
  }
  function show(event) {
    const type = enumName(event.type, 'CACHE_EVENT_TYPE_');
    tbody.prepend(h('tr', { class: `t-${type}` },
      h('td', { class: 'mono', text: when(event.time) }),
      h('td', {}, h('span', { class: `badge t-${type}`, text: type })),
      h('td', { class: 'mono', text: event.session }),
      h('td', { text: event.region }),
      h('td', { class: 'mono', text: event.digest }),
      h('td', { class: 'num', text: num(event.rows) }),
      h('td', { class: 'num', text: Number(event.lost) ? num(event.lost) : '' })));
    while (tbody.childElementCount > EVENT_ROWS) tbody.lastElementChild.remove();
  }
  const watchAll = me.admin;
  if (!me.admin && !sessionFilter) {
    problem.append(h('p', { class: 'muted', text: 'Type your session id to watch its events (every session needs the admin role).' }));
    return;
  }
  const query = { types: [...chosen].join(','), stats: 0 };
  if (watchAll) query.all = 1;
  else query.session = sessionFilter;
  const stream = follow(query, {
    open() { fill(problem); showCounts(); },
    cache(event) {
      if (watchAll && sessionFilter && !String(event.session).includes(sessionFilter)) return;
      counters.received += 1;
      counters.lost += Number(event.lost || 0);
      if (paused) {
        buffer.push(event);
        if (buffer.length > PAUSE_BUFFER) { buffer.shift(); counters.dropped += 1; }
      } else {
        show(event);
      }
      showCounts();
    },
    error(error) { fill(problem, errorBox(error)); },
    close(reason) { fill(problem, h('p', { class: 'muted', text: reason })); },
  });
  stops.push(() => stream.close());
  showCounts();
}

// -- start -----------------------------------------------------------------------------------

document.getElementById('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  setToken(document.getElementById('token').value.trim());
  document.getElementById('token').value = '';
  if (await whoami()) render();
});
window.addEventListener('hashchange', render);

(async () => {
  try {
    if (await whoami()) await render();
  } catch (error) {
    fill(view, errorBox(error));
  }
  document.body.dataset.ready = '1';
})();
