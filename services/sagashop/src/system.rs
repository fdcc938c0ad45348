//! Running the services: one (`sagashop <service>`, what Kubernetes runs) or all of them in one
//! process (`sagashop dev`), with the HTTP API and `/healthz` `/readyz` `/metrics` on one address.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use sagashop_kit::admin::TopicSpec;
use sagashop_kit::http::ActionToken;
use sagashop_kit::{Context, Figure, KafkaConfig, Monitor, Running, Stats, Wiring};
use sagashop_saga::orchestrator;
use sagashop_saga::participant::Faults;
pub(crate) use sagashop_topology::Service;
use sagashop_topology::Topology;
use tokio_util::sync::CancellationToken;

use crate::cli::{EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE};
use crate::commands::{Failure, fail};

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
    /// A folder of `<service>.json` wirings (group, topics, isolation, processing, retry,
    /// transactional ids) to run on, as the operator writes them into the saga's ConfigMap.
    /// Unset: built from the saga (what the operator would write). The topic prefix applies
    /// either way.
    #[arg(long, env = "SAGASHOP_WIRING")]
    pub(crate) wiring: Option<PathBuf>,
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
    /// How long a start waits for Kafka to answer before giving up (exit 69). In a fresh
    /// install the broker may start after the services; meanwhile `/healthz` answers and
    /// `/readyz` says what is awaited.
    #[arg(long, env = "SAGASHOP_KAFKA_WAIT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) kafka_wait: Duration,
    /// Create the topics the services need before starting (what the operator does in a
    /// cluster). On for `sagashop dev`.
    #[arg(long, env = "SAGASHOP_CREATE_TOPICS")]
    pub(crate) create_topics: bool,
    /// How long finished work is kept after its last change: finished sagas, participants'
    /// records once their saga's outcome is known, notified message ids and the order read
    /// model. Memory holds about `orders per second × retention` orders (docs/operations.md,
    /// "Bounded state").
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
    /// The most orders this process accepted that may wait for their outcome (the sagas it
    /// started that still run); more new orders get `503` with `Retry-After` and nothing is
    /// written. 0 turns it off. Per replica, like the rate limit.
    #[arg(long, env = "ORDER_MAX_PENDING", default_value_t = 2000)]
    pub(crate) max_pending_orders: usize,
    /// How long an `Idempotency-Key` names its first order: a keyed retry within it gets the
    /// first `202` and writes nothing (no second saga, no second charge). Its own window,
    /// independent of the retention; each key costs memory on every edge for this long.
    #[arg(long, env = "ORDER_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = parse_retention)]
    pub(crate) idempotency_window: Duration,
    /// The most distinct products in one order (more: `422`): each is one hop of inventory's
    /// routing slip, all inside the reservation step's timeout.
    #[arg(long, env = "ORDER_MAX_PRODUCTS", default_value_t = 100, value_parser = parse_max_products)]
    pub(crate) max_products: usize,
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
    /// The token that allows actions over HTTP (retry and cancel a saga, replay a dead letter),
    /// sent as `Authorization: Bearer <token>`. Unset: read-only, every action refused.
    #[arg(long, env = "SAGASHOP_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
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

fn parse_max_products(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| format!("`{text}` is not a number of products from 1 to 1000"))
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

impl SystemArgs {
    /// The topology of the saga this process runs (the shipped one without `--saga`).
    fn topology(&self) -> anyhow::Result<Topology> {
        load_topology(self.saga.as_deref(), &self.topic_prefix)
    }

    /// `service`'s wiring: from `--wiring` when given (the operator's, with the topic prefix
    /// put before its names), else from the saga (the same values).
    fn wiring(&self, service: Service, topology: &Topology) -> anyhow::Result<Wiring> {
        match &self.wiring {
            Some(dir) => Ok(Wiring::read(dir, service.name())?.with_prefix(&self.topic_prefix)),
            None => Ok(topology.wiring(service)?),
        }
    }
}

/// The topology of the Saga manifest at `saga` (the shipped order saga when `None`), its names
/// prefixed by `prefix`.
fn load_topology(saga: Option<&std::path::Path>, prefix: &str) -> anyhow::Result<Topology> {
    let Some(path) = saga else {
        return Ok(Topology::load(None, prefix)?);
    };
    let yaml =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let path = path.display().to_string();
    Ok(Topology::load(Some((&yaml, &path)), prefix)?)
}

