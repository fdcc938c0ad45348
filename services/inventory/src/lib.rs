//! The inventory participant: stock per product, reserved and released per saga.
//!
//! Stock and reservations are stores on compacted topics, changed in the same transaction as the
//! reply. A reservation is keyed by saga id, so a command delivered twice (or retried) reserves
//! once; a release that arrives before its reservation (the saga gave up waiting) is remembered,
//! and the late reservation is refused instead of taking stock nobody will release.

use std::sync::{Arc, Mutex, PoisonError};

use sagashop_contracts::commands::{ReleaseInventory, ReserveInventory};
use sagashop_contracts::events::OrderItem;
use sagashop_kit::router::HandlerResult;
use sagashop_kit::{
    Error, KafkaConfig, Monitor, Outgoing, Processor, ProcessorConfig, Publisher, Router, Stats,
    Store,
};
use sagashop_saga::participant::{Command, Faults, on_command};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How the inventory service runs.
#[derive(Debug, Clone)]
pub struct InventoryConfig {
    /// Where its commands arrive.
    pub command_topic: String,
    /// Stock per product (compacted).
    pub stock_topic: String,
    /// Reservations per saga (compacted).
    pub reservations_topic: String,
    /// Where unreadable commands go.
    pub dead_letter_topic: String,
    /// Its consumer group.
    pub group_id: String,
    /// This member's transactional id.
    pub transactional_id: String,
    /// Stock given to products the store does not know yet, on start.
    pub seed: Vec<(String, i64)>,
    /// A product that is always out of stock (fault injection).
    pub out_of_stock: Option<String>,
    /// Injected transient failures.
    pub faults: Faults,
}

/// A reservation's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum Reservation {
    /// Stock taken for these items.
    Reserved {
        /// The items.
        items: Vec<OrderItem>,
    },
    /// Given back (or released before it was ever reserved).
    Released,
    /// Refused: not enough stock.
    Refused {
        /// Why.
        reason: String,
    },
}

struct Inventory {
    stock: Store<i64>,
    reservations: Store<Reservation>,
    /// Stock changes are read-modify-write across orders: one at a time.
    guard: Mutex<()>,
    config: InventoryConfig,
}

impl Inventory {
    fn reserve(&self, command: &Command<ReserveInventory>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        let saga = &c.context.saga_id;
        let _held = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        match self.reservations.get(saga) {
            Some(Reservation::Reserved { .. }) => {
                return Ok(vec![
                    command.succeeded(&c.context, Some("already reserved".into()))?,
                ]);
            }
            Some(Reservation::Released) => {
                return Ok(vec![command.failed(
                    &c.context,
                    "released before it was reserved",
                    false,
                )?]);
            }
            Some(Reservation::Refused { reason }) => {
                return Ok(vec![command.failed(&c.context, reason, false)?]);
            }
            None => {}
        }
        let short: Vec<&str> = c
            .items
            .iter()
            .filter(|item| {
                self.config.out_of_stock.as_deref() == Some(item.product_id.as_str())
                    || self.stock.get(&item.product_id).unwrap_or(0) < i64::from(item.quantity)
            })
            .map(|item| item.product_id.as_str())
            .collect();
        if !short.is_empty() {
            let reason = format!("out of stock: {}", short.join(", "));
            let refused = Reservation::Refused {
                reason: reason.clone(),
            };
            return Ok(vec![
                self.reservations.put(saga, refused).map_err(internal)?,
                command.failed(&c.context, reason, false)?,
            ]);
        }
        let mut outputs = Vec::with_capacity(c.items.len() + 2);
        for item in &c.items {
            let left = self.stock.get(&item.product_id).unwrap_or(0) - i64::from(item.quantity);
            outputs.push(self.stock.put(&item.product_id, left).map_err(internal)?);
        }
        let reserved = Reservation::Reserved {
            items: c.items.clone(),
        };
        outputs.push(self.reservations.put(saga, reserved).map_err(internal)?);
        outputs.push(command.succeeded(&c.context, None)?);
        Ok(outputs)
    }

