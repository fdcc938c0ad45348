// sagashop console: one page, no build step, no library. It asks its own origin only
// (/api/sagas…, /api/dead-letters…, /api/topics, /api/console) and polls the live pages every
// 2 s, so the browser's work does not grow with the rate of orders.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const POLL_MS = 2000;
const STATUSES = ['RUNNING', 'COMPENSATING', 'COMPLETED', 'CANCELLED', 'FAILED'];
const PHASE_COLOURS = {
  STARTED: '#2f6fdf', SUCCEEDED: '#1f8a4c', FAILED: '#d0312d', TIMED_OUT: '#e0a100',
  COMPENSATING: '#c77c02', COMPENSATED: '#7a5af5',
};

const state = {
  about: { saga: '', actions: false },
  token: sessionStorage.getItem('sagashop-token') || '',
  poll: null,
  busy: false,
  generation: 0,
};

// ---------------------------------------------------------------- small helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else if (k === 'style') el.style.cssText = v; // CSSOM: allowed by the page's policy
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function time(iso) {
  if (!iso) return '-';
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

function ago(iso) {
  const ms = Date.now() - new Date(iso).getTime();
  if (ms < 1000) return 'now';
  if (ms < 60000) return Math.round(ms / 1000) + ' s ago';
  if (ms < 3600000) return Math.round(ms / 60000) + ' min ago';
  return Math.round(ms / 3600000) + ' h ago';
}

function status(name) {
  return h('span', { class: 'status ' + name, text: name });
}

async function api(path, options = {}) {
  const init = { method: options.method || 'GET', headers: { Accept: 'application/json' } };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers['Content-Type'] = 'application/json';
  }
  if (options.act && state.token) init.headers.Authorization = 'Bearer ' + state.token;
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    return { ok: false, status: 0, body: { detail: 'no answer from sagashop: ' + e.message } };
  }
  let body = null;
  const kind = response.headers.get('Content-Type') || '';
  if (kind.includes('json')) body = await response.json().catch(() => null);
  return { ok: response.ok, status: response.status, body };
}

function problem(r) {
  const b = r.body || {};
  return (b.title ? b.title + ': ' : '') + (b.detail || 'HTTP ' + r.status);
}

let messageTimer = null;
function say(text, ok) {
  const box = document.getElementById('message');
  box.textContent = text;
  box.className = ok ? 'ok' : '';
  box.hidden = false;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => { box.hidden = true; }, ok ? 6000 : 15000);
}

// Asks before an action; resolves to {reason, by} or null.
function confirmAction(title, text, needsReason) {
  const modal = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-reason-row').hidden = !needsReason;
  document.getElementById('confirm-by-row').hidden = !needsReason;
  const reason = document.getElementById('confirm-reason');
  reason.value = '';
  reason.required = needsReason;
  modal.hidden = false;
  (needsReason ? reason : document.getElementById('confirm-yes')).focus();
  return new Promise((resolve) => {
    const form = document.getElementById('confirm-form');
    const done = (answer) => {
      modal.hidden = true;
      form.removeEventListener('submit', yes);
      document.getElementById('confirm-no').removeEventListener('click', no);
      resolve(answer);
    };
    const yes = (e) => {
      e.preventDefault();
      done({ reason: reason.value.trim(), by: document.getElementById('confirm-by').value.trim() });
    };
    const no = () => done(null);
    form.addEventListener('submit', yes);
    document.getElementById('confirm-no').addEventListener('click', no);
  });
}

function showMode() {
  const mode = document.getElementById('mode');
  if (!state.about.actions) {
    mode.textContent = 'read-only';
    mode.title = 'this sagashop has no admin token: actions are off';
    mode.className = 'mode';
  } else if (state.token) {
    mode.textContent = 'actions on';
    mode.title = 'retry, cancel and replay send your token';
    mode.className = 'mode on';
  } else {
    mode.textContent = 'read-only';
    mode.title = 'enter the admin token to retry, cancel and replay';
    mode.className = 'mode';
  }
}

