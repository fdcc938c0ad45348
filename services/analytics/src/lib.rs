//! The analytics service: orders, revenue and top products per minute, from the outcome
//! stream.
//!
//! Each outcome updates its minute's window (by the outcome's own timestamp, so a replay or a
//! late event lands in the right minute) in a store on a compacted topic, and the window's new
//! figures are published as `AnalyticsSnapshot` to the snapshots topic — both in one
//! transaction, so every outcome counts exactly once. `GET /api/analytics/summary` serves the
//! recent windows and their totals.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sagashop_contracts::events::{AnalyticsSnapshot, ProductCount};
use sagashop_contracts::{Envelope, Metadata};
use sagashop_kit::router::HandlerResult;
use sagashop_kit::{
    Context, Error, Expiry, FailurePolicy, HandlerError, Outgoing, ProcessorConfig, Record, Router,
    Running, Store, Wiring,
};
use serde::{Deserialize, Serialize};

/// Analytics' own settings (its topics and group come from its [`Wiring`]).
#[derive(Debug, Clone)]
pub struct AnalyticsSettings {
    /// The outcome event types of the saga: (completed, cancelled).
    pub outcome_events: (String, String),
}

/// The summary covers the latest hour: windows are kept at least that long.
const SUMMARY_SPAN: std::time::Duration = std::time::Duration::from_secs(3600);

/// One minute's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Orders completed.
    pub completed: u64,
    /// Orders cancelled.
    pub cancelled: u64,
    /// Revenue per currency, minor units.
    pub revenue_minor: BTreeMap<String, i64>,
    /// Units sold per product.
    pub products: BTreeMap<String, u64>,
}

impl Window {
    /// Adds `other`'s counts to these.
    fn absorb(&mut self, other: &Window) {
        self.completed += other.completed;
        self.cancelled += other.cancelled;
        for (currency, revenue) in &other.revenue_minor {
            *self.revenue_minor.entry(currency.clone()).or_default() += revenue;
        }
        for (product, quantity) in &other.products {
            *self.products.entry(product.clone()).or_default() += quantity;
        }
    }
}

fn top(products: &BTreeMap<String, u64>, n: usize) -> Vec<ProductCount> {
    let mut counts: Vec<ProductCount> = products
        .iter()
        .map(|(product_id, quantity)| ProductCount {
            product_id: product_id.clone(),
            quantity: *quantity,
        })
        .collect();
    counts.sort_by(|a, b| {
        b.quantity
            .cmp(&a.quantity)
            .then(a.product_id.cmp(&b.product_id))
    });
    counts.truncate(n);
    counts
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    total_minor: Option<i64>,
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    cancelled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    product_id: String,
    quantity: u64,
}

struct Analytics {
    windows: Store<Window>,
    /// Where snapshots go.
    snapshots_topic: String,
    guard: std::sync::Mutex<()>,
}

impl Analytics {
    fn count(&self, record: &Record, metadata: &Metadata, completed: bool) -> HandlerResult {
        let outcome: Outcome =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
                .map_err(|e| HandlerError::Permanent(format!("not an outcome: {e}")))?;
        let at = outcome
            .completed_at
            .or(outcome.cancelled_at)
            .unwrap_or_else(Utc::now);
        let start = at
            .duration_trunc(TimeDelta::minutes(1))
            .map_err(|e| HandlerError::Permanent(format!("bad timestamp: {e}")))?;
        // One window per minute and partition of the outcomes, each with one writer.
        let key = format!(
            "{}/{}",
            start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            record.partition
        );
        let _held = self
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut window = self.windows.get(&key).unwrap_or_default();
        if completed {
            window.completed += 1;
            if let (Some(currency), Some(total)) = (outcome.currency, outcome.total_minor) {
                *window.revenue_minor.entry(currency).or_default() += total;
            }
            for item in outcome.items {
                *window.products.entry(item.product_id).or_default() += item.quantity;
            }
        } else {
            window.cancelled += 1;
        }
        let snapshot = snapshot(start, &window);
        let envelope = Envelope::caused_by(metadata, key.clone(), snapshot);
        Ok(vec![
            self.windows
                .put(&key, window)
                .map_err(|e| HandlerError::Transient(e.to_string()))?,
            Outgoing::event(&self.snapshots_topic, &envelope)
                .map_err(|e| HandlerError::Permanent(e.to_string()))?,
        ])
    }
}

