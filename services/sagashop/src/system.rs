//! Running the services: one (`sagashop <service>`, what Kubernetes runs) or all of them in one
//! process (`sagashop dev`), with the HTTP API and `/healthz` `/readyz` `/metrics` on one address.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sagashop_kit::admin::{TopicSpec, create_topics};
use sagashop_kit::{KafkaConfig, Monitor, Stats};
use sagashop_saga::Definition;
use sagashop_saga::definition::Saga;
use sagashop_saga::participant::Faults;
use tokio_util::sync::CancellationToken;

use crate::cli::{EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};
use crate::commands::{Failure, fail};

/// The order saga shipped with sagashop, used when `--saga` is not given.
const SHIPPED_SAGA: &str = include_str!("../../../k8s/sagas/order-fulfilment.yaml");

/// Settings every service shares; each uses the ones it needs.
#[derive(Debug, Clone, Args)]
pub(crate) struct SystemArgs {
    /// Kafka connection.
    #[command(flatten)]
    pub(crate) kafka: KafkaConfig,
    /// A `Saga` manifest to run (the shipped order saga, `k8s/sagas/order-fulfilment.yaml`, when
    /// unset).
    #[arg(long, env = "SAGASHOP_SAGA")]
    pub(crate) saga: Option<PathBuf>,
    /// Prepended to every topic, consumer group and transactional id, so that several systems
    /// (or test runs) can share one Kafka cluster.
    #[arg(long, env = "SAGASHOP_TOPIC_PREFIX", default_value = "")]
    pub(crate) topic_prefix: String,
    /// This process's name, stable across its restarts and unique among replicas of a service
    /// (the pod name in Kubernetes): it names the transactional ids.
    #[arg(long, env = "SAGASHOP_INSTANCE", default_value = "dev")]
    pub(crate) instance: String,
    /// Where the HTTP API (order service) and `/healthz` `/readyz` `/metrics` listen.
    #[arg(long, env = "SAGASHOP_HTTP", default_value = "127.0.0.1:8080")]
    pub(crate) http: SocketAddr,
    /// Create the topics the services need before starting (what the operator does in a
    /// cluster). On for `sagashop dev`.
    #[arg(long, env = "SAGASHOP_CREATE_TOPICS")]
    pub(crate) create_topics: bool,
    /// How long finished work is kept after its last change: finished sagas, participants'
    /// records, notified message ids, idempotency keys and the order read model. Memory holds
    /// about `orders per second × retention` orders (docs/operations.md, "Bounded state").
    #[arg(long, env = "SAGASHOP_RETENTION", default_value = "5m", value_parser = parse_retention)]
    pub(crate) retention: Duration,
    /// Inventory: stock given to products it does not know yet, as `product=quantity,…`.
    #[arg(
        long,
        env = "INVENTORY_STOCK",
        value_delimiter = ',',
        value_parser = parse_stock,
        default_value = "sku-1=1000000,sku-2=1000000,sku-3=1000000,sku-4=1000000,sku-5=1000000"
    )]
    pub(crate) stock: Vec<(String, i64)>,
    /// Inventory: a product that is always out of stock (fault injection).
    #[arg(long, env = "INVENTORY_OUT_OF_STOCK")]
    pub(crate) out_of_stock: Option<String>,
    /// Payment: the balance of a customer seen for the first time, in minor units.
    #[arg(long, env = "PAYMENT_OPENING_BALANCE", default_value_t = 10_000_000)]
    pub(crate) opening_balance: i64,
    /// Payment: fraction (0–1) of authorisations declined (fault injection).
    #[arg(long, env = "PAYMENT_DECLINE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) decline_rate: f64,
    /// Shipping: from shipment creation to `OrderShipped`.
    #[arg(long, env = "SHIPPING_SHIP_AFTER", default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) ship_after: Duration,
    /// Shipping: from shipping to `OrderDelivered`.
    #[arg(long, env = "SHIPPING_DELIVER_AFTER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) deliver_after: Duration,
    /// Fraction (0–1) of inventory commands that fail transiently (fault injection).
    #[arg(long, env = "INVENTORY_TRANSIENT_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) inventory_transient_rate: f64,
    /// Fraction (0–1) of payment commands that fail transiently (fault injection).
    #[arg(long, env = "PAYMENT_TRANSIENT_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) payment_transient_rate: f64,
    /// Fraction (0–1) of shipping commands that fail transiently (fault injection).
    #[arg(long, env = "SHIPPING_TRANSIENT_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub(crate) shipping_transient_rate: f64,
    /// The largest order body accepted, in bytes (larger: `413`).
    #[arg(long, env = "ORDER_BODY_LIMIT", default_value_t = 256 * 1024)]
    pub(crate) body_limit: usize,
    /// New orders per second this process takes (more: `429` with `Retry-After`); 0 turns the
    /// limit off. Per replica: a limit per client belongs in the ingress.
    #[arg(long, env = "ORDER_RATE_LIMIT", default_value_t = 2000.0, value_parser = parse_limit)]
    pub(crate) rate_limit: f64,
    /// Orders that may arrive at once above the rate limit.
    #[arg(long, env = "ORDER_RATE_BURST", default_value_t = 500)]
    pub(crate) rate_burst: u32,
    /// How long an order body may take to arrive (slower: `408`).
    #[arg(long, env = "ORDER_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) body_timeout: Duration,
    /// How long an order may wait for a Kafka transaction (longer: `503`, nothing written).
    #[arg(long, env = "ORDER_QUEUE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) queue_timeout: Duration,
    /// How long a client may take to send a request's headers before the connection is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) header_timeout: Duration,
    /// The most HTTP connections served at once; more wait in the listen backlog.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub(crate) max_connections: usize,
    /// How often `sagashop dev` prints its one-line summary (0s: never).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) summary_every: Duration,
}