// ---------------------------------------------------------------- charts

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// A line chart of `series` ({name, colour, points: [[t ms, value]]}) over time.
function lineChart(title, unit, series) {
  const W = 1180, H = 220, L = 56, R = 16, T = 14, B = 26;
  const all = series.flatMap((x) => x.points);
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  const top = niceMax(Math.max(0, ...all.map((p) => p[1] || 0)));
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: '100%', role: 'img', 'aria-label': title });
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmt(v) + (i === 4 ? ' ' + unit : '')));
  }
  const ticks = 6;
  for (let i = 0; i <= ticks && all.length; i++) {
    const t = t0 + ((t1 - t0) * i) / ticks;
    const anchor = i === 0 ? 'start' : i === ticks ? 'end' : 'middle';
    svg.append(s('text', { x: x(t), y: H - 6, 'text-anchor': anchor },
      new Date(t).toLocaleTimeString([], { hour12: false })));
  }
  svg.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
  for (const one of series) {
    const pts = one.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (!pts.length) continue;
    const d = pts.map((p, i) => (i ? 'L' : 'M') + x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ');
    svg.append(s('path', { d, fill: 'none', stroke: one.colour, 'stroke-width': 2 }));
    // A sample between two empty ones is a dot, not an invisible line.
    for (const p of pts) svg.append(s('circle', { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: one.colour }));
  }
  const legend = h('div', { class: 'legend' }, series.map((one) => {
    const last = [...one.points].reverse().find((p) => p[1] !== null && p[1] !== undefined);
    return h('span', {}, h('i', { style: 'background:' + one.colour }), one.name + ': ' + (last ? fmt(last[1]) + ' ' + unit : '-'));
  }));
  return h('div', { class: 'card' }, h('h2', { text: title }), legend, svg);
}

