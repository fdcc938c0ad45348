//! The inventory participant: stock per product, taken and given back per saga.
//!
//! Stock has exactly one writer per product at any number of replicas. A command arrives keyed
//! by saga; inventory turns it into a routing slip ([`slip`]) keyed by the order's first
//! product, and the owner of each product's partition takes (or gives back) that product's
//! stock and passes the slip on; the last one answers the saga. Stock (per product) and holds
//! (per saga and product) are owned stores on compacted topics, changed in the same transaction
//! as the slip or answer they cause. A hold makes each product's step idempotent: a command
//! delivered twice (or retried) takes stock once, and a release that arrives before its
//! reservation (the saga gave up waiting) is remembered, so the late reservation is refused
//! instead of taking stock nobody will release.

pub mod slip;

use std::sync::Arc;

use sagashop_contracts::commands::{ReleaseInventory, ReserveInventory, SagaEnded, SagaOutcome};
use sagashop_contracts::{Contract, Metadata};
use sagashop_kit::router::HandlerResult;
use sagashop_kit::{
    Context, Error, Expiry, FailurePolicy, HandlerError, Outgoing, Record, Router, Running, Store,
    Wiring,
};
use sagashop_saga::participant::{self, Command, Faults, on_command};

use crate::slip::{After, Hold, Mode, SEED, SLIP, Seed, Slip, hold_key};

/// Inventory's own settings (its topics and group come from its [`Wiring`]).
#[derive(Debug, Clone, Default)]
pub struct InventorySettings {
    /// Stock given to products that have none yet, on start.
    pub seed: Vec<(String, i64)>,
    /// A product that is always out of stock (fault injection).
    pub out_of_stock: Option<String>,
    /// Injected transient failures.
    pub faults: Faults,
}

struct Inventory {
    stock: Store<i64>,
    holds: Store<Hold>,
    /// Where slips and stock seeds travel, keyed by product.
    slip_topic: String,
    config: InventorySettings,
}

impl Inventory {
    fn reserve(&self, command: &Command<ReserveInventory>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        self.start(
            command,
            Mode::Reserve,
            ReserveInventory::EVENT_TYPE,
            &c.context,
            &c.items,
        )
    }

    fn release(&self, command: &Command<ReleaseInventory>) -> HandlerResult {
        self.config.faults.maybe_fail()?;
        let c = &command.envelope.payload;
        self.start(
            command,
            Mode::Release,
            ReleaseInventory::EVENT_TYPE,
            &c.context,
            &c.items,
        )
    }

    /// The saga ended: its holds on every product become finished work (kept for the retention,
    /// then forgotten). Until then they are kept however long the saga takes, `FAILED`
    /// included, so a retried release always finds what to give back.
    fn ended(&self, notice: &Command<SagaEnded>) -> HandlerResult {
        let n = &notice.envelope.payload;
        let mode = Mode::End { outcome: n.outcome };
        self.start(notice, mode, SagaEnded::EVENT_TYPE, &n.context, &n.items)
    }

    /// Sends the command's slip to its first product (answers at once when there is none).
    fn start<T: Contract>(
        &self,
        command: &Command<T>,
        mode: Mode,
        command_type: &str,
        context: &sagashop_contracts::commands::StepContext,
        items: &[sagashop_contracts::events::OrderItem],
    ) -> HandlerResult {
        let slip = Slip {
            mode,
            context: context.clone(),
            command: command_type.to_owned(),
            reply_to: command.reply_to.clone(),
            lines: Slip::lines(items),
            at: 0,
            refused: None,
        };
        if slip.lines.is_empty() {
            if matches!(mode, Mode::End { .. }) {
                return Ok(Vec::new());
            }
            return Ok(vec![command.succeeded(context, Some("no items".into()))?]);
        }
        // Keyed by one of its products (the saga step's `key`), the command arrived on that
        // product's partition: its owner is here, so take that product first, without a hop.
        let here = slip
            .lines
            .iter()
            .position(|l| l.product_id == command.envelope.key);
        let mut slip = slip;
        if let Some(at) = here {
            let line = slip.lines.remove(at);
            slip.lines.insert(0, line);
            return self.step(slip, &command.envelope.metadata);
        }
        Ok(vec![self.forward(&slip, &command.envelope.metadata)?])
    }

    /// The slip, bound for the owner of the product at hand.
    fn forward(&self, slip: &Slip, parent: &Metadata) -> Result<Outgoing, HandlerError> {
        let line = slip
            .line()
            .ok_or_else(|| HandlerError::Permanent(format!("the slip has no line {}", slip.at)))?;
        let bytes = serde_json::to_vec(slip).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let metadata = slip::metadata(SLIP, Some(parent), &slip.context.saga_id);
        Ok(Outgoing::raw(
            &self.slip_topic,
            &line.product_id,
            &metadata,
            bytes,
        ))
    }