fn parse_stock(text: &str) -> Result<(String, i64), String> {
    let (product, quantity) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not product=quantity"))?;
    let quantity = quantity
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|q| *q >= 0)
        .ok_or_else(|| format!("`{quantity}` is not a quantity"))?;
    Ok((product.trim().to_owned(), quantity))
}

fn parse_retention(text: &str) -> Result<Duration, String> {
    let retention = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if retention < Duration::from_secs(1) {
        return Err(format!(
            "`{text}` is too short: finished work must outlive its late duplicates; use at least 1s"
        ));
    }
    Ok(retention)
}

fn parse_limit(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| format!("`{text}` is not a rate (orders per second, 0 for no limit)"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("`{text}` is not a fraction from 0 to 1"))
}

/// The services of sagashop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Service {
    /// The HTTP edge and order read model.
    Order,
    /// The saga orchestrator.
    Orchestrator,
    /// Stock.
    Inventory,
    /// Money.
    Payment,
    /// Shipments.
    Shipping,
    /// Customer notifications.
    Notification,
    /// Per-minute figures.
    Analytics,
}

impl Service {
    pub(crate) const ALL: [Self; 7] = [
        Self::Orchestrator,
        Self::Inventory,
        Self::Payment,
        Self::Shipping,
        Self::Notification,
        Self::Analytics,
        Self::Order,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Orchestrator => "orchestrator",
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Shipping => "shipping",
            Self::Notification => "notification",
            Self::Analytics => "analytics",
        }
    }
}

/// Every topic name, prefixed.
struct Topics {
    prefix: String,
    definition: Definition,
    /// The saga's own topics (what the operator declares for it), prefixed.
    saga_topics: Vec<TopicSpec>,
}

impl Topics {
    fn new(saga: Option<&std::path::Path>, prefix: &str) -> anyhow::Result<Self> {
        let (yaml, path) = match saga {
            Some(path) => (
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
                path.display().to_string(),
            ),
            None => (SHIPPED_SAGA.to_owned(), "the shipped order saga".to_owned()),
        };
        let mut definition = Saga::load(&yaml, &path)?;
        let p = prefix;
        let mut saga_topics = definition.topic_specs();
        for spec in &mut saga_topics {
            spec.name = format!("{p}{}", spec.name);
        }
        if !p.is_empty() {
            let prefixed = |t: &mut String| *t = format!("{p}{t}");
            prefixed(&mut definition.trigger.topic);
            prefixed(&mut definition.reply_topic);
            prefixed(&mut definition.state_topic);
            prefixed(&mut definition.outcome.topic);
            for step in &mut definition.steps {
                prefixed(&mut step.command_topic);
            }
        }
        Ok(Self {
            prefix: p.to_owned(),
            definition,
            saga_topics,
        })
    }

    fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn command_topic(&self, participant: &str) -> anyhow::Result<String> {
        self.definition
            .steps
            .iter()
            .find(|s| s.participant == participant)
            .map(|s| s.command_topic.clone())
            .with_context(|| format!("the saga has no step for the `{participant}` participant"))
    }

    fn dlq(&self, service: Service) -> String {
        self.named(&sagashop_saga::definition::dead_letter_topic(
            service.name(),
        ))
    }