function fmt(v) {
  if (v === null || v === undefined) return '-';
  if (v >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toFixed(1);
}

// ---------------------------------------------------------------- pages

const pages = {};

pages.sagas = async function (root, params) {
  const steps = await api('/api/sagas/versions');
  const stepNames = [...new Set(((steps.body || {}).versions || []).flatMap((v) => v.steps))];
  const filters = {
    status: params.get('status') || '',
    step: params.get('step') || '',
    olderThan: params.get('olderThan') || '',
    customer: params.get('customer') || '',
  };
  const go = (changes) => {
    const next = new URLSearchParams({ ...filters, ...changes });
    for (const [k, v] of [...next.entries()]) if (!v) next.delete(k);
    location.hash = '#/sagas' + (next.toString() ? '?' + next : '');
  };
  const counts = h('div', { class: 'counts', id: 'counts' });
  const select = (name, options, label) => h('label', {}, label,
    h('select', { id: 'filter-' + name, onchange: (e) => go({ [name]: e.target.value }) },
      h('option', { value: '', text: 'any' }),
      options.map((o) => h('option', { value: o, text: o, selected: filters[name] === o }))));
  const text = (name, label, placeholder) => h('label', {}, label,
    h('input', {
      id: 'filter-' + name, value: filters[name], placeholder, size: 10,
      onchange: (e) => go({ [name]: e.target.value.trim() }),
    }));
  const open = h('form', {
    class: 'row', onsubmit: (e) => {
      e.preventDefault();
      const id = e.target.elements.id.value.trim();
      if (id) location.hash = '#/saga/' + encodeURIComponent(id);
    },
  }, h('input', { name: 'id', placeholder: 'saga id', size: 38, id: 'open-id' }), h('button', { type: 'submit', text: 'Open' }));
  const rows = h('tbody', { id: 'saga-rows' });
  const table = h('table', { id: 'sagas' },
    h('thead', {}, h('tr', {}, ['saga id', 'status', 'step', 'attempt', 'customer', 'started', 'last change', 'version'].map((c) => h('th', { text: c })))),
    rows);
  const more = h('button', { id: 'more', hidden: true, text: 'More' });
  root.append(
    h('h1', { text: 'Sagas' }),
    counts,
    h('div', { class: 'row filters' },
      select('status', STATUSES, 'status'),
      select('step', stepNames, 'step'),
      text('olderThan', 'older than', '30s, 5m'),
      text('customer', 'customer', 'id'),
      h('button', { type: 'button', onclick: () => go({ status: '', step: '', olderThan: '', customer: '' }), text: 'Clear' }),
      open),
    table, h('p', {}, more));

  let pages = 1;
  const query = (cursor) => {
    const q = new URLSearchParams({ limit: '50' });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (cursor) q.set('cursor', cursor);
    return '/api/sagas?' + q;
  };
  const row = (saga) => h('tr', {
    class: 'clickable', 'data-id': saga.sagaId, 'data-status': saga.status,
    onclick: () => { location.hash = '#/saga/' + encodeURIComponent(saga.sagaId); },
  },
  h('td', { class: 'mono', text: saga.sagaId }), h('td', {}, status(saga.status)),
  h('td', { text: saga.step || '-' }), h('td', { class: 'num', text: saga.attempt || '-' }),
  h('td', { text: saga.customer || '-' }), h('td', { text: time(saga.startedAt) }),
  h('td', { text: ago(saga.updatedAt) }), h('td', { class: 'mono', text: (saga.version || '').slice(0, 8) }));
  const showCounts = (c) => {
    counts.replaceChildren(...STATUSES.map((name) => h('div', {
      class: 'count' + (filters.status === name ? ' active' : ''), 'data-status': name,
      onclick: () => go({ status: filters.status === name ? '' : name }),
    }, h('b', { text: c[name] || 0 }), name.toLowerCase())));
  };
  const refresh = async () => {
    if (pages > 1) return;
    const r = await api(query());
    if (!r.ok) { say(problem(r)); return; }
    showCounts(r.body.counts || {});
    rows.replaceChildren(...r.body.sagas.map(row));
    if (!r.body.sagas.length) rows.append(h('tr', {}, h('td', { colspan: 8, class: 'empty', text: 'no saga matches' })));
    more.hidden = !r.body.next;
    more.dataset.next = r.body.next || '';
  };
  more.addEventListener('click', async () => {
    const r = await api(query(more.dataset.next));
    if (!r.ok) { say(problem(r)); return; }
    pages += 1;
    rows.append(...r.body.sagas.map(row));
    more.hidden = !r.body.next;
    more.dataset.next = r.body.next || '';
  });
  await refresh();
  return refresh;
};

function timelineChart(saga) {
  const lines = saga.timeline || [];
  if (!lines.length) return h('p', { class: 'empty', text: 'no timeline yet' });
  const steps = [...new Set(lines.map((l) => l.step))];
  const t0 = new Date(lines[0].at).getTime();
  const end = ['COMPLETED', 'CANCELLED'].includes(saga.status) ? new Date(lines[lines.length - 1].at).getTime() : Date.now();
  const span = Math.max(1, end - t0);
  const W = 1180, L = 150, R = 30, T = 24, ROW = 34;
  const H = T + steps.length * ROW + 26;
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: '100%', id: 'timeline', role: 'img', 'aria-label': 'timeline' });
  steps.forEach((step, i) => {
    const y = T + i * ROW + ROW / 2;
    svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y, y2: y }));
    svg.append(s('text', { x: L - 10, y: y + 4, 'text-anchor': 'end', 'data-step': step }, step));
  });
  for (let i = 0; i <= 5; i++) {
    const t = t0 + (span * i) / 5;
    svg.append(s('text', { x: x(t), y: H - 6, 'text-anchor': 'middle' }, '+' + fmt((t - t0)) + ' ms'));
  }
  // One bar per attempt and per compensation: from its command to its answer.
  const open = new Map();
  for (const l of lines) {
    const key = l.step + (l.phase === 'COMPENSATING' || l.phase === 'COMPENSATED' ? '/undo' : '/do');
    const t = new Date(l.at).getTime();
    const y = T + steps.indexOf(l.step) * ROW + ROW / 2;
    if (l.phase === 'STARTED' || l.phase === 'COMPENSATING') {
      open.set(key, t);
    } else if (open.has(key)) {
      const from = open.get(key);
      open.delete(key);
      svg.append(s('rect', {
        x: x(from), y: y - 6, width: Math.max(2, x(t) - x(from)), height: 12, rx: 3,
        fill: PHASE_COLOURS[l.phase] || '#999', opacity: 0.35,
      }));
    }
    const title = `${l.step} · ${l.phase} · attempt ${l.attempt} · ${time(l.at)}` + (l.detail ? ' · ' + l.detail : '');
    svg.append(s('circle', {
      cx: x(t), cy: y, r: 6, fill: PHASE_COLOURS[l.phase] || '#999', 'data-phase': l.phase, 'data-step': l.step,
    }, s('title', {}, title)));
  }
  const legend = h('div', { class: 'legend' }, Object.entries(PHASE_COLOURS).map(([p, c]) => h('span', {}, h('i', { style: 'background:' + c }), p.toLowerCase().replace('_', ' '))));
  return h('div', {}, legend, svg);
}

