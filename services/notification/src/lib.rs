//! The notification service: tells the customer what became of their order.
//!
//! It follows the outcome topic (`OrderCompleted`, `OrderCancelled`) and the shipping topic
//! (`OrderShipped`, `OrderDelivered`) and sends one [`Notification`] per event through a
//! [`Sink`] (a log line by default; e-mail or SMS would be another sink). It never notifies twice
//! for one event: events are deduplicated by `message-id` in a store on a compacted topic, so
//! redeliveries, replays and restarts send nothing again.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sagashop_contracts::Metadata;
use sagashop_kit::{
    Context, Error, FailurePolicy, HandlerError, ProcessorConfig, Record, Router, Running, Store,
    Wiring,
};
use serde::Serialize;

/// One message to a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The order.
    pub order_id: String,
    /// The customer, when the event names one.
    pub customer_id: Option<String>,
    /// `completed`, `cancelled`, `shipped` or `delivered`.
    pub kind: &'static str,
    /// What the customer reads.
    pub text: String,
}

/// Where notifications go.
pub trait Sink: Send + Sync {
    /// Delivers one notification; an error is retried (transient).
    fn send(&self, notification: &Notification) -> Result<(), String>;
}

/// Writes each notification as a log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogSink;

impl Sink for LogSink {
    fn send(&self, n: &Notification) -> Result<(), String> {
        tracing::info!(order_id = %n.order_id, customer_id = ?n.customer_id, kind = n.kind, text = %n.text, "notification");
        Ok(())
    }
}

/// Notification's own settings (its topics and group come from its [`Wiring`]).
#[derive(Clone)]
pub struct NotificationSettings {
    /// The outcome event types of the saga: (completed, cancelled).
    pub outcome_events: (String, String),
    /// Where notifications go.
    pub sink: Arc<dyn Sink>,
}

impl std::fmt::Debug for NotificationSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationSettings")
            .field("outcome_events", &self.outcome_events)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

fn text_of(kind: &'static str, payload: &serde_json::Value) -> String {
    let order = payload["orderId"].as_str().unwrap_or("?");
    match kind {
        "completed" => format!("Your order {order} is confirmed."),
        "cancelled" => format!(
            "Your order {order} was cancelled: {}.",
            payload["reason"].as_str().unwrap_or("no reason given")
        ),
        "shipped" => format!(
            "Your order {order} is on its way (shipment {}).",
            payload["shipmentId"].as_str().unwrap_or("?")
        ),
        _ => format!("Your order {order} was delivered."),
    }
}

/// Notifies customers of outcomes and shipments until shutdown, at least once and deduped on
/// the message id: a notified id is remembered for the context's retention, so a copy
/// delivered later than that is notified again.
pub async fn start(
    context: &Context,
    wiring: Wiring,
    settings: NotificationSettings,
) -> Result<Running, Error> {
    // Restored per assigned partition: a message delivered again comes on the partition it
    // came on before, whose owner remembers it.
    let sent: Store<i64> = context.store(&wiring, "sent")?;
    let counter: Family<KindLabels, Counter> = Family::default();
    context.monitor.register(
        "notifications_sent",
        "Notifications sent to customers, by kind",
        counter.clone(),
    );
    let sink = settings.sink;
    let handler = |kind: &'static str| {
        let (sink, counter) = (Arc::clone(&sink), counter.clone());
        move |record: Record, _metadata: Metadata| {
            let (sink, counter) = (Arc::clone(&sink), counter.clone());
            async move {
                let payload: serde_json::Value =
                    serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
                        .map_err(|e| HandlerError::Permanent(format!("not JSON: {e}")))?;
                let Some(order_id) = payload["orderId"].as_str() else {
                    return Err(HandlerError::Permanent("the event has no orderId".into()));
                };
                let notification = Notification {
                    order_id: order_id.to_owned(),
                    customer_id: payload["customerId"].as_str().map(str::to_owned),
                    kind,
                    text: text_of(kind, &payload),
                };
                sink.send(&notification).map_err(HandlerError::Transient)?;
                counter
                    .get_or_create(&KindLabels {
                        kind: kind.to_owned(),
                    })
                    .inc();
                Ok(vec![])
            }
        }
    };
    let policy = FailurePolicy::default();
    let (completed, cancelled) = &settings.outcome_events;
    let (outcome, shipping) = (wiring.topic("outcome")?, wiring.topic("shipping")?);
    let router = Router::new()
        .on_raw(outcome, completed, policy, handler("completed"))
        .on_raw(outcome, cancelled, policy, handler("cancelled"))
        .on_raw(shipping, "OrderShipped", policy, handler("shipped"))
        .on_raw(shipping, "OrderDelivered", policy, handler("delivered"));
    let config = ProcessorConfig {
        dedupe: Some(sent),
        dedupe_retention: context.retention,
        ..wiring.processor_config(&context.instance)?
    };
    let publisher = context.publisher(&wiring)?;
    let processor = context
        .processor_with(&wiring, config, router, publisher)
        .await?;
    Ok(Running::spawn(context, wiring, processor))
}
