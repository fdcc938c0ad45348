//! The order read model (the query side): every order's status, reason and step history, built
//! from the order, outcome and shipping topics.
//!
//! Events of one order arrive on different topics, so in any order: an outcome may come before
//! its `OrderPlaced`. The view never moves a final status back to `PENDING` and ignores a
//! history line it already has, so replays and duplicates change nothing.
//!
//! With a retention, an order is forgotten once its latest event is older than that, and an
//! event older than that is not applied: the model holds the recent orders, so memory and the
//! rebuild after a restart stay bounded by the rate times the retention.
//!
//! The view also counts the orders this process accepted that have no outcome yet
//! ([`View::pending_accepted`]), kept as they change so the edge can read it on every request:
//! the backlog it sheds load on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use uuid::Uuid;

use sagashop_contracts::events::{
    OrderCancelled, OrderCompleted, OrderDelivered, OrderItem, OrderPlaced, OrderShipped,
    SagaStepChanged, StepPhase,
};

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Accepted; the saga runs.
    Pending,
    /// Every step succeeded.
    Completed,
    /// Compensated after a failure.
    Cancelled,
}

impl OrderStatus {
    /// Parses `PENDING`, `COMPLETED` or `CANCELLED`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(Self::Pending),
            "COMPLETED" => Some(Self::Completed),
            "CANCELLED" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// One line of an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryLine {
    /// The saga step.
    pub step: String,
    /// What happened.
    pub phase: StepPhase,
    /// Which attempt.
    pub attempt: u32,
    /// A reason, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Where the shipment is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentView {
    /// Its id.
    pub shipment_id: String,
    /// `SHIPPED` or `DELIVERED`.
    pub status: &'static str,
    /// When it got there.
    pub at: DateTime<Utc>,
}

/// What `GET /api/orders/{id}` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order.
    pub order_id: Uuid,
    /// Where it is.
    pub status: OrderStatus,
    /// Who ordered (unknown until `OrderPlaced` is seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// What.
    pub items: Vec<OrderItem>,
    /// The total, in minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_minor: Option<i64>,
    /// The currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// When it was placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<DateTime<Utc>>,
    /// When it reached its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// Its shipment, once shipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipment: Option<ShipmentView>,
    /// The saga's steps, oldest first.
    pub history: Vec<HistoryLine>,
}

impl OrderView {
    fn empty(order_id: Uuid) -> Self {
        Self {
            order_id,
            status: OrderStatus::Pending,
            customer_id: None,
            items: Vec::new(),
            total_minor: None,
            currency: None,
            placed_at: None,
            finished_at: None,
            reason: None,
            failed_step: None,
            shipment: None,
            history: Vec::new(),
        }
    }
}

/// An order and the time of its latest event.
#[derive(Debug)]
struct Kept {
    view: OrderView,
    latest: DateTime<Utc>,
    /// Accepted by this process (not only read from Kafka).
    accepted_here: bool,
}

impl Kept {
    /// Counts towards [`View::pending_accepted`].
    fn pending_here(&self) -> bool {
        self.accepted_here && self.view.status == OrderStatus::Pending
    }
}

/// The orders, in memory: every one, or those with an event within the retention.
#[derive(Debug, Default)]
pub struct View {
    orders: RwLock<HashMap<Uuid, Kept>>,
    retention: Option<TimeDelta>,
    /// How many orders accepted here are `PENDING`: changed under the write lock, read without.
    pending_here: AtomicUsize,
}