pages.saga = async function (root, params, id) {
  const head = h('div', { class: 'card', id: 'saga-head' });
  const chart = h('div', { class: 'card' });
  const rows = h('tbody', { id: 'timeline-rows' });
  root.append(
    h('p', {}, h('a', { href: '#/sagas', text: '← all sagas' })),
    h('h1', {}, 'Saga ', h('span', { class: 'mono', id: 'saga-id', text: id })),
    head, chart,
    h('table', {}, h('thead', {}, h('tr', {}, ['time', 'since start', 'step', 'phase', 'attempt', 'detail'].map((c) => h('th', { text: c })))), rows));
  const act = async (verb) => {
    const asked = await confirmAction(
      verb === 'cancel' ? 'Cancel this saga?' : 'Retry this saga?',
      verb === 'cancel'
        ? `Saga ${id} will be compensated: every step it completed is undone.`
        : `Saga ${id} gets the command it waits for (or the compensation that gave up) again.`,
      true);
    if (!asked) return;
    const r = await api(`/api/sagas/${encodeURIComponent(id)}/${verb}`, {
      method: 'POST', act: true, json: { requestedBy: asked.by, reason: asked.reason },
    });
    if (r.ok) say(`${verb} requested: ${r.body.detail}`, true);
    else say(problem(r));
    await refresh();
  };
  let last = '';
  const refresh = async () => {
    const r = await api('/api/sagas/' + encodeURIComponent(id));
    if (!r.ok) {
      head.replaceChildren(h('p', { class: 'empty', text: problem(r) }));
      return;
    }
    const saga = r.body;
    const seen = JSON.stringify(saga);
    if (seen === last) return;
    last = seen;
    const ended = ['COMPLETED', 'CANCELLED'].includes(saga.status);
    head.replaceChildren(
      h('dl', { class: 'kv' },
        h('dt', { text: 'status' }), h('dd', {}, status(saga.status)),
        h('dt', { text: 'step' }), h('dd', { text: `${saga.step || '-'} (attempt ${saga.attempt || '-'})` }),
        h('dt', { text: 'customer' }), h('dd', { text: saga.customer || '-' }),
        h('dt', { text: 'started' }), h('dd', { text: time(saga.startedAt) }),
        h('dt', { text: 'last change' }), h('dd', { text: time(saga.updatedAt) }),
        h('dt', { text: 'version' }), h('dd', { class: 'mono', text: saga.version }),
        saga.reason && [h('dt', { text: 'reason' }), h('dd', { text: saga.reason })],
        saga.failedStep && [h('dt', { text: 'failed step' }), h('dd', { text: saga.failedStep })],
        saga.incident && [h('dt', { text: 'incident' }), h('dd', { text: saga.incident })]),
      h('div', { class: 'row' },
        h('button', { id: 'retry', class: 'primary', disabled: ended, onclick: () => act('retry'), text: 'Retry' }),
        h('button', { id: 'cancel', class: 'danger', disabled: ended || saga.status !== 'RUNNING', onclick: () => act('cancel'), text: 'Cancel' })));
    chart.replaceChildren(h('h2', { text: 'Timeline' }), timelineChart(saga));
    const t0 = saga.timeline.length ? new Date(saga.timeline[0].at).getTime() : 0;
    rows.replaceChildren(...saga.timeline.map((l) => h('tr', { 'data-phase': l.phase },
      h('td', { text: time(l.at) }), h('td', { class: 'num', text: '+' + (new Date(l.at).getTime() - t0) + ' ms' }),
      h('td', { text: l.step }), h('td', { text: l.phase }), h('td', { class: 'num', text: l.attempt }),
      h('td', { text: l.detail || '' }))));
  };
  await refresh();
  return refresh;
};