    /// Every topic the services need, with how it is kept: the saga's own (as the operator
    /// declares them) and the services' stores and streams.
    fn specs(&self) -> Vec<TopicSpec> {
        let d = &self.definition;
        let partitions = d.topic_defaults.partitions;
        let replicas = d.topic_defaults.replicas;
        let plain = |name: String| TopicSpec {
            replicas,
            ..TopicSpec::new(name, partitions)
        };
        let compacted = |name: String| plain(name).changelog();
        let mut specs = self.saga_topics.clone();
        for name in [
            "inventory.stock.v1",
            "inventory.holds.v1",
            "payment.balances.v1",
            "payment.payments.v1",
            "shipping.shipments.v1",
            "orders.idempotency.v1",
            "analytics.windows.v1",
        ] {
            specs.push(compacted(self.named(name)));
        }
        specs.push(plain(self.named("inventory.slips.v1")));
        specs.push(plain(self.named("shipping.v1")));
        specs.push(plain(self.named("analytics.snapshots.v1")));
        // Message ids are forgotten by the service after its retention (tombstones); a week's
        // time retention is the backstop for ids nobody forgot.
        specs.push(
            plain(self.named("notification.sent.v1"))
                .changelog()
                .with_config("cleanup.policy", "compact,delete")
                .with_config("retention.ms", "604800000"),
        );
        for service in Service::ALL {
            specs.push(plain(self.dlq(service)));
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs.dedup_by(|a, b| a.name == b.name);
        specs
    }
}

/// Every topic the system needs, and who declares it in Kubernetes: `saga` (the operator,
/// from the Saga resource) or `services` (the chart's and `k8s/topics.yaml`'s KafkaTopics).
pub(crate) fn topic_list(
    saga: Option<&std::path::Path>,
    prefix: &str,
) -> anyhow::Result<Vec<(TopicSpec, &'static str)>> {
    let topics = Topics::new(saga, prefix)?;
    Ok(topics
        .specs()
        .into_iter()
        .map(|spec| {
            let by = if topics.saga_topics.iter().any(|t| t.name == spec.name) {
                "saga"
            } else {
                "services"
            };
            (spec, by)
        })
        .collect())
}

/// What a running service reports to the summary and waits on at shutdown.
enum Handle {
    Orchestrator(sagashop_saga::orchestrator::Running),
    Inventory(sagashop_inventory::Running),
    Payment(sagashop_payment::Running),
    Shipping(sagashop_shipping::Running),
    Order(sagashop_order::Running),
    Notification(sagashop_notification::Running),
    Analytics(sagashop_analytics::Running),
}

impl Handle {
    fn stats(&self) -> &Arc<Stats> {
        match self {
            Self::Orchestrator(r) => &r.stats,
            Self::Inventory(r) => &r.stats,
            Self::Payment(r) => &r.stats,
            Self::Shipping(r) => &r.stats,
            Self::Order(r) => &r.stats,
            Self::Notification(r) => &r.stats,
            Self::Analytics(r) => &r.stats,
        }
    }

