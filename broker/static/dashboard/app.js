// The Unbroken dashboard: plain ES modules, no build step.
// Data comes from the admin routes (/v1/channels, /v1/admin/stats, /v1/admin/channels/{id});
// rates are differences between two readings, so the broker only keeps cumulative counters.

import { tail } from '/dashboard/tail.js';

const REFRESH_MS = 2000;
const TAIL_LIMIT = 500; // rows kept in the tail view
const TOKEN_KEY = 'unbroken.adminToken';

const $ = (id) => document.getElementById(id);
let adminToken = sessionStorage.getItem(TOKEN_KEY) || '';
let previousStats = null;
const previousCounts = new Map(); // channel id -> [time, messages]
let detail = null; // {id, stop}

class AuthError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

async function api(path, options = {}) {
  const headers = adminToken ? { Authorization: `Bearer ${adminToken}` } : {};
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401 || res.status === 403) {
    const body = await res.json().catch(() => ({}));
    throw new AuthError(body.error ? body.error.message : `HTTP ${res.status}`, body.error?.code);
  }
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

// ---- formatting ------------------------------------------------------------------------------

function age(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const rate = (value) => (value >= 10 ? value.toFixed(0) : value.toFixed(1));

function el(tag, { dataset = {}, ...props } = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  for (const child of children) node.append(child);
  return node;
}

// ---- broker-wide numbers -----------------------------------------------------------------------

const RATES = [
  ['written/s', 'unbroken_messages_written_total'],
  ['relayed/s', 'unbroken_events_relayed_total'],
  ['delivered/s', 'unbroken_messages_delivered_total'],
  ['reader requests/s', 'unbroken_reader_requests_total'],
  ['resumes/s', 'unbroken_resumes_total'],
  ['errors/s', 'unbroken_http_errors_total'],
];

function renderStats(stats) {
  const cards = [];
  const subs = stats.subscribers;
  const total = Object.values(subs).reduce((a, b) => a + b, 0);
  cards.push(['readers', `${total}`, `sse ${subs.sse} · chunked ${subs.chunked} · ws ${subs.ws} · poll ${subs.poll}`]);
  for (const [label, name] of RATES) {
    const now = stats.totals[name] || 0;
    const dt = previousStats ? stats.time - previousStats.time : 0;
    const value = dt > 0 ? (now - (previousStats.totals[name] || 0)) / dt : 0;
    cards.push([label, rate(value), `${now} total`]);
  }
  cards.push(['slow consumers', `${stats.totals.unbroken_slow_consumers_total || 0}`, 'dropped readers']);
  $('rates').replaceChildren(
    ...cards.map(([label, value, sub]) =>
      el('div', { className: 'card', title: sub },
        el('div', { className: 'value' }, value),
        el('div', { className: 'label' }, `${label} · ${sub}`))),
  );
  $('broker-info').textContent =
    `engine ${stats.engine} · up ${age(stats.started_at * 1000)}${stats.draining ? ' · DRAINING' : ''}`;
  previousStats = stats;
}

// ---- channel list ----------------------------------------------------------------------------

function channelRate(channel) {
  const now = Date.now();
  const before = previousCounts.get(channel.id);
  previousCounts.set(channel.id, [now, channel.messages]);
  if (!before || now <= before[0]) return 0;
  return ((channel.messages - before[1]) * 1000) / (now - before[0]);
}

function renderChannels(channels) {
  const rows = channels.map((c) => {
    const row = el('tr', { dataset: { channel: c.id } },
      el('td', { className: 'id' }, c.id),
      el('td', { className: `state-${c.state}` }, c.state),
      el('td', {}, age(c.created_at)),
      el('td', { className: 'num' }, `${c.messages}`),
      el('td', { className: 'num' }, rate(channelRate(c))),
      ...['sse', 'chunked', 'ws', 'poll'].map((t) => el('td', { className: 'num' }, `${c.subscribers[t]}`)));
    row.addEventListener('click', () => { location.hash = `#/channel/${encodeURIComponent(c.id)}`; });
    return row;
  });
  document.querySelector('#channels tbody').replaceChildren(...rows);
  $('no-channels').hidden = channels.length > 0;
  $('channel-count').textContent = `(${channels.length})`;
}

// ---- channel detail --------------------------------------------------------------------------

function renderInfo(info) {
  const fields = [
    ['state', info.state], ['messages', info.messages], ['created', `${age(info.created_at)} ago`],
    ['last write', `${age(info.updated_at)} ago`], ['last event id', info.last_event_id || '—'],
    ['expires in', info.expires_in >= 0 ? `${info.expires_in}s` : '—'],
    ['readers', Object.entries(info.subscribers).map(([t, n]) => `${t} ${n}`).join(' · ')],
  ];
  $('detail-info').replaceChildren(...fields.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, `${v}`)]));
}