function flowChart(version) {
  const steps = version.steps;
  const BOX = 190, GAP = 50, L = 20, W = L * 2 + steps.length * BOX + (steps.length - 1) * GAP;
  const H = 250;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: Math.min(1240, W), role: 'img', 'aria-label': 'flow' },
    s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#687385' }))));
  steps.forEach((step, i) => {
    const x = L + i * (BOX + GAP);
    const g = s('g', { 'data-step': step.name });
    g.append(s('rect', { x, y: 16, width: BOX, height: 92, rx: 8, fill: '#fff', stroke: '#2f6fdf', 'stroke-width': 1.5 }));
    g.append(s('text', { x: x + 10, y: 36, 'font-weight': 600 }, step.name));
    g.append(s('text', { x: x + 10, y: 52, fill: '#687385' }, `${step.participant} · ${step.command}`));
    g.append(s('text', { x: x + 10, y: 70 }, `in flight ${step.inFlight} · timed out ${step.timedOut}`));
    g.append(s('text', { x: x + 10, y: 88, fill: step.failed ? '#d0312d' : '#1d2430' }, `compensating ${step.compensating} · failed ${step.failed}`));
    g.append(s('text', { x: x + 10, y: 102, fill: '#687385' }, `deadline ${step.timeout}`));
    if (i + 1 < steps.length) {
      g.append(s('line', { x1: x + BOX, y1: 62, x2: x + BOX + GAP - 2, y2: 62, stroke: '#687385', 'marker-end': 'url(#arrow)' }));
    }
    if (step.compensation) {
      g.append(s('rect', { x, y: 160, width: BOX, height: 44, rx: 8, fill: '#fff8ec', stroke: '#c77c02', 'stroke-dasharray': '5 3' }));
      g.append(s('text', { x: x + 10, y: 180, 'font-weight': 600 }, 'undo: ' + step.compensation));
      g.append(s('text', { x: x + 10, y: 196, fill: '#687385' }, 'if a later step fails'));
      g.append(s('line', { x1: x + BOX / 2, y1: 108, x2: x + BOX / 2, y2: 158, stroke: '#c77c02', 'stroke-dasharray': '4 3', 'marker-end': 'url(#arrow)' }));
    }
    svg.append(g);
  });
  return svg;
}

pages.flow = async function (root) {
  const body = h('div', { id: 'flow' });
  root.append(h('h1', {}, 'Flow ', h('span', { class: 'muted', text: state.about.saga })), body);
  const refresh = async () => {
    const r = await api('/api/sagas/flow');
    if (!r.ok) { say(problem(r)); return; }
    body.replaceChildren(...r.body.versions.map((v) => h('div', { class: 'card', 'data-version': v.version },
      h('h2', {}, 'version ', h('span', { class: 'mono', text: v.version }), v.current ? ' (current)' : ' (older)',
        h('span', { class: 'muted', text: ` · ${v.instances} instance(s) not ended` })),
      flowChart(v))));
  };
  await refresh();
  return refresh;
};

