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
    Error, FailurePolicy, HandlerError, KafkaConfig, Monitor, Processor, ProcessorConfig,
    Publisher, Record, Router, Stats, Store,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

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

/// How the notification service runs.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    /// Outcomes.
    pub outcome_topic: String,
    /// Shipping events.
    pub shipping_topic: String,
    /// The outcome event types: (completed, cancelled).
    pub outcome_events: (String, String),
    /// Message ids already notified (compacted, with a retention).
    pub sent_topic: String,
    /// Where unreadable events go.
    pub dead_letter_topic: String,
    /// Its consumer group.
    pub group_id: String,
    /// How long a notified message id is remembered: a copy delivered later is sent again.
    pub retention: std::time::Duration,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// A running notification service.
pub struct Running {
    /// The processor's counters.
    pub stats: Arc<Stats>,
    /// Its work; `task.stopped()` waits for it to end after shutdown.
    pub task: sagashop_kit::Task,
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

/// Restores the ids already notified, then notifies until `shutdown`.
pub async fn start(
    kafka: &KafkaConfig,
    config: NotificationConfig,
    sink: Arc<dyn Sink>,
    monitor: &Monitor,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    // Restored per assigned partition: a message delivered again comes on the partition it
    // came on before, whose owner remembers it.
    let sent: Store<i64> = Store::owned(kafka, "notification-sent", &config.sent_topic, monitor);
    let counter: Family<KindLabels, Counter> = Family::default();
    monitor.register(
        "notifications_sent",
        "Notifications sent to customers, by kind",
        counter.clone(),
    );
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
    let (completed, cancelled) = &config.outcome_events;
    let router = Router::new()
        .on_raw(
            &config.outcome_topic,
            completed,
            policy,
            handler("completed"),
        )
        .on_raw(
            &config.outcome_topic,
            cancelled,
            policy,
            handler("cancelled"),
        )
        .on_raw(
            &config.shipping_topic,
            "OrderShipped",
            policy,
            handler("shipped"),
        )
        .on_raw(
            &config.shipping_topic,
            "OrderDelivered",
            policy,
            handler("delivered"),
        );
    let processor = Processor::new(
        kafka,
        ProcessorConfig {
            dedupe: Some(sent),
            dedupe_retention: config.retention,
            ..ProcessorConfig::new(&config.group_id, &config.dead_letter_topic)
        },
        router,
        Publisher::new(kafka, "notification")?.observed(monitor),
        monitor,
    )?;
    let stats = processor.stats();
    let task = sagashop_kit::Task::spawn("notification", processor.run(shutdown));
    Ok(Running { stats, task })
}
