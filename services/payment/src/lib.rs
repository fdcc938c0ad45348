//! The payment participant: authorises and refunds against a balance per customer.
//!
//! Commands arrive keyed by customer (the saga step's `key: customerId`), so each customer's
//! balance and payments live in one partition with one owner at any number of replicas. They
//! are owned stores on compacted topics, changed in the same transaction as the reply. A
//! payment is keyed by saga id, so an authorisation delivered twice charges once, and a
//! refund that arrives before its authorisation (the saga gave up waiting) is remembered so the
//! late authorisation is refused instead of charging.

use std::sync::Arc;

use sagashop_contracts::commands::{AuthorizePayment, RefundPayment, SagaEnded, SagaOutcome};
use sagashop_kit::router::HandlerResult;
use sagashop_kit::{Context, Error, Expiry, HandlerError, Router, Running, Store, Wiring};
use sagashop_saga::participant::{Command, Faults, lost_record, on_command};
use serde::{Deserialize, Serialize};

/// Payment's own settings (its topics and group come from its [`Wiring`]).
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// The balance, in minor units, of a customer seen for the first time.
    pub opening_balance: i64,
    /// Fraction (0–1) of authorisations declined regardless of balance (fault injection).
    pub decline_rate: f64,
    /// Injected transient failures.
    pub faults: Faults,
}

/// A payment's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum Payment {
    /// Charged.
    Authorized {
        /// Who.
        customer_id: String,
        /// How much, in minor units.
        amount_minor: i64,
    },
    /// Given back (or refunded before it was ever authorised).
    Refunded,
    /// Declined.
    Declined {
        /// Why.
        reason: String,
    },
    /// Charged, and the saga completed: the charge stands. Finished work, forgotten after the
    /// retention.
    Captured {
        /// Who.
        customer_id: String,
        /// How much, in minor units.
        amount_minor: i64,
    },
    /// Refunded or declined, and the saga ended: nothing is owed either way. Finished work,
    /// forgotten after the retention.
    Closed,
}

impl Payment {
    /// Whether the saga has ended, so that the record is finished work.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Captured { .. } | Self::Closed)
    }
}

/// No lock: commands are keyed by customer, so one customer's commands run one after another,
/// and different customers share no state.
struct Payments {
    balances: Store<i64>,
    payments: Store<Payment>,
    config: PaymentSettings,
}

impl Payments {
    fn balance(&self, customer: &str) -> i64 {
        self.balances
            .get(customer)
            .unwrap_or(self.config.opening_balance)
    }

    fn authorize(&self, command: &Command<AuthorizePayment>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        keyed_by_customer(&command.envelope.key, &c.customer_id)?;
        let saga = &c.context.saga_id;
        match self.payments.get(saga) {
            Some(Payment::Authorized { .. }) => {
                return Ok(vec![
                    command.succeeded(&c.context, Some("already authorised".into()))?,
                ]);
            }
            Some(Payment::Refunded) => {
                return Ok(vec![command.failed(
                    &c.context,
                    "refunded before it was authorised",
                    false,
                )?]);
            }
            Some(Payment::Declined { reason }) => {
                return Ok(vec![command.failed(&c.context, reason, false)?]);
            }
            Some(Payment::Captured { .. } | Payment::Closed) => {
                return Ok(vec![command.failed(
                    &c.context,
                    "the saga has ended",
                    false,
                )?]);
            }
            None => {}
        }
        let balance = self.balance(&c.customer_id);
        let declined = if c.total_minor < 0 {
            Some("a negative amount cannot be charged".to_owned())
        } else if self.config.decline_rate > 0.0 && fastrand::f64() < self.config.decline_rate {
            Some("card declined".to_owned())
        } else if balance < c.total_minor {
            Some(format!(
                "insufficient funds: balance {balance}, amount {} {}",
                c.total_minor, c.currency
            ))
        } else {
            None
        };
        if let Some(reason) = declined {
            let payment = Payment::Declined {
                reason: reason.clone(),
            };
            return Ok(vec![
                self.payments.put(saga, payment)?,
                command.failed(&c.context, reason, false)?,
            ]);
        }
        let payment = Payment::Authorized {
            customer_id: c.customer_id.clone(),
            amount_minor: c.total_minor,
        };
        Ok(vec![
            self.balances.put(&c.customer_id, balance - c.total_minor)?,
            self.payments.put(saga, payment)?,
            command.succeeded(&c.context, None)?,
        ])
    }