    async fn stopped(self) -> Result<(), sagashop_kit::Error> {
        match self {
            Self::Orchestrator(r) => r.task.stopped().await,
            Self::Inventory(r) => r.task.stopped().await,
            Self::Payment(r) => r.task.stopped().await,
            Self::Shipping(r) => r.task.stopped().await,
            Self::Order(r) => r.task.stopped().await,
            Self::Notification(r) => r.task.stopped().await,
            Self::Analytics(r) => r.task.stopped().await,
        }
    }
}

fn unavailable(e: sagashop_kit::Error) -> Failure {
    let code = match e {
        sagashop_kit::Error::InvalidConfig { .. } => EX_USAGE,
        sagashop_kit::Error::Internal(_) => EX_SOFTWARE,
        _ => EX_UNAVAILABLE,
    };
    fail(code)(e.into())
}

/// Runs `services` until Ctrl-C or SIGTERM, then shuts them down gracefully.
pub(crate) async fn run(services: &[Service], args: SystemArgs) -> Result<(), Failure> {
    args.kafka
        .validate()
        .map_err(|e| fail(EX_USAGE)(e.into()))?;
    let topics = Topics::new(args.saga.as_deref(), &args.topic_prefix).map_err(fail(EX_USAGE))?;
    let kafka = &args.kafka;
    kafka
        .probe(Duration::from_secs(15))
        .await
        .map_err(unavailable)?;
    if args.create_topics {
        let admin = kafka.admin_client("sagashop").map_err(unavailable)?;
        let specs = topics.specs();
        let created = create_topics(&admin, &specs, Duration::from_secs(30))
            .await
            .map_err(unavailable)?;
        let names = specs.iter().map(|t| t.name.clone()).collect();
        sagashop_kit::admin::wait_for_leaders(kafka, names, Duration::from_secs(30))
            .await
            .map_err(unavailable)?;
        let new = created
            .iter()
            .filter(|(_, c)| *c == sagashop_kit::admin::Created::New)
            .count();
        tracing::info!(topics = specs.len(), created = new, "topics ready");
    }
    let monitor = Monitor::new();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("listening on {}", args.http))
        .map_err(fail(EX_UNAVAILABLE))?;
    let mut app = sagashop_kit::ops_router(monitor.clone());
    let mut handles = Vec::new();
    let instance = format!("{}{}", topics.prefix, args.instance);
    let group = |name: &str| topics.named(name);
    for service in services {
        let handle = match service {
            Service::Orchestrator => {
                let config = sagashop_saga::orchestrator::OrchestratorConfig {
                    definition: topics.definition.clone(),
                    transactional_id: format!("{instance}-orchestrator"),
                    dead_letter_topic: topics.dlq(Service::Orchestrator),
                    tick: Duration::from_millis(200),
                    group_prefix: topics.prefix.clone(),
                    retention: args.retention,
                };
                let running =
                    sagashop_saga::orchestrator::start(kafka, config, &monitor, shutdown.clone())
                        .await
                        .map_err(unavailable)?;
                app = app.merge(running.api.clone());
                Handle::Orchestrator(running)
            }
            Service::Inventory => {
                let config = sagashop_inventory::InventoryConfig {
                    command_topic: topics.command_topic("inventory").map_err(fail(EX_USAGE))?,
                    slip_topic: topics.named("inventory.slips.v1"),
                    stock_topic: topics.named("inventory.stock.v1"),
                    holds_topic: topics.named("inventory.holds.v1"),
                    dead_letter_topic: topics.dlq(Service::Inventory),
                    group_id: group("inventory"),
                    transactional_id: format!("{instance}-inventory"),
                    seed: args.stock.clone(),
                    out_of_stock: args.out_of_stock.clone(),
                    faults: Faults {
                        transient_rate: args.inventory_transient_rate,
                    },
                    retention: args.retention,
                };
                Handle::Inventory(
                    sagashop_inventory::start(kafka, config, &monitor, shutdown.clone())
                        .await
                        .map_err(unavailable)?,
                )
            }
            Service::Payment => {
                let config = sagashop_payment::PaymentConfig {
                    command_topic: topics.command_topic("payment").map_err(fail(EX_USAGE))?,
                    balances_topic: topics.named("payment.balances.v1"),
                    payments_topic: topics.named("payment.payments.v1"),
                    dead_letter_topic: topics.dlq(Service::Payment),
                    group_id: group("payment"),
                    transactional_id: format!("{instance}-payment"),
                    opening_balance: args.opening_balance,
                    decline_rate: args.decline_rate,
                    faults: Faults {
                        transient_rate: args.payment_transient_rate,
                    },
                    retention: args.retention,
                };
                Handle::Payment(
                    sagashop_payment::start(kafka, config, &monitor, shutdown.clone())
                        .await
                        .map_err(unavailable)?,
                )
            }
            Service::Shipping => {
                let config = sagashop_shipping::ShippingConfig {
                    command_topic: topics.command_topic("shipping").map_err(fail(EX_USAGE))?,
                    events_topic: topics.named("shipping.v1"),
                    shipments_topic: topics.named("shipping.shipments.v1"),
                    dead_letter_topic: topics.dlq(Service::Shipping),
                    group_id: group("shipping"),
                    transactional_id: format!("{instance}-shipping"),
                    ship_after: args.ship_after,
                    deliver_after: args.deliver_after,
                    faults: Faults {
                        transient_rate: args.shipping_transient_rate,
                    },
                    retention: args.retention,
                };
                Handle::Shipping(
                    sagashop_shipping::start(kafka, config, &monitor, shutdown.clone())
                        .await
                        .map_err(unavailable)?,
                )
            }
            Service::Notification => {
                let d = &topics.definition;
                let config = sagashop_notification::NotificationConfig {
                    outcome_topic: d.outcome.topic.clone(),
                    shipping_topic: topics.named("shipping.v1"),
                    outcome_events: (d.outcome.completed.clone(), d.outcome.cancelled.clone()),
                    sent_topic: topics.named("notification.sent.v1"),
                    dead_letter_topic: topics.dlq(Service::Notification),
                    group_id: group("notification"),
                    retention: args.retention,
                };
                let sink = Arc::new(sagashop_notification::LogSink);
                Handle::Notification(
                    sagashop_notification::start(kafka, config, sink, &monitor, shutdown.clone())
                        .await
                        .map_err(unavailable)?,
                )
            }
            Service::Analytics => {
                let d = &topics.definition;
                let config = sagashop_analytics::AnalyticsConfig {
                    outcome_topic: d.outcome.topic.clone(),
                    outcome_events: (d.outcome.completed.clone(), d.outcome.cancelled.clone()),
                    windows_topic: topics.named("analytics.windows.v1"),
                    snapshots_topic: topics.named("analytics.snapshots.v1"),
                    dead_letter_topic: topics.dlq(Service::Analytics),
                    group_id: group("analytics"),
                    transactional_id: format!("{instance}-analytics"),
                    retention: args.retention,
                };
                let running = sagashop_analytics::start(kafka, config, &monitor, shutdown.clone())
                    .await
                    .map_err(unavailable)?;
                app = app.merge(running.api.clone());
                Handle::Analytics(running)
            }
            Service::Order => {
                let config = sagashop_order::OrderConfig {
                    orders_topic: topics.definition.trigger.topic.clone(),
                    outcome_topic: topics.definition.outcome.topic.clone(),
                    shipping_topic: topics.named("shipping.v1"),
                    idempotency_topic: topics.named("orders.idempotency.v1"),
                    dead_letter_topic: topics.dlq(Service::Order),
                    view_group: group("order-view"),
                    body_limit: args.body_limit,
                    max_items: 1000,
                    retry_after_secs: 5,
                    transactional_id: format!("{instance}-order"),
                    rate_limit: (args.rate_limit > 0.0).then_some(args.rate_limit),
                    rate_burst: args.rate_burst,
                    body_timeout: args.body_timeout,
                    queue_timeout: args.queue_timeout,
                    retention: args.retention,
                };
                let running = sagashop_order::start(kafka, config, &monitor, shutdown.clone())
                    .await
                    .map_err(unavailable)?;
                app = app.merge(running.api.clone());
                Handle::Order(running)
            }
        };
        tracing::info!(service = service.name(), "started");
        handles.push(handle);
    }
    let limits = sagashop_kit::http::ServeLimits {
        header_timeout: args.header_timeout,
        max_connections: args.max_connections,
        ..sagashop_kit::http::ServeLimits::default()
    };
    let server = tokio::spawn(sagashop_kit::http::serve(
        listener,
        sagashop_kit::http::observed(app, &monitor),
        limits,
        shutdown.clone(),
    ));
    tracing::info!(address = %args.http, "serving HTTP: /api/orders, /api/sagas, /healthz, /readyz, /metrics");
    let summary = (!args.summary_every.is_zero()).then(|| {
        tokio::spawn(summarise(
            summary_sources(&handles),
            args.summary_every,
            shutdown.clone(),
        ))
    });
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    if let Some(summary) = summary {
        summary.abort();
    }
    let mut result = Ok(());
    for handle in handles {
        if let Err(e) = handle.stopped().await {
            tracing::error!(error = %e, "a service stopped with an error");
            result = Err(fail(EX_SOFTWARE)(e.into()));
        }
    }
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "the HTTP server panicked");
    }
    result
}

