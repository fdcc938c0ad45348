//! What the saga orchestrator asks of the participants, and how they answer.
//!
//! Every command carries a [`StepContext`] (saga id, step, attempt) so that a participant can
//! answer to the right step and recognise a replay. Business fields are named exactly as in
//! [`OrderPlaced`](crate::events::OrderPlaced) so that a generic orchestrator can build a command
//! by projecting the saga's trigger event, without knowing the command's Rust type.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::OrderItem;

/// Which saga step a command or reply belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepContext {
    /// The saga instance (the order id for the order saga).
    pub saga_id: String,
    /// The saga definition's name.
    pub saga_name: String,
    /// The step's name in the saga definition.
    pub step: String,
    /// Which attempt (1 for the first); a retried command has the next number.
    #[schemars(range(min = 1))]
    pub attempt: u32,
}

/// Reserve stock for every item, all or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReserveInventory {
    /// The step this command belongs to.
    #[serde(flatten)]
    pub context: StepContext,
    /// The order.
    pub order_id: Uuid,
    /// What to reserve.
    pub items: Vec<OrderItem>,
}
contract!(ReserveInventory, "ReserveInventory", 1);

/// Compensation of [`ReserveInventory`]: give the order's reserved stock back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseInventory {
    /// The step this command belongs to.
    #[serde(flatten)]
    pub context: StepContext,
    /// The order whose reservation to release.
    pub order_id: Uuid,
    /// The order's items (the orchestrator projects them from the trigger, as for
    /// [`ReserveInventory`]): where stock may have been taken. Empty when unknown.
    #[serde(default)]
    pub items: Vec<OrderItem>,
}
contract!(ReleaseInventory, "ReleaseInventory", 1);

/// Authorise the order's total on the customer's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizePayment {
    /// The step this command belongs to.
    #[serde(flatten)]
    pub context: StepContext,
    /// The order.
    pub order_id: Uuid,
    /// Whose account.
    pub customer_id: String,
    /// How much, in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
}
contract!(AuthorizePayment, "AuthorizePayment", 1);

/// Compensation of [`AuthorizePayment`]: refund what the order was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundPayment {
    /// The step this command belongs to.
    #[serde(flatten)]
    pub context: StepContext,
    /// The order whose authorisation to refund.
    pub order_id: Uuid,
    /// Whose account.
    pub customer_id: String,
}
contract!(RefundPayment, "RefundPayment", 1);

/// Create a shipment for the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateShipment {
    /// The step this command belongs to.
    #[serde(flatten)]
    pub context: StepContext,
    /// The order.
    pub order_id: Uuid,
    /// Who receives it.
    pub customer_id: String,
    /// What to ship.
    pub items: Vec<OrderItem>,
}
contract!(CreateShipment, "CreateShipment", 1);

/// Compensation of [`CreateShipment`]: cancel the order's shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelShipment {
    /// The step this command belongs to.
    #[serde(flatten)]
    pub context: StepContext,
    /// The order whose shipment to cancel.
    pub order_id: Uuid,
}
contract!(CancelShipment, "CancelShipment", 1);

/// A participant did what a command asked (or had already done it: replies are idempotent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepSucceeded {
    /// The step answered.
    #[serde(flatten)]
    pub context: StepContext,
    /// The command answered, e.g. `ReserveInventory`.
    pub command: String,
    /// What the participant wants recorded, e.g. a shipment id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
contract!(StepSucceeded, "StepSucceeded", 1);

/// A participant could not do what a command asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepFailed {
    /// The step answered.
    #[serde(flatten)]
    pub context: StepContext,
    /// The command answered.
    pub command: String,
    /// Why, in words a customer could read.
    pub reason: String,
    /// Whether trying again may succeed (a timeout) or not (a declined card).
    pub retryable: bool,
}
contract!(StepFailed, "StepFailed", 1);

/// The orchestrator's own wake-up: the step's deadline passed (or its retry backoff ended).
/// Published to the saga's reply topic, so it is handled in order with the step's replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepTimedOut {
    /// The step whose deadline passed.
    #[serde(flatten)]
    pub context: StepContext,
    /// The command that was awaited.
    pub command: String,
}
contract!(StepTimedOut, "StepTimedOut", 1);

/// Someone asked to cancel a running saga: it compensates what its steps did and ends
/// `CANCELLED` with this reason. Published to the saga's reply topic, keyed by the saga id, so
/// the orchestrator that owns the instance handles it in order with the steps' replies; a
/// request for a saga that is no longer running changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaCancelRequested {
    /// The instance.
    pub saga_id: String,
    /// Its saga.
    pub saga_name: String,
    /// Who asked (a person or a tool).
    pub requested_by: String,
    /// Why.
    pub reason: String,
}
contract!(SagaCancelRequested, "SagaCancelRequested", 1);

/// Someone asked to retry a saga: a `FAILED` one (a compensation gave up) sends that
/// compensation again and goes on compensating; a running one sends the command it waits for
/// again at once. Published like [`SagaCancelRequested`]; a request for a saga that has ended
/// changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaRetryRequested {
    /// The instance.
    pub saga_id: String,
    /// Its saga.
    pub saga_name: String,
    /// Who asked (a person or a tool).
    pub requested_by: String,
    /// Why.
    pub reason: String,
}
contract!(SagaRetryRequested, "SagaRetryRequested", 1);
