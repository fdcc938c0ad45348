//! The shipping participant: creates and cancels shipments per saga, and later ships and
//! delivers them (`OrderShipped`, `OrderDelivered` on the shipping events topic) after
//! configurable delays.
//!
//! Shipments are a store on a compacted topic keyed by saga id, changed in the same transaction
//! as the reply; a cancellation that arrives before its creation is remembered so that the late
//! creation is refused.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sagashop_contracts::Envelope;
use sagashop_contracts::commands::{CancelShipment, CreateShipment, SagaEnded};
use sagashop_contracts::events::{OrderDelivered, OrderShipped};
use sagashop_kit::router::HandlerResult;
use sagashop_kit::store::Reload;
use sagashop_kit::{
    Context, Error, Expiry, Outgoing, Publisher, Router, Running, Store, Task, Wiring,
};
use sagashop_saga::participant::{Command, Faults, on_command};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Shipping's own settings (its topics and group come from its [`Wiring`]).
#[derive(Debug, Clone)]
pub struct ShippingSettings {
    /// From creation to `OrderShipped`.
    pub ship_after: Duration,
    /// From shipping to `OrderDelivered`.
    pub deliver_after: Duration,
    /// Injected transient failures.
    pub faults: Faults,
}

/// A shipment's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum Shipment {
    /// Created, waiting to ship.
    Created {
        /// Its id.
        shipment_id: String,
        /// The order.
        order_id: Uuid,
        /// The correlation id of its saga.
        correlation_id: String,
        /// When it was created (Unix ms).
        at: i64,
    },
    /// On its way.
    Shipped {
        /// Its id.
        shipment_id: String,
        /// The order.
        order_id: Uuid,
        /// The correlation id of its saga.
        correlation_id: String,
        /// When it shipped (Unix ms).
        at: i64,
    },
    /// Arrived.
    Delivered {
        /// Its id.
        shipment_id: String,
    },
    /// Cancelled (or cancelled before it was ever created).
    Cancelled,
    /// Cancelled, and the saga ended. Finished work, forgotten after the retention.
    Closed,
}

impl Shipment {
    /// Whether nothing more will happen to it: delivered, or cancelled under a saga that ended.
    /// A cancelled shipment under a saga that has not ended (`FAILED`) is kept.
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Delivered { .. } | Self::Closed)
    }
}

struct Shipping {
    shipments: Store<Shipment>,
    guard: Mutex<()>,
    /// Where `OrderShipped` and `OrderDelivered` go.
    events_topic: String,
    config: ShippingSettings,
}

impl Shipping {
    fn create(&self, command: &Command<CreateShipment>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        let saga = &c.context.saga_id;
        let _held = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        match self.shipments.get(saga) {
            Some(Shipment::Cancelled | Shipment::Closed) => {
                return Ok(vec![command.failed(
                    &c.context,
                    "cancelled before it was created",
                    false,
                )?]);
            }
            Some(_) => {
                return Ok(vec![
                    command.succeeded(&c.context, Some("already created".into()))?,
                ]);
            }
            None => {}
        }
        let shipment_id = format!("shp-{}", Uuid::now_v7().simple());
        let shipment = Shipment::Created {
            shipment_id: shipment_id.clone(),
            order_id: c.order_id,
            correlation_id: command.envelope.metadata.correlation_id.clone(),
            at: chrono::Utc::now().timestamp_millis(),
        };
        Ok(vec![
            self.shipments.put(saga, shipment)?,
            command.succeeded(&c.context, Some(shipment_id))?,
        ])
    }

    fn cancel(&self, command: &Command<CancelShipment>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        let saga = &c.context.saga_id;
        let _held = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        let (change, detail) = match self.shipments.get(saga) {
            None | Some(Shipment::Created { .. }) => (Some(Shipment::Cancelled), None),
            Some(Shipment::Cancelled | Shipment::Closed) => (None, None),
            Some(Shipment::Shipped { .. } | Shipment::Delivered { .. }) => {
                (None, Some("already shipped; nothing to cancel".to_owned()))
            }
        };
        let mut outputs = Vec::new();
        if let Some(change) = change {
            outputs.push(self.shipments.put(saga, change)?);
        }
        outputs.push(command.succeeded(&c.context, detail)?);
        Ok(outputs)
    }

    /// The saga ended: a cancelled shipment is finished work from now on. Shipments on their
    /// way finish when they arrive, whatever the saga.
    fn ended(&self, notice: &Command<SagaEnded>) -> HandlerResult {
        let saga = &notice.envelope.payload.context.saga_id;
        let _held = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        match self.shipments.get(saga) {
            Some(Shipment::Cancelled) => Ok(vec![self.shipments.put(saga, Shipment::Closed)?]),
            _ => Ok(Vec::new()),
        }
    }

