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
    /// Set on a compensation whose step's command was answered "done": the participant must
    /// hold a record of what it did, and finding none (state lost, or forgotten by an older
    /// version's age-based expiry) is an error to report, not "nothing to undo".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub succeeded_before: bool,
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

/// How a saga ended, as its participants are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaOutcome {
    /// Every step succeeded: what the participants did stays done (stock taken, money charged).
    Completed,
    /// Compensated: what the participants did was undone.
    Cancelled,
}

/// The saga a participant took part in has ended: what the participant keeps of it (a hold, a
/// payment) is finished work from now on, and may go after a grace. Sent by the orchestrator in
/// the transaction that ends the saga, to every step it sent a command, keyed like that step's
/// commands so that it reaches the records it concerns. A `FAILED` saga has not ended: its
/// participants keep everything until a retry ends it. The business fields are the trigger's,
/// as in the commands; they are optional, since another saga's trigger may lack them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaEnded {
    /// The saga and the step whose participant is told.
    #[serde(flatten)]
    pub context: StepContext,
    /// How it ended.
    pub outcome: SagaOutcome,
    /// The customer (payment's commands are keyed by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The order's items (inventory's holds are per product).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<OrderItem>,
}
contract!(SagaEnded, "SagaEnded", 1);