    /// A slip arriving at a product's partition.
    fn on_slip(&self, record: &Record, metadata: &Metadata) -> HandlerResult {
        let slip: Slip = decode(record)?;
        let line = slip
            .line()
            .ok_or_else(|| HandlerError::Permanent(format!("the slip has no line {}", slip.at)))?;
        keyed_by(record, &line.product_id)?;
        self.step(slip, metadata)
    }

    /// The line at hand, on its product's partition: take or give back the stock, then pass
    /// the slip on or answer the saga.
    fn step(&self, slip: Slip, metadata: &Metadata) -> HandlerResult {
        let line = slip
            .line()
            .cloned()
            .ok_or_else(|| HandlerError::Permanent(format!("the slip has no line {}", slip.at)))?;
        let product = &line.product_id;
        let key = hold_key(&slip.context.saga_id, product);
        let mut outputs = Vec::new();
        let after = match slip.mode {
            Mode::Reserve => match self.holds.get(&key) {
                // An earlier copy of this reservation took it.
                Some(Hold::Reserved { .. } | Hold::Committed { .. }) => slip.advance(),
                Some(Hold::Closed) => slip.refuse("the saga has ended".into()),
                Some(Hold::Released) => slip.refuse("released before it was reserved".into()),
                Some(Hold::Refused { reason }) => slip.refuse(reason),
                None => {
                    // A product this process seeds but whose seed has not arrived yet (the
                    // seeds travel on the slip topic, the commands on theirs: a saga started
                    // before inventory may overtake them) is not out of stock: try again.
                    let stock = match self.stock.get(product) {
                        Some(stock) => stock,
                        None if self.config.seed.iter().any(|(p, _)| p == product) => {
                            return Err(HandlerError::Transient(format!(
                                "the stock of {product} is not seeded yet"
                            )));
                        }
                        None => 0,
                    };
                    if self.config.out_of_stock.as_deref() == Some(product.as_str())
                        || stock < line.quantity
                    {
                        let reason = format!("out of stock: {product}");
                        let refused = Hold::Refused {
                            reason: reason.clone(),
                        };
                        outputs.push(self.holds.put(&key, refused)?);
                        slip.refuse(reason)
                    } else {
                        let left = stock - line.quantity;
                        outputs.push(self.stock.put(product, left)?);
                        let taken = Hold::Reserved {
                            quantity: line.quantity,
                        };
                        outputs.push(self.holds.put(&key, taken)?);
                        slip.advance()
                    }
                }
            },
            Mode::Undo | Mode::Release => {
                match self.holds.get(&key) {
                    Some(Hold::Reserved { quantity }) => {
                        let back = self.stock.get(product).unwrap_or(0) + quantity;
                        outputs.push(self.stock.put(product, back)?);
                        outputs.push(self.holds.put(&key, Hold::Released)?);
                    }
                    // The reservation succeeded, so every product holds it: this one's is lost.
                    None if slip.context.succeeded_before => {
                        let reason = participant::lost_record(
                            &slip.context.saga_id,
                            &format!("hold on {product}"),
                        );
                        return Ok(vec![participant::failed(
                            metadata,
                            &slip.reply_to,
                            &slip.context,
                            &slip.command,
                            reason,
                            false,
                        )?]);
                    }
                    // Nothing was taken; remember, so that a late reservation is refused.
                    None => outputs.push(self.holds.put(&key, Hold::Released)?),
                    // Committed: the saga completed, and what it took stays taken.
                    Some(
                        Hold::Released
                        | Hold::Refused { .. }
                        | Hold::Committed { .. }
                        | Hold::Closed,
                    ) => {}
                }
                slip.advance()
            }
            Mode::End { outcome } => {
                let closed = match (self.holds.get(&key), outcome) {
                    (Some(Hold::Reserved { quantity }), SagaOutcome::Completed) => {
                        Some(Hold::Committed { quantity })
                    }
                    // A cancelled saga releases before it ends; stock still held here was
                    // never given back, and stays held where people look.
                    (Some(Hold::Reserved { .. }), SagaOutcome::Cancelled) => {
                        tracing::error!(saga = %slip.context.saga_id, %product, "a cancelled saga left stock held; kept");
                        None
                    }
                    (Some(Hold::Released | Hold::Refused { .. }), _) => Some(Hold::Closed),
                    (Some(Hold::Committed { .. } | Hold::Closed) | None, _) => None,
                };
                if let Some(closed) = closed {
                    outputs.push(self.holds.put(&key, closed)?);
                }
                slip.advance()
            }
        };
        outputs.push(match after {
            After::Forward(next) => self.forward(&next, metadata)?,
            // Nobody waits for the end of a saga's end.
            After::Succeeded(done) if matches!(done.mode, Mode::End { .. }) => return Ok(outputs),
            After::Succeeded(done) => participant::succeeded(
                metadata,
                &done.reply_to,
                &done.context,
                &done.command,
                None,
            )?,
            After::Refused(done, reason) => participant::failed(
                metadata,
                &done.reply_to,
                &done.context,
                &done.command,
                reason,
                false,
            )?,
        });
        Ok(outputs)
    }