    /// The shipments due to move on now, with the events and state changes that move them.
    fn due(&self, now: i64) -> Result<Vec<Outgoing>, Error> {
        let ship_after = millis(self.config.ship_after);
        let deliver_after = millis(self.config.deliver_after);
        let _held = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        let mut outputs = Vec::new();
        // Delivered shipments are kept: clone only those due to move on.
        let due = self.shipments.select(|saga, shipment| match shipment {
            Shipment::Created { at, .. } if now - at >= ship_after => {
                Some((saga.to_owned(), shipment.clone()))
            }
            Shipment::Shipped { at, .. } if now - at >= deliver_after => {
                Some((saga.to_owned(), shipment.clone()))
            }
            _ => None,
        });
        for (saga, shipment) in due {
            match shipment {
                Shipment::Created {
                    shipment_id,
                    order_id,
                    correlation_id,
                    at,
                } if now - at >= ship_after => {
                    let event = OrderShipped {
                        order_id,
                        shipment_id: shipment_id.clone(),
                        shipped_at: chrono::Utc::now(),
                    };
                    let envelope = Envelope::new(&saga, &correlation_id, event);
                    outputs.push(
                        Outgoing::event(&self.events_topic, &envelope)
                            .map_err(|e| Error::Internal(e.to_string()))?,
                    );
                    let shipped = Shipment::Shipped {
                        shipment_id,
                        order_id,
                        correlation_id,
                        at: now,
                    };
                    outputs.push(self.shipments.put(&saga, shipped)?);
                }
                Shipment::Shipped {
                    shipment_id,
                    order_id,
                    correlation_id,
                    at,
                } if now - at >= deliver_after => {
                    let event = OrderDelivered {
                        order_id,
                        shipment_id: shipment_id.clone(),
                        delivered_at: chrono::Utc::now(),
                    };
                    let envelope = Envelope::new(&saga, &correlation_id, event);
                    outputs.push(
                        Outgoing::event(&self.events_topic, &envelope)
                            .map_err(|e| Error::Internal(e.to_string()))?,
                    );
                    outputs.push(
                        self.shipments
                            .put(&saga, Shipment::Delivered { shipment_id })?,
                    );
                }
                _ => {}
            }
        }
        Ok(outputs)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Restores shipments, then serves commands and moves shipments on until shutdown. A
/// delivered shipment, or a cancelled one whose saga has ended, is kept for the context's
/// retention after its last change, then forgotten; shipments on their way are kept until they
/// arrive.
pub async fn start(
    context: &Context,
    wiring: Wiring,
    settings: ShippingSettings,
) -> Result<Running, Error> {
    // Restored per assigned partition: commands and shipments are keyed by saga id.
    let shipments: Store<Shipment> = context.store(&wiring, "shipments")?;
    let service = Arc::new(Shipping {
        shipments: shipments.clone(),
        guard: Mutex::new(()),
        events_topic: wiring.topic("events")?.to_owned(),
        config: settings,
    });
    let commands = wiring.topic("commands")?;
    let (create, cancel) = (Arc::clone(&service), Arc::clone(&service));
    let router = on_command(
        Router::new(),
        commands,
        move |c: Command<CreateShipment>| {
            let service = Arc::clone(&create);
            async move { service.create(&c) }
        },
    );
    let router = on_command(router, commands, move |c: Command<CancelShipment>| {
        let service = Arc::clone(&cancel);
        async move { service.cancel(&c) }
    });
    let ended = Arc::clone(&service);
    let router = on_command(router, commands, move |c: Command<SagaEnded>| {
        let service = Arc::clone(&ended);
        async move { service.ended(&c) }
    });
    let publisher = context.publisher(&wiring)?;
    let processor = context
        .processor(&wiring, router, publisher.clone())
        .await?
        .reloads(shipments.clone())
        .expires(Expiry::new().of(&shipments, context.retention, Shipment::is_finished));
    let stats = processor.stats();
    let mover = tokio::spawn(move_on(service, publisher, context.shutdown.clone()));
    let shutdown = context.shutdown.clone();
    let task = Task::spawn("shipping", async move {
        let result = processor.run(shutdown).await;
        mover.abort();
        result
    });
    Ok(Running::new(wiring, stats, task))
}

/// Ships and delivers what is due, every 250 ms until `shutdown`. This happens outside any
/// command: at least once, which is what a customer notification can dedupe.
async fn move_on(service: Arc<Shipping>, publisher: Publisher, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        match service.due(chrono::Utc::now().timestamp_millis()) {
            Ok(outputs) if outputs.is_empty() => {}
            Ok(outputs) => {
                let stores: [Arc<dyn Reload>; 1] = [Arc::new(service.shipments.clone())];
                if let Err(e) = publisher.send_all_sequenced(&outputs, &stores).await {
                    tracing::warn!(error = %e, "could not publish shipment progress; restarting from the store");
                    if let Err(e) = service.shipments.reload().await {
                        tracing::warn!(error = %e, "reloading shipments");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "moving shipments on"),
        }
    }
}
