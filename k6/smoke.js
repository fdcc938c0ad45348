// Smoke test: a few orders, each accepted with 202 and an orderId, each followed until its saga
// finishes. In-stock orders must complete; one out-of-stock order must be cancelled at
// reserve-inventory. Fails (exit code 99) when any check fails.
//
//   k6 run k6/smoke.js                       # against sagashop dev on 127.0.0.1:8080
//   BASE_URL=http://sagashop-order:8080 k6 run k6/smoke.js
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { orderBody, place, waitFinished, waitReady, summaryOutputs, TREND_STATS } from './lib.js';

const ORDERS = parseInt(__ENV.SMOKE_ORDERS || '5', 10);
// How long to wait for the order service first (a Job applied with the release starts early).
const READY_WAIT = parseInt(__ENV.READY_WAIT_SECONDS || '180', 10);
const accepted = new Counter('orders_accepted');
const rejected = new Counter('orders_rejected');
const finished = new Counter('orders_finished');

export const options = {
  scenarios: {
    smoke: { executor: 'shared-iterations', vus: 1, iterations: ORDERS + 1, maxDuration: '2m' },
  },
  summaryTrendStats: TREND_STATS,
  setupTimeout: `${READY_WAIT + 10}s`,
  thresholds: {
    checks: ['rate==1'],
    // Generous: the smoke test checks behaviour, not speed (and makes p99 of POST reported).
    'http_req_duration{name:place}': ['p(99)<5000'],
    orders_finished: [`count==${ORDERS + 1}`],
  },
};

export function setup() {
  if (!waitReady(READY_WAIT)) {
    throw new Error(`${READY_WAIT}s passed and the order service is not ready`);
  }
}

export default function () {
  const n = __ITER;
  // The last iteration orders a product that is never in stock.
  const outOfStock = n === ORDERS;
  const res = place(orderBody(n, outOfStock ? 'sku-none' : undefined));
  const ok = check(res, {
    'POST /api/orders answers 202': (r) => r.status === 202,
    'the answer carries an orderId': (r) => r.status === 202 && !!r.json('orderId'),
    'Location points at the order': (r) => (r.headers.Location || '').includes('/api/orders/'),
  });
  if (!ok) {
    rejected.add(1);
    return;
  }
  accepted.add(1);
  const view = waitFinished(res.json('orderId'), 30);
  if (view && (view.status === 'COMPLETED' || view.status === 'CANCELLED')) {
    finished.add(1);
  }
  if (outOfStock) {
    check(view, {
      'an out-of-stock order is CANCELLED': (v) => v !== null && v.status === 'CANCELLED',
      'it failed at reserve-inventory': (v) => v !== null && v.failedStep === 'reserve-inventory',
    });
  } else {
    check(view, { 'an in-stock order is COMPLETED': (v) => v !== null && v.status === 'COMPLETED' });
  }
}

export function handleSummary(data) {
  return summaryOutputs(data, 'sagashop smoke');
}