/// Every topic the system needs, and who declares it in Kubernetes: `saga` (the operator,
/// from the Saga resource) or `services` (the chart's and `k8s/topics.yaml`'s KafkaTopics).
pub(crate) fn topic_list(
    saga: Option<&std::path::Path>,
    prefix: &str,
) -> anyhow::Result<Vec<(TopicSpec, &'static str)>> {
    Ok(load_topology(saga, prefix)?
        .topics()
        .into_iter()
        .map(|(spec, by)| (spec, by.as_str()))
        .collect())
}

/// Starts `service`: the one place that knows every service's crate. Adding a service is its
/// crate, its entry in the topology (`services/topology`), and one arm here.
fn start<'a>(
    service: Service,
    context: &'a Context,
    wiring: Wiring,
    topology: &'a Topology,
    args: &'a SystemArgs,
) -> futures::future::BoxFuture<'a, Result<Running, sagashop_kit::Error>> {
    let d = topology.definition();
    let outcome_events = (d.outcome.completed.clone(), d.outcome.cancelled.clone());
    let faults = |transient_rate| Faults { transient_rate };
    match service {
        Service::Orchestrator => Box::pin(orchestrator::start(
            context,
            wiring,
            orchestrator::OrchestratorSettings {
                definition: d.clone(),
                tick: Duration::from_millis(200),
                action_token: ActionToken::new(args.admin_token.as_deref()),
            },
        )),
        Service::Inventory => Box::pin(sagashop_inventory::start(
            context,
            wiring,
            sagashop_inventory::InventorySettings {
                seed: args.stock.clone(),
                out_of_stock: args.out_of_stock.clone(),
                faults: faults(args.inventory_transient_rate),
            },
        )),
        Service::Payment => Box::pin(sagashop_payment::start(
            context,
            wiring,
            sagashop_payment::PaymentSettings {
                opening_balance: args.opening_balance,
                decline_rate: args.decline_rate,
                faults: faults(args.payment_transient_rate),
            },
        )),
        Service::Shipping => Box::pin(sagashop_shipping::start(
            context,
            wiring,
            sagashop_shipping::ShippingSettings {
                ship_after: args.ship_after,
                deliver_after: args.deliver_after,
                faults: faults(args.shipping_transient_rate),
            },
        )),
        Service::Notification => Box::pin(sagashop_notification::start(
            context,
            wiring,
            sagashop_notification::NotificationSettings {
                outcome_events,
                sink: Arc::new(sagashop_notification::LogSink),
            },
        )),
        Service::Analytics => Box::pin(sagashop_analytics::start(
            context,
            wiring,
            sagashop_analytics::AnalyticsSettings { outcome_events },
        )),
        Service::Order => Box::pin(sagashop_order::start(
            context,
            wiring,
            sagashop_order::OrderSettings {
                body_limit: args.body_limit,
                limits: sagashop_order::request::Limits {
                    max_items: 1000,
                    max_products: args.max_products,
                },
                idempotency_window: args.idempotency_window,
                retry_after_secs: 5,
                rate_limit: (args.rate_limit > 0.0).then_some(args.rate_limit),
                rate_burst: args.rate_burst,
                body_timeout: args.body_timeout,
                queue_timeout: args.queue_timeout,
                max_pending: (args.max_pending_orders > 0).then_some(args.max_pending_orders),
                shed_retry_after_secs: 1,
            },
        )),
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
    let topology = args.topology().map_err(fail(EX_USAGE))?;
    let wirings = services
        .iter()
        .map(|&service| args.wiring(service, &topology))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(fail(EX_USAGE))?;
    let transaction_timeout = args.kafka.transaction_timeout();
    for wiring in &wirings {
        wiring
            .fits_transaction(transaction_timeout)
            .map_err(|e| fail(EX_USAGE)(e.into()))?;
    }
    let monitor = Monitor::new();
    // `/healthz` and `/readyz` answer from here on: a start that waits (for the broker, for
    // topics the operator is still making) is alive and says it is not ready, rather than
    // being killed by its startup probe. The full API takes the socket over once every service
    // has started.
    let socket = std::net::TcpListener::bind(args.http)
        .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
        .with_context(|| format!("listening on {}", args.http))
        .map_err(fail(EX_UNAVAILABLE))?;
    let starting = CancellationToken::new();
    // Not ready until every service has started (and then, until each one's own parts are).
    let started = monitor.component("services");
    let early = early_health(&socket, &monitor, starting.clone()).map_err(fail(EX_UNAVAILABLE))?;
    wait_for_kafka(&args, &monitor).await?;
    if args.create_topics {
        create_topics(&args.kafka, &topology)
            .await
            .map_err(unavailable)?;
    }
    let context = Context {
        kafka: args.kafka.clone(),
        monitor,
        shutdown: CancellationToken::new(),
        instance: format!("{}{}", topology.prefix(), args.instance),
        retention: args.retention,
    };
    let mut running = Vec::new();
    for (&service, wiring) in services.iter().zip(wirings) {
        let started = start(service, &context, wiring, &topology, &args)
            .await
            .map_err(unavailable)?;
        tracing::info!(service = service.name(), "started");
        running.push(started);
    }
    // The console goes with the orchestrator, whose read model its pages show.
    let console = if services.contains(&Service::Orchestrator) {
        let token = ActionToken::new(args.admin_token.as_deref());
        Some(sagashop_console::routes(&context, topology.clone(), token).map_err(unavailable)?)
    } else {
        None
    };
    starting.cancel();
    let _ = early.await;
    started.set(true);
    let listener = tokio::net::TcpListener::from_std(socket)
        .with_context(|| format!("listening on {}", args.http))
        .map_err(fail(EX_UNAVAILABLE))?;
    let server = tokio::spawn(serve(listener, &context, &running, console, &args));
    tracing::info!(address = %args.http, "serving HTTP: /api/orders, /api/sagas, /console, /healthz, /readyz, /metrics, /wiring");
    let summary = (!args.summary_every.is_zero()).then(|| {
        tokio::spawn(summarise(
            Summary::of(&running),
            args.summary_every,
            context.shutdown.clone(),
        ))
    });
    let mut tasks = tokio::task::JoinSet::new();
    for service in running {
        let name = service.wiring.service.clone();
        tasks.spawn(async move { (name, service.task.stopped().await) });
    }
    // A service's work runs until shutdown: one that ends before (a processor that gave up)
    // stops the whole process, non-zero and with its cause in the log, so that its supervisor
    // (Kubernetes, systemd, a terminal) sees it and starts it again, instead of a process that
    // looks alive and no longer works.
    let mut result = Ok(());
    tokio::select! {
        () = wait_for_signal() => tracing::info!("shutting down"),
        Some(ended) = tasks.join_next() => {
            let (service, outcome) = ended.unwrap_or_else(|e| {
                ("?".into(), Err(sagashop_kit::Error::Internal(format!("a service panicked: {e}"))))
            });
            let e = outcome.err().unwrap_or_else(|| {
                sagashop_kit::Error::Internal("its work ended without being asked to".into())
            });
            tracing::error!(%service, error = %e, "a service stopped before shutdown; stopping the process so that it is started again");
            result = Err(fail(EX_SOFTWARE)(e.into()));
        }
    }
    context.shutdown.cancel();
    if let Some(summary) = summary {
        summary.abort();
    }
    while let Some(ended) = tasks.join_next().await {
        match ended {
            Ok((_, Ok(()))) => {}
            Ok((service, Err(e))) => {
                tracing::error!(%service, error = %e, "a service stopped with an error");
                if result.is_ok() {
                    result = Err(fail(EX_SOFTWARE)(e.into()));
                }
            }
            Err(e) => tracing::error!(error = %e, "a service panicked while stopping"),
        }
    }
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "the HTTP server panicked");
    }
    result
}