    fn release(&self, command: &Command<ReleaseInventory>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        let saga = &c.context.saga_id;
        let _held = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        let mut outputs = Vec::new();
        match self.reservations.get(saga) {
            Some(Reservation::Reserved { items }) => {
                for item in &items {
                    let back =
                        self.stock.get(&item.product_id).unwrap_or(0) + i64::from(item.quantity);
                    outputs.push(self.stock.put(&item.product_id, back).map_err(internal)?);
                }
                outputs.push(
                    self.reservations
                        .put(saga, Reservation::Released)
                        .map_err(internal)?,
                );
            }
            // Nothing was taken; remember, so that a late reservation is refused.
            None => outputs.push(
                self.reservations
                    .put(saga, Reservation::Released)
                    .map_err(internal)?,
            ),
            Some(Reservation::Released | Reservation::Refused { .. }) => {}
        }
        outputs.push(command.succeeded(&c.context, None)?);
        Ok(outputs)
    }
}

fn internal(e: Error) -> sagashop_kit::HandlerError {
    sagashop_kit::HandlerError::Transient(e.to_string())
}

/// A running inventory service.
pub struct Running {
    /// The processor's counters.
    pub stats: Arc<Stats>,
    /// Stock per product.
    pub stock: Store<i64>,
    /// Reservations per saga.
    pub reservations: Store<Reservation>,
    /// Its work; `task.stopped()` waits for it to end after shutdown.
    pub task: sagashop_kit::Task,
}

/// Restores stock and reservations, seeds unknown products, then serves commands until
/// `shutdown`.
pub async fn start(
    kafka: &KafkaConfig,
    config: InventoryConfig,
    monitor: &Monitor,
    shutdown: CancellationToken,
) -> Result<Running, Error> {
    sagashop_kit::fence(
        kafka,
        &config.group_id,
        &config.transactional_id,
        std::time::Duration::from_secs(30),
    )
    .await?;
    let stock: Store<i64> =
        Store::open(kafka, "inventory-stock", &config.stock_topic, monitor).await?;
    let reservations: Store<Reservation> = Store::open(
        kafka,
        "inventory-reservations",
        &config.reservations_topic,
        monitor,
    )
    .await?;
    let publisher = Publisher::new(kafka, "inventory")?.observed(monitor);
    let seeds: Vec<Outgoing> = config
        .seed
        .iter()
        .filter(|(product, _)| stock.get(product).is_none())
        .map(|(product, quantity)| stock.put(product, *quantity))
        .collect::<Result<_, _>>()?;
    if !seeds.is_empty() {
        publisher
            .send_all(&seeds)
            .await
            .map_err(|e| Error::Internal(format!("seeding the stock: {e}")))?;
        tracing::info!(products = seeds.len(), "stock seeded");
    }
    let inventory = Arc::new(Inventory {
        stock: stock.clone(),
        reservations: reservations.clone(),
        guard: Mutex::new(()),
        config: config.clone(),
    });
    let (reserve, release) = (Arc::clone(&inventory), Arc::clone(&inventory));
    let router = on_command(
        Router::new(),
        &config.command_topic,
        move |c: Command<ReserveInventory>| {
            let inventory = Arc::clone(&reserve);
            async move { inventory.reserve(&c) }
        },
    );
    let router = on_command(
        router,
        &config.command_topic,
        move |c: Command<ReleaseInventory>| {
            let inventory = Arc::clone(&release);
            async move { inventory.release(&c) }
        },
    );
    let processor = Processor::new(
        kafka,
        ProcessorConfig::exactly_once(
            &config.group_id,
            &config.dead_letter_topic,
            &config.transactional_id,
        ),
        router,
        publisher,
        monitor,
    )?
    .reloads(stock.clone())
    .reloads(reservations.clone());
    let stats = processor.stats();
    let task = sagashop_kit::Task::spawn("inventory", processor.run(shutdown));
    Ok(Running {
        stats,
        stock,
        reservations,
        task,
    })
}