struct Sources {
    view: Option<Arc<sagashop_order::view::View>>,
    accepted: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    stats: Vec<Arc<Stats>>,
}

fn summary_sources(handles: &[Handle]) -> Sources {
    let order = handles.iter().find_map(|h| match h {
        Handle::Order(r) => Some(r),
        _ => None,
    });
    Sources {
        view: order.map(|o| Arc::clone(&o.view)),
        accepted: order.map(|o| Arc::clone(&o.accepted)),
        stats: handles.iter().map(|h| Arc::clone(h.stats())).collect(),
    }
}

/// Prints `accepted … completed … cancelled … in flight … dead letters …` every `every`: on
/// one line that updates in place on a terminal, one line per report otherwise.
async fn summarise(sources: Sources, every: Duration, shutdown: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let accepted = sources.accepted.as_ref().map_or(0, |a| a());
        let (pending, completed, cancelled) =
            sources.view.as_ref().map_or((0, 0, 0), |v| v.counts());
        let dead: u64 = sources
            .stats
            .iter()
            .map(|s| s.snapshot().dead_lettered)
            .sum();
        let line = format!(
            "accepted {accepted}  completed {completed}  cancelled {cancelled}  in flight {pending}  dead letters {dead}"
        );
        let mut err = std::io::stderr().lock();
        let written = if terminal {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        if written.and_then(|()| err.flush()).is_err() {
            return;
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