    /// A stock seed: the product's opening stock, unless it has stock already.
    fn on_seed(&self, record: &Record) -> HandlerResult {
        let seed: Seed = decode(record)?;
        keyed_by(record, &seed.product_id)?;
        if self.stock.get(&seed.product_id).is_some() {
            return Ok(Vec::new());
        }
        tracing::info!(product = %seed.product_id, quantity = seed.quantity, "stock seeded");
        Ok(vec![self.stock.put(&seed.product_id, seed.quantity)?])
    }
}

fn decode<T: serde::de::DeserializeOwned>(record: &Record) -> Result<T, HandlerError> {
    serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
        .map_err(|e| HandlerError::Permanent(format!("unreadable {}: {e}", record.topic)))
}

/// A product's stock has one writer only if its records arrive on its partition.
fn keyed_by(record: &Record, product: &str) -> Result<(), HandlerError> {
    if record.key.as_deref() == Some(product.as_bytes()) {
        return Ok(());
    }
    Err(HandlerError::Permanent(format!(
        "a record for product `{product}` must be keyed by it, not {:?}",
        record.key.as_deref().map(String::from_utf8_lossy)
    )))
}

/// Seeds the stock, restores stock and holds, then serves commands and slips until shutdown.
/// A saga's hold on a product is kept until the saga has ended ([`SagaEnded`]) and for the
/// context's retention after that, then forgotten; a `FAILED` saga keeps it.
pub async fn start(
    context: &Context,
    wiring: Wiring,
    settings: InventorySettings,
) -> Result<Running, Error> {
    let stock: Store<i64> = context.store(&wiring, "stock")?;
    let holds: Store<Hold> = context.store(&wiring, "holds")?;
    let slip_topic = wiring.topic("slips")?.to_owned();
    let publisher = context.publisher(&wiring)?;
    // Seeds go to each product's owner, which sets the stock only where there is none: every
    // replica may send them, at every start.
    let seeds: Vec<Outgoing> = settings
        .seed
        .iter()
        .map(|(product, quantity)| {
            let seed = Seed {
                product_id: product.clone(),
                quantity: *quantity,
            };
            let bytes = serde_json::to_vec(&seed)
                .map_err(|e| Error::Internal(format!("encoding a seed: {e}")))?;
            let metadata = slip::metadata(SEED, None, product);
            Ok(Outgoing::raw(&slip_topic, product, &metadata, bytes))
        })
        .collect::<Result<_, Error>>()?;
    if !seeds.is_empty() {
        // In a fresh install the slips topic may not exist yet (the operator is making it) and
        // the broker may still be starting: the seeds are sent until they are taken, and the
        // process is not ready before.
        let seeded = context.monitor.component("inventory-seed");
        let (publisher, shutdown) = (publisher.clone(), context.shutdown.clone());
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_millis(500);
            loop {
                match publisher.send_all(&seeds).await {
                    Ok(_) => {
                        seeded.set(true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "the stock seeds were not taken; sending them again");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        });
    }
    let inventory = Arc::new(Inventory {
        stock: stock.clone(),
        holds: holds.clone(),
        slip_topic: slip_topic.clone(),
        config: settings,
    });
    let router = routes(&inventory, wiring.topic("commands")?, &slip_topic);
    let processor = context
        .processor(&wiring, router, publisher)
        .await?
        .reloads(stock)
        .reloads(holds.clone())
        .expires(Expiry::new().of(&holds, context.retention, Hold::is_closed));
    Ok(Running::spawn(context, wiring, processor))
}

/// Commands in, slips and seeds along.
fn routes(inventory: &Arc<Inventory>, commands: &str, slips: &str) -> Router {
    let (reserve, release) = (Arc::clone(inventory), Arc::clone(inventory));
    let router = on_command(
        Router::new(),
        commands,
        move |c: Command<ReserveInventory>| {
            let inventory = Arc::clone(&reserve);
            async move { inventory.reserve(&c) }
        },
    );
    let router = on_command(router, commands, move |c: Command<ReleaseInventory>| {
        let inventory = Arc::clone(&release);
        async move { inventory.release(&c) }
    });
    let ended = Arc::clone(inventory);
    let router = on_command(router, commands, move |c: Command<SagaEnded>| {
        let inventory = Arc::clone(&ended);
        async move { inventory.ended(&c) }
    });
    let (slipped, seeded) = (Arc::clone(inventory), Arc::clone(inventory));
    let policy = FailurePolicy::default();
    router
        .on_raw(
            slips,
            SLIP,
            policy,
            move |record: Record, metadata: Metadata| {
                let result = slipped.on_slip(&record, &metadata);
                async move { result }
            },
        )
        .on_raw(
            slips,
            SEED,
            policy,
            move |record: Record, _metadata: Metadata| {
                let result = seeded.on_seed(&record);
                async move { result }
            },
        )
}