    fn refund(&self, command: &Command<RefundPayment>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        keyed_by_customer(&command.envelope.key, &c.customer_id)?;
        let saga = &c.context.saga_id;
        let mut outputs = Vec::new();
        match self.payments.get(saga) {
            Some(Payment::Authorized {
                customer_id,
                amount_minor,
            }) => {
                let back = self.balance(&customer_id) + amount_minor;
                outputs.push(self.balances.put(&customer_id, back)?);
                outputs.push(self.payments.put(saga, Payment::Refunded)?);
            }
            // The authorisation succeeded, yet its record is gone: refunding "nothing" would
            // keep the money without a trace.
            None if c.context.succeeded_before => {
                return Ok(vec![command.failed(
                    &c.context,
                    lost_record(saga, "payment"),
                    false,
                )?]);
            }
            None => outputs.push(self.payments.put(saga, Payment::Refunded)?),
            Some(Payment::Refunded | Payment::Declined { .. } | Payment::Closed) => {}
            // Only a saga that ended compensates nothing more; a charge it kept stands.
            Some(Payment::Captured { .. }) => {
                return Ok(vec![command.failed(
                    &c.context,
                    "the saga completed and its payment was captured: nothing to refund",
                    false,
                )?]);
            }
        }
        outputs.push(command.succeeded(&c.context, None)?);
        Ok(outputs)
    }

    /// The saga ended: its payment is finished work from now on (kept for the retention, then
    /// forgotten). Until then it is kept however long the saga takes, `FAILED` included, so a
    /// retried compensation always finds what to give back.
    fn ended(&self, notice: &Command<SagaEnded>) -> HandlerResult {
        let saga = &notice.envelope.payload.context.saga_id;
        let closed = match self.payments.get(saga) {
            Some(Payment::Authorized {
                customer_id,
                amount_minor,
            }) => match notice.envelope.payload.outcome {
                SagaOutcome::Completed => Payment::Captured {
                    customer_id,
                    amount_minor,
                },
                // A cancelled saga refunds before it ends; an authorisation still standing
                // here was never compensated, and stays on the books where people look.
                SagaOutcome::Cancelled => {
                    tracing::error!(%saga, "a cancelled saga left its payment authorised; kept");
                    return Ok(Vec::new());
                }
            },
            Some(Payment::Refunded | Payment::Declined { .. }) => Payment::Closed,
            Some(Payment::Captured { .. } | Payment::Closed) | None => return Ok(Vec::new()),
        };
        Ok(vec![self.payments.put(saga, closed)?])
    }
}

/// A balance has one writer only if every command that changes it arrives on its customer's
/// partition: refuse (dead-letter) a command keyed otherwise, naming the fix.
fn keyed_by_customer(key: &str, customer_id: &str) -> Result<(), HandlerError> {
    if key == customer_id {
        return Ok(());
    }
    Err(HandlerError::Permanent(format!(
        "payment commands must be keyed by the customer id (`{customer_id}`), not `{key}`: set \
         `key: customerId` on the saga's payment step"
    )))
}

/// Restores balances and payments, then serves commands until shutdown. A saga's payment is
/// kept until the saga has ended ([`SagaEnded`]) and for the context's retention after that,
/// then forgotten (memory and changelog); a `FAILED` saga keeps it.
pub async fn start(
    context: &Context,
    wiring: Wiring,
    settings: PaymentSettings,
) -> Result<Running, Error> {
    // Both restored per assigned partition: commands are keyed by customer, so a customer's
    // balance and payments live in the partition its commands arrive on.
    let balances: Store<i64> = context.store(&wiring, "balances")?;
    let payments: Store<Payment> = context.store(&wiring, "payments")?;
    let service = Arc::new(Payments {
        balances: balances.clone(),
        payments: payments.clone(),
        config: settings,
    });
    let commands = wiring.topic("commands")?;
    let (authorize, refund) = (Arc::clone(&service), Arc::clone(&service));
    let router = on_command(
        Router::new(),
        commands,
        move |c: Command<AuthorizePayment>| {
            let service = Arc::clone(&authorize);
            async move { service.authorize(&c) }
        },
    );
    let router = on_command(router, commands, move |c: Command<RefundPayment>| {
        let service = Arc::clone(&refund);
        async move { service.refund(&c) }
    });
    let ended = Arc::clone(&service);
    let router = on_command(router, commands, move |c: Command<SagaEnded>| {
        let service = Arc::clone(&ended);
        async move { service.ended(&c) }
    });
    let publisher = context.publisher(&wiring)?;
    let processor = context
        .processor(&wiring, router, publisher)
        .await?
        .reloads(balances)
        .reloads(payments.clone())
        .expires(Expiry::new().of(&payments, context.retention, Payment::is_closed));
    Ok(Running::spawn(context, wiring, processor))
}