fn snapshot(start: DateTime<Utc>, window: &Window) -> AnalyticsSnapshot {
    AnalyticsSnapshot {
        window_start: start,
        completed: window.completed,
        cancelled: window.cancelled,
        revenue_minor: window.revenue_minor.clone(),
        top_products: top(&window.products, 5),
    }
}

/// What `GET /api/analytics/summary` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The last minutes with outcomes, newest first (at most 60).
    pub minutes: Vec<AnalyticsSnapshot>,
    /// Completed orders over those minutes.
    pub completed: u64,
    /// Cancelled orders over those minutes.
    pub cancelled: u64,
    /// Revenue over those minutes, per currency.
    pub revenue_minor: BTreeMap<String, i64>,
    /// Best sellers over those minutes.
    pub top_products: Vec<ProductCount>,
}

/// The summary of the latest hour of windows.
pub fn summarise(windows: &Store<Window>) -> Summary {
    // Each partition of the outcomes keeps its own window per minute: add them up.
    let mut minutes: BTreeMap<DateTime<Utc>, Window> = BTreeMap::new();
    for (k, w) in windows.entries() {
        let minute = k.split_once('/').map_or(k.as_str(), |(minute, _)| minute);
        if let Ok(start) = DateTime::parse_from_rfc3339(minute) {
            minutes.entry(start.to_utc()).or_default().absorb(&w);
        }
    }
    let entries: Vec<(DateTime<Utc>, Window)> = minutes.into_iter().rev().take(60).collect();
    let mut total = Window::default();
    for (_, w) in &entries {
        total.absorb(w);
    }
    Summary {
        minutes: entries.iter().map(|(s, w)| snapshot(*s, w)).collect(),
        completed: total.completed,
        cancelled: total.cancelled,
        revenue_minor: total.revenue_minor,
        top_products: top(&total.products, 5),
    }
}

/// How long a batch of outcomes may gather before its transaction commits. Analytics is a read
/// model off the order's path, and most of what it reads is the saga's progress events, which
/// it skips: with the runtime's defaults (a batch closes after 2 ms without a record) it committed
/// a transaction for every few of them, about as many transactions as the orchestrator, each costing the broker milliseconds of CPU that the
/// orders' own hops then waited for. A quarter of a second of delay on the summary is not
/// noticed; the transactions saved are (docs/benchmarks.md, "Faster sagas").
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// A batch of outcomes closes early once nothing has come for this long.
const BATCH_GAP: std::time::Duration = std::time::Duration::from_millis(50);

/// Restores the windows, then counts outcomes until shutdown. A minute's window is kept for
/// the context's retention after its last outcome, and at least the hour the summary shows.
pub async fn start(
    context: &Context,
    wiring: Wiring,
    settings: AnalyticsSettings,
) -> Result<Running, Error> {
    // Restored per assigned partition: a minute's window per partition of the outcomes.
    let windows: Store<Window> = context.store(&wiring, "windows")?;
    let analytics = Arc::new(Analytics {
        windows: windows.clone(),
        snapshots_topic: wiring.topic("snapshots")?.to_owned(),
        guard: std::sync::Mutex::new(()),
    });
    let on = |completed: bool| {
        let analytics = Arc::clone(&analytics);
        move |record: Record, metadata: Metadata| {
            let result = analytics.count(&record, &metadata, completed);
            async move { result }
        }
    };
    let policy = FailurePolicy::default();
    let (completed, cancelled) = &settings.outcome_events;
    let outcome = wiring.topic("outcome")?;
    let router = Router::new()
        .on_raw(outcome, completed, policy, on(true))
        .on_raw(outcome, cancelled, policy, on(false));
    let publisher = context.publisher(&wiring)?;
    let retention = context.retention.max(SUMMARY_SPAN);
    let config = ProcessorConfig {
        batch_linger: BATCH_LINGER,
        batch_gap: BATCH_GAP,
        ..wiring.processor_config(&context.instance)?
    };
    let processor = context
        .processor_with(&wiring, config, router, publisher)
        .await?
        .reloads(windows.clone())
        .expires(Expiry::new().of(&windows, retention, |_| true));
    let api = axum::Router::new()
        .route(
            "/api/analytics/summary",
            get(|State(windows): State<Store<Window>>| async move { Json(summarise(&windows)) }),
        )
        .with_state(windows);
    Ok(Running::spawn(context, wiring, processor).with_routes(api))
}