pages.dlq = async function (root) {
  const body = h('div', { id: 'dlq' });
  const detail = h('div', { id: 'letter' });
  root.append(h('h1', {}, 'Dead letters'),
    h('p', {}, h('button', { id: 'dlq-refresh', onclick: () => refresh(), text: 'Refresh' })),
    body, detail);
  let selected = '';
  const replay = async (letter) => {
    const asked = await confirmAction('Replay this dead letter?',
      `The original record goes back to ${letter.from.topic || '(unknown topic)'}, where its consumer handles it again.`, false);
    if (!asked) return;
    const r = await api('/api/dead-letters/replay', {
      method: 'POST', act: true, json: { topic: letter.topic, partition: letter.partition, offset: letter.offset },
    });
    if (r.ok) say(`replayed to ${r.body.replayedTo} (partition ${r.body.partition}, offset ${r.body.offset})`, true);
    else say(problem(r));
  };
  const show = (letter) => {
    selected = `${letter.topic}/${letter.partition}/${letter.offset}`;
    detail.replaceChildren(h('div', { class: 'card' },
      h('h2', { text: `${letter.topic} · partition ${letter.partition} · offset ${letter.offset}` }),
      h('dl', { class: 'kv' },
        h('dt', { text: 'key' }), h('dd', { class: 'mono', text: letter.key || '(none)' }),
        h('dt', { text: 'from' }), h('dd', { text: `${letter.from.topic}/${letter.from.partition}@${letter.from.offset}` }),
        h('dt', { text: 'error' }), h('dd', { text: letter.error || '-' })),
      h('h2', { text: 'headers' }),
      h('table', {}, h('tbody', {}, letter.headers.map(([k, v]) => h('tr', {}, h('td', { class: 'mono', text: k }), h('td', { class: 'mono', text: v === null ? '(none)' : v }))))),
      h('h2', { text: `payload (${letter.payloadBytes} bytes)` }),
      h('pre', { id: 'payload', text: letter.payload === null ? '(none)' : letter.payload }),
      h('button', { id: 'replay', class: 'primary', onclick: () => replay(letter), text: 'Replay' })));
    detail.scrollIntoView({ block: 'start' });
  };
  const refresh = async () => {
    const r = await api('/api/dead-letters');
    if (!r.ok) { say(problem(r)); return; }
    // The topics with letters first.
    const topics = [...r.body.topics].sort((a, b) => b.count - a.count || a.topic.localeCompare(b.topic));
    body.replaceChildren(...topics.map((t) => h('div', { class: 'card', 'data-topic': t.topic },
      h('h2', {}, t.topic, h('span', { class: 'muted', text: ` · ${t.services.join(', ')} · ${t.count} letter(s)` })),
      t.letters.length ? h('table', {},
        h('thead', {}, h('tr', {}, ['partition', 'offset', 'from', 'event type', 'attempts', 'failed at', 'error'].map((c) => h('th', { text: c })))),
        h('tbody', {}, t.letters.map((l) => h('tr', {
          class: 'clickable letter' + (selected === `${l.topic}/${l.partition}/${l.offset}` ? ' selected' : ''),
          'data-offset': l.offset, onclick: () => show(l),
        },
        h('td', { class: 'num', text: l.partition }), h('td', { class: 'num', text: l.offset }),
        h('td', { class: 'mono', text: `${l.from.topic}/${l.from.partition}@${l.from.offset}` }),
        h('td', { text: l.eventType || '-' }), h('td', { class: 'num', text: l.attempts || '-' }),
        h('td', { text: l.failedAt || '-' }), h('td', { text: l.error || '-' })))))
        : h('p', { class: 'empty', text: 'empty' }))));
  };
  await refresh();
  return null;
};

pages.topics = async function (root) {
  const topics = h('tbody', { id: 'topic-rows' });
  const groups = h('tbody', { id: 'group-rows' });
  root.append(h('h1', { text: 'Topics' }),
    h('div', { class: 'card' }, h('table', {},
      h('thead', {}, h('tr', {}, ['topic', 'declared by', 'partitions', 'in Kafka', 'replicas', 'cleanup'].map((c) => h('th', { text: c })))), topics)),
    h('h2', { text: 'Consumer groups' }),
    h('div', { class: 'card' }, h('table', {},
      h('thead', {}, h('tr', {}, ['group', 'service', 'lag', 'per topic'].map((c) => h('th', { text: c })))), groups)));
  const refresh = async () => {
    const r = await api('/api/topics');
    if (!r.ok) { say(problem(r)); return; }
    topics.replaceChildren(...r.body.topics.map((t) => h('tr', { 'data-topic': t.name },
      h('td', { class: 'mono', text: t.name }), h('td', { text: t.declaredBy }),
      h('td', { class: 'num', text: t.partitions }),
      h('td', { class: 'num', text: t.exists ? t.actualPartitions : 'missing' }),
      h('td', { class: 'num', text: t.exists ? t.actualReplicas : '-' }),
      h('td', { text: (t.config || {})['cleanup.policy'] || 'delete' }))));
    groups.replaceChildren(...r.body.groups.map((g) => h('tr', { 'data-group': g.group },
      h('td', { class: 'mono', text: g.group }), h('td', { text: g.service }),
      h('td', { class: 'num', text: g.lag }),
      h('td', { class: 'mono', text: g.topics.map((t) => `${t.topic}: ${t.lag}`).join('  ') }))));
  };
  await refresh();
  return refresh;
};