function appendEvent(event) {
  const list = $('tail');
  const data = event.type === 'gap' ? `history lost before ${event.data.first_id}` : JSON.stringify(event.data);
  list.append(el('li', { dataset: { type: event.type } },
    el('span', { className: 'id' }, event.id || ''),
    el('span', { className: `type type-${event.type}` }, event.type),
    el('span', { className: 'data' }, data)));
  while (list.children.length > TAIL_LIMIT) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

async function openDetail(id) {
  closeDetail();
  $('list-view').hidden = true;
  $('detail-view').hidden = false;
  $('detail-title').textContent = id;
  $('tail').replaceChildren();
  $('tail-mode').textContent = '';
  const current = (detail = { id, stop: null });
  const path = `/v1/admin/channels/${encodeURIComponent(id)}`;
  // Backfill the latest events, then stream what follows the last of them.
  const inspection = await api(`${path}?tail=50`);
  if (detail !== current) return;
  renderInfo(inspection);
  inspection.events.forEach(appendEvent);
  const last = inspection.events.length ? inspection.events[inspection.events.length - 1] : null;
  if (last && ['end', 'error', 'cancelled'].includes(last.type)) {
    $('tail-mode').textContent = 'ended';
    return;
  }
  const stop = await tail({
    channelId: id,
    lastId: last ? last.id : inspection.last_event_id,
    getToken: async () => (await api(`${path}/read-token`, { method: 'POST' })).token,
    onEvent: appendEvent,
    onMode: (text) => { $('tail-mode').textContent = `(${text})`; },
  });
  if (detail === current) current.stop = stop;
  else stop();
}

function closeDetail() {
  if (detail && detail.stop) detail.stop();
  detail = null;
  $('list-view').hidden = false;
  $('detail-view').hidden = true;
}

// ---- main loop -------------------------------------------------------------------------------

function showLogin(message, code) {
  $('main').hidden = true;
  $('login').hidden = false;
  // A broker without an admin token refuses everyone: say so, or the form looks like it works.
  $('login-error').textContent = adminToken || code === 'admin_disabled' ? message : '';
  $('status').textContent = 'signed out';
}

async function refresh() {
  try {
    const [stats, list] = await Promise.all([api('/v1/admin/stats'), api('/v1/channels')]);
    $('login').hidden = true;
    $('main').hidden = false;
    renderStats(stats);
    renderChannels(list.channels);
    if (detail) {
      const info = list.channels.find((c) => c.id === detail.id);
      if (info) renderInfo(info);
    }
    $('status').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err instanceof AuthError) showLogin(err.message, err.code);
    else $('status').textContent = `refresh failed: ${err.message}`;
  }
}

function route() {
  const match = location.hash.match(/^#\/channel\/(.+)$/);
  if (match) openDetail(decodeURIComponent(match[1])).catch((err) => {
    $('tail-mode').textContent = `(${err.message})`;
  });
  else closeDetail();
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  adminToken = $('login-token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, adminToken);
  refresh().then(route);
});
window.addEventListener('hashchange', route);
refresh().then(route);
setInterval(refresh, REFRESH_MS);
