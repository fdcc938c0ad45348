// Shared helpers for sagashop's k6 scripts: placing orders, waiting for their outcome, reading
// the analytics totals, and an end-of-test summary with accepted/s and completed/s.
import http from 'k6/http';
import { sleep } from 'k6';

/** The order API (`sagashop dev` locally; the order Service in a cluster). */
export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
/** Where `GET /api/analytics/summary` is served (the same address under `sagashop dev`). */
export const ANALYTICS_URL = (__ENV.ANALYTICS_URL || BASE_URL).replace(/\/$/, '');

const PRODUCTS = ['sku-1', 'sku-2', 'sku-3', 'sku-4', 'sku-5'];

/** An order body for one customer, of in-stock products unless `product` is given. */
export function orderBody(n, product) {
  return JSON.stringify({
    customerId: `${__ENV.RUN_TAG || 'k6'}-${__VU}-${n % 50}`,
    currency: 'EUR',
    items: [
      { productId: product || PRODUCTS[n % PRODUCTS.length], quantity: 1 + (n % 3), unitPrice: 1250 },
    ],
  });
}

/** With IDEMPOTENCY_KEYS=1 every order carries a key of its own (what the edge keeps for its window). */
const KEYED = __ENV.IDEMPOTENCY_KEYS === '1';

/** `POST /api/orders`; the response, tagged `place` for thresholds. */
export function place(body) {
  const headers = { 'content-type': 'application/json' };
  if (KEYED) {
    headers['Idempotency-Key'] = `${__ENV.RUN_TAG || 'k6'}-${__VU}-${__ITER}-${Date.now()}`;
  }
  return http.post(`${BASE_URL}/api/orders`, body, { headers, tags: { name: 'place' } });
}

/** Polls `GET /api/orders/{id}` until it is COMPLETED or CANCELLED; the last view, or null. */
export function waitFinished(orderId, timeoutSeconds) {
  const deadline = Date.now() + timeoutSeconds * 1000;
  let view = null;
  while (Date.now() < deadline) {
    const res = http.get(`${BASE_URL}/api/orders/${orderId}`, { tags: { name: 'status' } });
    if (res.status === 200) {
      view = res.json();
      if (view.status === 'COMPLETED' || view.status === 'CANCELLED') {
        return view;
      }
    }
    sleep(0.2);
  }
  return view;
}

/** Completed plus cancelled orders in the analytics summary (the last hour), or -1. */
// Waits (up to `timeoutSeconds`) until the order service answers /readyz: a Job applied with the
// rest of a release starts before the edge is up. Returns whether it became ready.
export function waitReady(timeoutSeconds) {
  const deadline = Date.now() + timeoutSeconds * 1000;
  while (Date.now() < deadline) {
    const res = http.get(`${BASE_URL}/readyz`, { tags: { name: 'ready' }, timeout: '5s' });
    if (res.status === 200) {
      return true;
    }
    sleep(2);
  }
  return false;
}

export function finishedSoFar() {
  const res = http.get(`${ANALYTICS_URL}/api/analytics/summary`, { tags: { name: 'summary' } });
  if (res.status !== 200) {
    return -1;
  }
  const summary = res.json();
  return summary.completed + summary.cancelled;
}

/** Trend statistics every script reports (k6 leaves p(99) out unless asked). */
export const TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

/** Seconds in a k6 duration such as `30s`, `2m` or `1m30s`. */
export function seconds(duration) {
  let total = 0;
  for (const [, n, unit] of String(duration).matchAll(/([0-9.]+)(ms|s|m|h)/g)) {
    total += parseFloat(n) * { ms: 0.001, s: 1, m: 60, h: 3600 }[unit];
  }
  return total;
}

function metric(data, name, field) {
  const m = data.metrics[name];
  return m && m.values[field] !== undefined ? m.values[field] : 0;
}

function fmt(n, digits) {
  return Number(n).toFixed(digits === undefined ? 1 : digits);
}

/** The end-of-test summary: rates, latency percentiles, errors and thresholds. */
export function summaryText(data, title) {
  const total = data.state.testRunDurationMs / 1000;
  // A constant-rate scenario reports its own length; otherwise the whole run counts.
  const offered = metric(data, 'offered_seconds', 'value') || total;
  const accepted = metric(data, 'orders_accepted', 'count');
  const rejected = metric(data, 'orders_rejected', 'count');
  const finished = metric(data, 'orders_finished', 'count');
  const finishedWithin = metric(data, 'orders_finished_within_s', 'value') || total;
  const lines = [
    `${title} against ${BASE_URL}`,
    `  duration            ${fmt(total)} s (orders offered for ${fmt(offered)} s)`,
    `  accepted (202)      ${accepted}  (${fmt(accepted / offered)}/s)`,
    `  rejected / failed   ${rejected}  (http_req_failed ${fmt(100 * metric(data, 'http_req_failed', 'rate'), 2)} %)`,
    `  finished sagas      ${finished}  (${fmt(finished / finishedWithin)}/s over ${fmt(finishedWithin)} s)`,
    `  POST latency        p50 ${fmt(metric(data, 'http_req_duration{name:place}', 'med'), 2)} ms` +
      `  p95 ${fmt(metric(data, 'http_req_duration{name:place}', 'p(95)'), 2)} ms` +
      `  p99 ${fmt(metric(data, 'http_req_duration{name:place}', 'p(99)'), 2)} ms`,
    `  checks              ${fmt(100 * metric(data, 'checks', 'rate'), 2)} % passed`,
  ];
  const failed = [];
  for (const [name, m] of Object.entries(data.metrics)) {
    for (const [threshold, result] of Object.entries(m.thresholds || {})) {
      if (!result.ok) failed.push(`${name}: ${threshold}`);
    }
  }
  lines.push(failed.length ? `  thresholds FAILED   ${failed.join('; ')}` : '  thresholds          all passed');
  return lines.join('\n') + '\n';
}

/** handleSummary's answer: the text on stdout, and JSON in SUMMARY_JSON when set. */
export function summaryOutputs(data, title) {
  const out = { stdout: summaryText(data, title) };
  if (__ENV.SUMMARY_JSON) {
    out[__ENV.SUMMARY_JSON] = JSON.stringify(data, null, 2);
  }
  return out;
}