pages.load = async function (root) {
  const charts = h('div', { class: 'charts', id: 'charts' });
  root.append(h('h1', {}, 'Load ', h('span', { class: 'muted', text: 'last 10 minutes, per 5 s' })), charts);
  const refresh = async () => {
    const r = await api('/api/sagas/load?minutes=10');
    if (!r.ok) { say(problem(r)); return; }
    const at = (f) => r.body.samples.map((x) => [x.at, f(x)]);
    charts.replaceChildren(
      lineChart('Orders per second', '/s', [
        { name: 'accepted (sagas started)', colour: '#2f6fdf', points: at((x) => x.started) },
        { name: 'completed', colour: '#1f8a4c', points: at((x) => x.completed) },
        { name: 'cancelled', colour: '#7a5af5', points: at((x) => x.cancelled) },
        { name: 'failed', colour: '#d0312d', points: at((x) => x.failed) },
      ]),
      lineChart('Outcome latency (start to end)', 'ms', [
        { name: 'p50', colour: '#2f6fdf', points: at((x) => x.p50Ms) },
        { name: 'p99', colour: '#c77c02', points: at((x) => x.p99Ms) },
      ]));
  };
  await refresh();
  return refresh;
};

// ---------------------------------------------------------------- routing and polling

async function render() {
  const generation = ++state.generation;
  const [path, query] = (location.hash.slice(1) || '/sagas').split('?');
  const parts = path.split('/').filter(Boolean);
  const name = pages[parts[0]] ? parts[0] : 'sagas';
  const id = parts[1] ? decodeURIComponent(parts.slice(1).join('/')) : '';
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('active', a.dataset.page === (name === 'saga' ? 'sagas' : name));
  }
  state.poll = null;
  const root = h('div', { 'data-page': name });
  document.getElementById('page').replaceChildren(root);
  const poll = await pages[name](root, new URLSearchParams(query || ''), id);
  if (generation === state.generation) state.poll = poll;
}

async function tick() {
  if (!state.poll || state.busy || document.visibilityState === 'hidden') return;
  state.busy = true;
  try { await state.poll(); } finally { state.busy = false; }
}

// A fault of the page itself is shown, not swallowed.
window.addEventListener('error', (e) => say('console error: ' + e.message));
window.addEventListener('unhandledrejection', (e) => say('console error: ' + (e.reason && e.reason.message || e.reason)));

async function start() {
  const about = await api('/api/console');
  if (about.ok) state.about = about.body;
  else say(problem(about));
  document.getElementById('saga-name').textContent = state.about.saga || '';
  document.getElementById('token').value = state.token;
  showMode();
  document.getElementById('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = document.getElementById('token').value.trim();
    if (state.token) sessionStorage.setItem('sagashop-token', state.token);
    else sessionStorage.removeItem('sagashop-token');
    showMode();
    say(state.token ? 'actions will send this token' : 'token forgotten: read-only', true);
  });
  document.getElementById('token-forget').addEventListener('click', () => {
    state.token = '';
    document.getElementById('token').value = '';
    sessionStorage.removeItem('sagashop-token');
    showMode();
  });
  window.addEventListener('hashchange', render);
  setInterval(tick, POLL_MS);
  await render();
  document.body.dataset.ready = 'yes';
}

start();