impl View {
    /// A view that keeps an order until its latest event is `retention` old.
    pub fn with_retention(retention: Duration) -> Self {
        Self {
            orders: RwLock::default(),
            retention: Some(TimeDelta::from_std(retention).unwrap_or(TimeDelta::MAX)),
            pending_here: AtomicUsize::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Uuid, Kept>> {
        self.orders.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Uuid, Kept>> {
        self.orders.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Events before this are past the retention.
    fn cutoff(&self) -> Option<DateTime<Utc>> {
        self.retention
            .and_then(|r| Utc::now().checked_sub_signed(r))
    }

    fn with(&self, order_id: Uuid, at: DateTime<Utc>, change: impl FnOnce(&mut OrderView)) {
        self.change(order_id, at, false, change);
    }

    /// Applies `change` to the order (made when new), marking it accepted here when
    /// `accepted_here`, and keeps the count of pending orders accepted here.
    fn change(
        &self,
        order_id: Uuid,
        at: DateTime<Utc>,
        accepted_here: bool,
        change: impl FnOnce(&mut OrderView),
    ) {
        if self.cutoff().is_some_and(|cutoff| at < cutoff) {
            // A replayed event of an order the view has already forgotten (or would at once).
            return;
        }
        let mut orders = self.write();
        let (kept, before) = match orders.entry(order_id) {
            Entry::Occupied(entry) => {
                let kept = entry.into_mut();
                let before = kept.pending_here();
                (kept, before)
            }
            Entry::Vacant(entry) => {
                let kept = entry.insert(Kept {
                    view: OrderView::empty(order_id),
                    latest: at,
                    accepted_here: false,
                });
                (kept, false)
            }
        };
        change(&mut kept.view);
        kept.latest = kept.latest.max(at);
        kept.accepted_here |= accepted_here;
        match (before, kept.pending_here()) {
            (false, true) => {
                self.pending_here.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.pending_here.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Forgets the orders whose latest event is past the retention; returns how many.
    pub fn expire(&self) -> usize {
        let Some(cutoff) = self.cutoff() else {
            return 0;
        };
        let mut orders = self.write();
        let before = orders.len();
        let mut pending_here = 0;
        orders.retain(|_, kept| {
            let keep = kept.latest >= cutoff;
            if !keep && kept.pending_here() {
                pending_here += 1;
            }
            keep
        });
        self.pending_here.fetch_sub(pending_here, Ordering::Relaxed);
        before - orders.len()
    }

    /// How many orders this process accepted ([`View::accepted`]) have no outcome yet: the
    /// sagas it started that are still running (or stopped `FAILED`, until the retention
    /// forgets them). Orders accepted before a restart, or by other replicas, are not counted.
    pub fn pending_accepted(&self) -> usize {
        self.pending_here.load(Ordering::Relaxed)
    }

    /// How many orders it holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One order.
    pub fn get(&self, order_id: &Uuid) -> Option<OrderView> {
        self.read().get(order_id).map(|kept| kept.view.clone())
    }

    /// Orders with `status` (any when `None`), newest first, at most `limit`.
    pub fn recent(&self, status: Option<OrderStatus>, limit: usize) -> Vec<OrderView> {
        let mut orders: Vec<OrderView> = self
            .read()
            .values()
            .map(|kept| &kept.view)
            .filter(|o| status.is_none_or(|s| o.status == s))
            .cloned()
            .collect();
        orders.sort_by(|a, b| {
            b.placed_at
                .cmp(&a.placed_at)
                .then(b.order_id.cmp(&a.order_id))
        });
        orders.truncate(limit);
        orders
    }

    /// How many orders have each status: (pending, completed, cancelled).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.read()
            .values()
            .fold((0, 0, 0), |(p, c, x), kept| match kept.view.status {
                OrderStatus::Pending => (p + 1, c, x),
                OrderStatus::Completed => (p, c + 1, x),
                OrderStatus::Cancelled => (p, c, x + 1),
            })
    }

    /// An order was placed (read from Kafka).
    pub fn placed(&self, event: &OrderPlaced) {
        self.change(event.order_id, event.placed_at, false, |o| placed(o, event));
    }

    /// This process accepted an order (it is committed): like [`View::placed`], and it counts
    /// in [`View::pending_accepted`] until its outcome is seen.
    pub fn accepted(&self, event: &OrderPlaced) {
        self.change(event.order_id, event.placed_at, true, |o| placed(o, event));
    }

    /// Its saga completed.
    pub fn completed(&self, event: &OrderCompleted) {
        self.with(event.order_id, event.completed_at, |o| {
            o.status = OrderStatus::Completed;
            o.finished_at = Some(event.completed_at);
        });
    }

    /// Its saga was cancelled.
    pub fn cancelled(&self, event: &OrderCancelled) {
        self.with(event.order_id, event.cancelled_at, |o| {
            o.status = OrderStatus::Cancelled;
            o.reason = Some(event.reason.clone());
            o.failed_step = Some(event.failed_step.clone());
            o.finished_at = Some(event.cancelled_at);
        });
    }

    /// A step of its saga changed.
    pub fn step(&self, event: &SagaStepChanged) {
        let Ok(order_id) = event.saga_id.parse::<Uuid>() else {
            return;
        };
        let line = HistoryLine {
            step: event.step.clone(),
            phase: event.phase,
            attempt: event.attempt,
            detail: event.detail.clone(),
            at: event.at,
        };
        self.with(order_id, event.at, |o| {
            if !o.history.contains(&line) {
                o.history.push(line);
                o.history.sort_by_key(|l| l.at);
            }
        });
    }

    /// It shipped.
    pub fn shipped(&self, event: &OrderShipped) {
        self.with(event.order_id, event.shipped_at, |o| {
            if o.shipment.as_ref().is_none_or(|s| s.status != "DELIVERED") {
                o.shipment = Some(ShipmentView {
                    shipment_id: event.shipment_id.clone(),
                    status: "SHIPPED",
                    at: event.shipped_at,
                });
            }
        });
    }

    /// It arrived.
    pub fn delivered(&self, event: &OrderDelivered) {
        self.with(event.order_id, event.delivered_at, |o| {
            o.shipment = Some(ShipmentView {
                shipment_id: event.shipment_id.clone(),
                status: "DELIVERED",
                at: event.delivered_at,
            });
        });
    }
}

fn placed(order: &mut OrderView, event: &OrderPlaced) {
    order.customer_id = Some(event.customer_id.clone());
    order.items.clone_from(&event.items);
    order.total_minor = Some(event.total_minor);
    order.currency = Some(event.currency.clone());
    order.placed_at = Some(event.placed_at);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(order_id: Uuid, at: DateTime<Utc>) -> OrderPlaced {
        OrderPlaced {
            order_id,
            customer_id: "c-1".into(),
            items: Vec::new(),
            currency: "EUR".into(),
            total_minor: 1000,
            placed_at: at,
        }
    }

    fn completed(order_id: Uuid, at: DateTime<Utc>) -> OrderCompleted {
        OrderCompleted {
            order_id,
            total_minor: 1000,
            currency: "EUR".into(),
            completed_at: at,
        }
    }

    #[test]
    fn an_order_is_kept_until_its_latest_event_is_past_the_retention() {
        let view = View::with_retention(Duration::from_secs(60));
        let now = Utc::now();
        let (fresh, finishing, stale) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        view.placed(&placed(fresh, now));
        // Placed long ago, but its outcome is recent: kept, with both.
        view.placed(&placed(finishing, now - TimeDelta::seconds(50)));
        view.completed(&completed(finishing, now - TimeDelta::seconds(5)));
        // A replayed order entirely past the retention is never built.
        view.placed(&placed(stale, now - TimeDelta::seconds(120)));
        view.completed(&completed(stale, now - TimeDelta::seconds(90)));
        assert_eq!(view.len(), 2);
        assert_eq!(view.expire(), 0, "nothing is past the retention yet");
        assert_eq!(
            view.get(&finishing).map(|o| (o.status, o.customer_id)),
            Some((OrderStatus::Completed, Some("c-1".into())))
        );
        assert!(view.get(&stale).is_none());
    }

    #[test]
    fn expiry_forgets_orders_whose_latest_event_grew_old() {
        let view = View::with_retention(Duration::from_millis(200));
        let order = Uuid::new_v4();
        view.placed(&placed(order, Utc::now()));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(view.expire(), 1);
        assert!(view.is_empty());

        let unbounded = View::default();
        unbounded.placed(&placed(order, Utc::now() - TimeDelta::days(400)));
        assert_eq!(unbounded.expire(), 0, "without a retention nothing expires");
        assert_eq!(unbounded.len(), 1);
    }

    #[test]
    fn pending_accepted_counts_this_process_orders_until_their_outcome() {
        let view = View::with_retention(Duration::from_secs(60));
        let now = Utc::now();
        let (mine, other, early) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        view.accepted(&placed(mine, now));
        // Read back from Kafka after the edge accepted it: still one.
        view.placed(&placed(mine, now));
        // Another replica's order, read from Kafka: not counted.
        view.placed(&placed(other, now));
        assert_eq!(view.pending_accepted(), 1);
        // An outcome read before the edge marked its order (it can come first): never counted.
        view.completed(&completed(early, now));
        view.accepted(&placed(early, now));
        assert_eq!(view.pending_accepted(), 1);
        // Progress changes nothing; the outcome ends it, and a replayed outcome ends it once.
        view.step(&SagaStepChanged {
            saga_id: mine.to_string(),
            saga_name: "order-fulfilment".into(),
            step: "reserve-inventory".into(),
            phase: StepPhase::Started,
            attempt: 1,
            detail: None,
            at: now,
        });
        assert_eq!(view.pending_accepted(), 1);
        view.completed(&completed(mine, now));
        view.completed(&completed(mine, now));
        assert_eq!(view.pending_accepted(), 0);
        assert_eq!(
            view.counts(),
            (1, 2, 0),
            "the other replica's order is still pending"
        );
    }

    #[test]
    fn an_expired_pending_order_no_longer_counts() {
        let view = View::with_retention(Duration::from_millis(200));
        view.accepted(&placed(Uuid::new_v4(), Utc::now()));
        assert_eq!(view.pending_accepted(), 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(view.expire(), 1);
        assert_eq!(view.pending_accepted(), 0);
    }
}
