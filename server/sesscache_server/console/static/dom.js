// DOM helpers: every value is inserted as text (textContent, text nodes), never as HTML.

/** An element: h('td', {class: 'num', title: 'x', onclick: f}, 'text', child, ...). */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') element.className = value;
    else if (name === 'text') element.textContent = String(value);
    else if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.appendChild(child);
    else element.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace the children of ``element``. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export function num(value) {
  const n = Number(value || 0);
  return Number.isFinite(n) ? n.toLocaleString('en-US') : '-';
}

export function bytes(value) {
  let n = Number(value || 0);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
  return unit === 0 ? `${n} B` : `${n.toFixed(1)} ${units[unit]}`;
}

export function pct(ratio) {
  return `${(100 * Number(ratio || 0)).toFixed(1)}%`;
}

/** A protobuf Duration ("12.5s") as "3d 4h", "5m 2s", "1.2s". */
export function duration(text) {
  if (!text) return '-';
  const s = parseFloat(text);
  if (!Number.isFinite(s)) return '-';
  if (s < 10) return `${s.toFixed(1)}s`;
  const parts = [];
  let rest = Math.floor(s);
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]]) {
    if (rest >= size || (unit === 's' && parts.length === 0)) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(' ');
}

/** A protobuf Timestamp as local "HH:MM:SS" (today) or "YYYY-MM-DD HH:MM". */
export function when(text) {
  if (!text) return '-';
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return '-';
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  if (date.toDateString() === now.toDateString()) return time;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
}

/** "12s ago" for a Timestamp. */
export function ago(text) {
  const t = Date.parse(text);
  if (Number.isNaN(t)) return '-';
  const s = Math.max(0, (Date.now() - t) / 1000);
  return `${duration(`${s}s`)} ago`;
}

/** The short name of an enum value: CACHE_EVENT_TYPE_SESSION_END -> session_end. */
export function enumName(value, prefix) {
  return String(value || '').replace(prefix, '').toLowerCase();
}
