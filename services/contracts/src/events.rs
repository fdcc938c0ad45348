//! Facts the order saga publishes: what happened to an order.
//!
//! Money is an integer amount of the currency's minor unit (cents for EUR and USD) so that sums
//! are exact; `currency` is an ISO 4217 code.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// The product's id (a SKU).
    pub product_id: String,
    /// How many units; at least one.
    #[schemars(range(min = 1))]
    pub quantity: u32,
    /// The price of one unit in minor units of the order's currency.
    #[schemars(range(min = 0))]
    pub unit_price_minor: i64,
}

/// A customer placed an order; the order service accepted it. Starts the order saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPlaced {
    /// The order's id; also the record key and the saga id.
    pub order_id: Uuid,
    /// Who ordered.
    pub customer_id: String,
    /// What was ordered; at least one line.
    #[schemars(length(min = 1))]
    pub items: Vec<OrderItem>,
    /// ISO 4217 currency code, e.g. `EUR`.
    #[schemars(length(equal = 3))]
    pub currency: String,
    /// Sum of quantity × unit price over the items, in minor units.
    pub total_minor: i64,
    /// When the order service accepted the order.
    pub placed_at: DateTime<Utc>,
}

contract!(OrderPlaced, "OrderPlaced", 1);

/// Every step of the saga succeeded: stock reserved, payment authorised, shipment created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCompleted {
    /// The order.
    pub order_id: Uuid,
    /// The amount charged, in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// When the last step succeeded.
    pub completed_at: DateTime<Utc>,
}

contract!(OrderCompleted, "OrderCompleted", 1);

/// A step failed for good; the steps before it were compensated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderCancelled {
    /// The order.
    pub order_id: Uuid,
    /// Why, in words a customer could read ("out of stock: sku-42").
    pub reason: String,
    /// The name of the saga step that failed.
    pub failed_step: String,
    /// When the last compensation finished.
    pub cancelled_at: DateTime<Utc>,
}

contract!(OrderCancelled, "OrderCancelled", 1);

/// The carrier picked the parcel up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderShipped {
    /// The order.
    pub order_id: Uuid,
    /// The shipment the shipping service created.
    pub shipment_id: String,
    /// When it left the warehouse.
    pub shipped_at: DateTime<Utc>,
}

contract!(OrderShipped, "OrderShipped", 1);

/// The parcel reached the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderDelivered {
    /// The order.
    pub order_id: Uuid,
    /// The shipment.
    pub shipment_id: String,
    /// When it arrived.
    pub delivered_at: DateTime<Utc>,
}

contract!(OrderDelivered, "OrderDelivered", 1);

/// Where a saga step stands; the orchestrator publishes one per transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepPhase {
    /// The command was sent.
    Started,
    /// The participant replied with success.
    Succeeded,
    /// The participant replied with a failure, or the step ran out of attempts.
    Failed,
    /// No reply came before the step's deadline.
    TimedOut,
    /// The compensation command was sent.
    Compensating,
    /// The compensation succeeded.
    Compensated,
}

/// A saga step changed phase: the progress a read model shows as the order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaStepChanged {
    /// The saga instance (the trigger's key: the order id for the order saga).
    pub saga_id: String,
    /// The saga definition's name, e.g. `order-fulfilment`.
    pub saga_name: String,
    /// The step's name.
    pub step: String,
    /// The new phase.
    pub phase: StepPhase,
    /// Which attempt of the step (1 for the first).
    pub attempt: u32,
    /// A participant's reason or the orchestrator's note, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the orchestrator recorded it.
    pub at: DateTime<Utc>,
}

contract!(SagaStepChanged, "SagaStepChanged", 1);

/// How much of one product sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductCount {
    /// The product.
    pub product_id: String,
    /// Units sold (in completed orders).
    pub quantity: u64,
}

/// The analytics of one minute of outcomes (by the outcome's own time) in one partition of the
/// outcome topic, republished whenever an outcome of that minute arrives there. Its record key
/// is `<windowStart>/<partition>`: the minute's figure is the sum of the latest snapshot per key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsSnapshot {
    /// The minute's start.
    pub window_start: DateTime<Utc>,
    /// Orders completed in the minute.
    pub completed: u64,
    /// Orders cancelled in the minute.
    pub cancelled: u64,
    /// Revenue of the completed orders, in minor units per currency.
    pub revenue_minor: std::collections::BTreeMap<String, i64>,
    /// The best-selling products of the minute, most units first (at most five).
    pub top_products: Vec<ProductCount>,
}

contract!(AnalyticsSnapshot, "AnalyticsSnapshot", 1);
