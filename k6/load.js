// Load test: a constant arrival rate of orders against POST /api/orders, with thresholds on
// latency and errors, then a drain that waits for the sagas to finish so the summary can report
// completed/s beside accepted/s.
//
//   RATE=100 DURATION=60s k6 run k6/load.js
//
// Settings (environment): RATE (orders/s, 50), DURATION (30s), VUS (pre-allocated, 20),
// MAX_VUS (200), P95_MS (200), P99_MS (500), DRAIN (seconds to wait for sagas, 30),
// BASE_URL, ANALYTICS_URL, SUMMARY_JSON (a file for the full JSON summary).
import { check, sleep } from 'k6';
import { Counter, Gauge } from 'k6/metrics';
import { orderBody, place, finishedSoFar, summaryOutputs, seconds, TREND_STATS } from './lib.js';

const accepted = new Counter('orders_accepted');
const rejected = new Counter('orders_rejected');
const finished = new Counter('orders_finished');
const finishedWithin = new Gauge('orders_finished_within_s');
const offeredSeconds = new Gauge('offered_seconds');

const RATE = parseInt(__ENV.RATE || '50', 10);
const DRAIN = parseInt(__ENV.DRAIN || '30', 10);
const DURATION = __ENV.DURATION || '30s';

export const options = {
  scenarios: {
    orders: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: parseInt(__ENV.VUS || '20', 10),
      maxVUs: parseInt(__ENV.MAX_VUS || '200', 10),
    },
  },
  summaryTrendStats: TREND_STATS,
  thresholds: {
    'http_req_duration{name:place}': [
      `p(95)<${__ENV.P95_MS || 200}`,
      `p(99)<${__ENV.P99_MS || 500}`,
    ],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  offeredSeconds.add(seconds(DURATION));
  return { before: finishedSoFar(), startedAt: Date.now() };
}

export default function () {
  const res = place(orderBody(__ITER));
  const ok = check(res, { 'POST /api/orders answers 202': (r) => r.status === 202 });
  if (ok) {
    accepted.add(1);
  } else {
    rejected.add(1);
  }
}

// Waits until the finished count stops growing (or DRAIN seconds), then records how many sagas
// finished and over how long, for completed/s.
export function teardown(data) {
  if (data.before < 0) {
    return; // no analytics endpoint: completed/s is not reported
  }
  let last = finishedSoFar();
  let lastGrowth = Date.now();
  const deadline = Date.now() + DRAIN * 1000;
  while (Date.now() < deadline && Date.now() - lastGrowth < 3000) {
    sleep(0.5);
    const now = finishedSoFar();
    if (now > last) {
      last = now;
      lastGrowth = Date.now();
    }
  }
  finished.add(Math.max(0, last - data.before));
  finishedWithin.add((lastGrowth - data.startedAt) / 1000);
}

export function handleSummary(data) {
  return summaryOutputs(data, `sagashop load at ${RATE} orders/s`);
}