/// Serves `/healthz` `/readyz` `/metrics` on a copy of `socket` until `starting` is cancelled.
fn early_health(
    socket: &std::net::TcpListener,
    monitor: &Monitor,
    starting: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::from_std(socket.try_clone()?)?;
    // The API is not there yet: a 503 with Retry-After says so (a 404 would say it never is).
    let app = sagashop_kit::ops_router(monitor.clone()).fallback(|| async {
        let mut answer = sagashop_kit::http::problem(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "Starting",
            "this sagashop is starting: its services are not ready yet (GET /readyz says what is awaited)",
            None,
        );
        answer
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
        answer
    });
    let limits = sagashop_kit::http::ServeLimits {
        drain_timeout: Duration::from_secs(1),
        ..sagashop_kit::http::ServeLimits::default()
    };
    Ok(tokio::spawn(sagashop_kit::http::serve(
        listener, app, limits, starting,
    )))
}

/// Waits up to `--kafka-wait` for the broker to answer; a broker that answers but refuses
/// (credentials, TLS) fails at once.
async fn wait_for_kafka(args: &SystemArgs, monitor: &Monitor) -> Result<(), Failure> {
    let kafka = monitor.component("kafka");
    let deadline = tokio::time::Instant::now() + args.kafka_wait;
    let mut told = false;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match args
            .kafka
            .probe(left.clamp(Duration::from_secs(1), Duration::from_secs(15)))
            .await
        {
            Ok(_) => break,
            Err(e @ sagashop_kit::Error::Unreachable { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                if !told {
                    tracing::warn!(error = %e, wait = ?args.kafka_wait, "Kafka does not answer yet; waiting for it");
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    if told {
        tracing::info!("Kafka answers");
    }
    kafka.set(true);
    Ok(())
}

/// Creates every topic of the topology that is missing and waits for their leaders (what the
/// operator does in a cluster).
async fn create_topics(
    kafka: &KafkaConfig,
    topology: &Topology,
) -> Result<(), sagashop_kit::Error> {
    let admin = kafka.admin_client("sagashop")?;
    let specs: Vec<TopicSpec> = topology.topics().into_iter().map(|(s, _)| s).collect();
    let created =
        sagashop_kit::admin::create_topics(&admin, &specs, Duration::from_secs(30)).await?;
    let names = specs.iter().map(|t| t.name.clone()).collect();
    sagashop_kit::admin::wait_for_leaders(kafka, names, Duration::from_secs(30)).await?;
    let new = created
        .iter()
        .filter(|(_, c)| *c == sagashop_kit::admin::Created::New)
        .count();
    tracing::info!(topics = specs.len(), created = new, "topics ready");
    Ok(())
}

/// The HTTP server: every service's routes, the console's where there is one, `/healthz`
/// `/readyz` `/metrics`, and `/wiring` (what each service of this process runs on).
fn serve(
    listener: tokio::net::TcpListener,
    context: &Context,
    running: &[Running],
    console: Option<axum::Router>,
    args: &SystemArgs,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let wirings: Vec<Wiring> = running.iter().map(|r| r.wiring.clone()).collect();
    let mut app = sagashop_kit::ops_router(context.monitor.clone()).route(
        "/wiring",
        axum::routing::get(move || {
            let wirings = wirings.clone();
            async move { axum::Json(wirings) }
        }),
    );
    for routes in running
        .iter()
        .filter_map(|r| r.routes.clone())
        .chain(console)
    {
        app = app.merge(routes);
    }
    let limits = sagashop_kit::http::ServeLimits {
        header_timeout: args.header_timeout,
        max_connections: args.max_connections,
        ..sagashop_kit::http::ServeLimits::default()
    };
    sagashop_kit::http::serve(
        listener,
        sagashop_kit::http::observed(app, &context.monitor),
        limits,
        context.shutdown.clone(),
    )
}

/// What the summary line shows: every service's figures, then the dead letters of all.
struct Summary {
    figures: Vec<(&'static str, Figure)>,
    stats: Vec<Arc<Stats>>,
}

impl Summary {
    fn of(running: &[Running]) -> Self {
        Self {
            figures: running.iter().flat_map(|r| r.figures.clone()).collect(),
            stats: running.iter().map(|r| Arc::clone(&r.stats)).collect(),
        }
    }

    fn line(&self) -> String {
        let dead: u64 = self.stats.iter().map(|s| s.snapshot().dead_lettered).sum();
        let mut parts: Vec<String> = self
            .figures
            .iter()
            .map(|(name, figure)| format!("{name} {}", figure()))
            .collect();
        parts.push(format!("dead letters {dead}"));
        parts.join("  ")
    }
}

/// Prints `accepted … completed … cancelled … in flight … dead letters …` every `every`: on
/// one line that updates in place on a terminal, one line per report otherwise.
async fn summarise(summary: Summary, every: Duration, shutdown: CancellationToken) {
    let terminal = std::io::stderr().is_terminal();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let line = summary.line();
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
