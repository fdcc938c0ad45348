//! The order service: the HTTP edge (`POST /api/orders`, `GET /api/orders[/{id}]`) and the order
//! read model behind it.
//!
//! `POST` answers `202` only after `OrderPlaced` is committed to Kafka; when Kafka cannot take
//! it, `503` with `Retry-After`, and nothing was written: the order and its `Idempotency-Key`
//! record are written in one Kafka transaction ([`sagashop_kit::Committer`]), so a failure
//! leaves nothing any reader sees, even when the broker vanished mid-write. An
//! `Idempotency-Key` header (scoped to the customer) makes a retried request return the first
//! request's order id without writing anything new (keys are kept in a compacted topic, so this
//! survives restarts). The order id of a keyed request is derived from customer and key, so two
//! replicas that each take the key once name the same order, whose saga starts once.
//!
//! Hostile or careless clients meet limits, each with its own answer: a body over the size
//! limit (`413`), a body that takes too long to arrive (`408`), more orders per second than the
//! rate limit (`429` with `Retry-After`), too many orders waiting for Kafka (`503`). Refusals
//! are `application/problem+json` naming the offending field.
//!
//! The edge also sheds load on the work behind it: when more orders it accepted are still
//! waiting for their outcome than `max_pending`, a new order gets `503` with `Retry-After` and
//! nothing is written, so sagas cannot pile up without bound when the system behind the edge
//! falls behind (or stops). A keyed retry of an order already accepted still gets its `202`.

pub mod limit;
pub mod refusal;
pub mod request;
pub mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use uuid::Uuid;

use sagashop_contracts::Envelope;
use sagashop_contracts::events::{
    OrderCancelled, OrderCompleted, OrderDelivered, OrderPlaced, OrderShipped, SagaStepChanged,
};
use sagashop_kit::{
    CommitError, Committer, CommitterConfig, Context, Error, Expiry, Figure, KeyLocks, Outgoing,
    ProcessorConfig, Router, Running, Store, Task, Wiring,
};

use crate::limit::RateLimit;
use crate::refusal::ApiError;
use crate::view::{OrderStatus, View};

/// The order service's own settings (its topics and group come from its [`Wiring`]).
#[derive(Debug, Clone)]
pub struct OrderSettings {
    /// The largest body accepted, in bytes.
    pub body_limit: usize,
    /// The most lines and distinct products in one order (more: `422`).
    pub limits: request::Limits,
    /// How long an `Idempotency-Key` names its first order: a keyed retry within it gets the
    /// first `202` and writes nothing. Its own window, independent of the retention of finished
    /// work (payment providers keep keys for 24 hours).
    pub idempotency_window: Duration,
    /// What `Retry-After` says when Kafka is unavailable, in seconds.
    pub retry_after_secs: u32,
    /// New orders per second this process takes; more get `429` (`None`: no limit).
    pub rate_limit: Option<f64>,
    /// How many orders may arrive at once above the rate.
    pub rate_burst: u32,
    /// How long a request body may take to arrive; slower ones get `408`.
    pub body_timeout: Duration,
    /// How long an order may wait for a Kafka transaction before `503`.
    pub queue_timeout: Duration,
    /// The most orders accepted by this process that may wait for their outcome; more new
    /// orders get `503` (`None`: no limit).
    pub max_pending: Option<usize>,
    /// What `Retry-After` says to an order shed for `max_pending`, in seconds.
    pub shed_retry_after_secs: u32,
}

struct Edge {
    committer: Committer,
    limit: Option<RateLimit>,
    idempotency: Store<String>,
    view: Arc<View>,
    /// Where `OrderPlaced` goes (the saga's trigger topic).
    orders_topic: String,
    config: OrderSettings,
    accepted: AtomicU64,
    /// New orders refused for `max_pending`.
    shed: AtomicU64,
    locks: KeyLocks,
}

/// Restores the idempotency keys, starts rebuilding the read model, and serves the API. An
/// idempotency key is honoured for its own window (`idempotency_window`, a day by default):
/// a keyed retry inside it is answered from the key and writes nothing, so it never starts a
/// second saga, however long ago the orchestrator forgot the first one. The read model keeps
/// an order after its latest event for the context's retention.
pub async fn start(
    context: &Context,
    wiring: Wiring,
    settings: OrderSettings,
) -> Result<Running, Error> {
    let (kafka, monitor, retention) = (&context.kafka, &context.monitor, context.retention);
    let idempotency: Store<String> = Store::open(
        kafka,
        "order-idempotency",
        wiring.topic("idempotency")?,
        monitor,
    )
    .await?;
    let view = Arc::new(View::with_retention(retention));
    let publisher = context.publisher(&wiring)?;
    // Key records the restore could not read were skipped: their bytes go where people look.
    sagashop_kit::dlq::dead_letter_quarantined(
        &idempotency,
        &publisher,
        &wiring.dead_letter_topic,
        &wiring.group_id,
    )
    .await;
    let processor = view_processor(context, &wiring, &view, publisher.clone()).await?;
    let stats = processor.stats();
    let shutdown = context.shutdown.clone();
    let (committer, writer) = committer(context, &wiring, settings.queue_timeout).await?;
    // Keys past their window and orders past the retention are forgotten (the keys by
    // tombstones, so every edge's next restore forgets them too).
    let expiry = Expiry::new()
        .of(&idempotency, settings.idempotency_window, |_| true)
        .also("read-model orders", retention, {
            let view = Arc::clone(&view);
            move || view.expire()
        });
    tokio::spawn(expiry.run(publisher, shutdown.clone()));
    let task = Task::spawn("the order service", async move {
        // Both run until shutdown; the first to fail ends the service at once.
        tokio::try_join!(processor.run(shutdown), writer.stopped()).map(drop)
    });
    let edge = Arc::new(Edge {
        committer,
        limit: settings
            .rate_limit
            .map(|rate| RateLimit::new(rate, settings.rate_burst)),
        idempotency,
        view: Arc::clone(&view),
        orders_topic: wiring.topic("orders")?.to_owned(),
        config: settings,
        accepted: AtomicU64::new(0),
        shed: AtomicU64::new(0),
        locks: KeyLocks::default(),
    });
    let api = axum::Router::new()
        .route("/api/orders", get(list).post(place))
        .route("/api/orders/{id}", get(show))
        .with_state(Arc::clone(&edge));
    let counts = |pick: fn((usize, usize, usize)) -> usize| -> Figure {
        let view = Arc::clone(&view);
        Arc::new(move || pick(view.counts()) as u64)
    };
    let shed = Arc::clone(&edge);
    Ok(Running::new(wiring, stats, task)
        .with_routes(api)
        .with_figure(
            "accepted",
            Arc::new(move || edge.accepted.load(Ordering::Relaxed)),
        )
        .with_figure("shed", Arc::new(move || shed.shed.load(Ordering::Relaxed)))
        .with_figure("completed", counts(|(_, completed, _)| completed))
        .with_figure("cancelled", counts(|(_, _, cancelled)| cancelled))
        .with_figure("in flight", counts(|(pending, _, _)| pending)))
}

/// The edge's writer: orders and their idempotency keys, committed in Kafka transactions.
async fn committer(
    context: &Context,
    wiring: &Wiring,
    queue_timeout: Duration,
) -> Result<(Committer, Task), Error> {
    let transactional_id =
        wiring
            .transactional_id(&context.instance)
            .ok_or_else(|| Error::InvalidConfig {
                setting: "wiring",
                reason: "the order edge writes in transactions: its wiring needs a transactionalId"
                    .to_owned(),
            })?;
    let config = CommitterConfig {
        queue_timeout,
        ..CommitterConfig::new(&transactional_id)
    };
    let (kafka, monitor) = (&context.kafka, &context.monitor);
    Committer::start(
        kafka,
        "order-edge",
        config,
        monitor,
        context.shutdown.clone(),
    )
    .await
}

/// The read model's consumer, in a fresh group each start: the view is rebuilt from every
/// topic, starting at the events of the retention (older ones it would forget at once).
async fn view_processor(
    context: &Context,
    wiring: &Wiring,
    view: &Arc<View>,
    publisher: sagashop_kit::Publisher,
) -> Result<sagashop_kit::Processor, Error> {
    let router = read_model(view, wiring)?;
    let group = format!("{}-{}", wiring.group_id, Uuid::now_v7().simple());
    let since = chrono::Utc::now()
        .timestamp_millis()
        .saturating_sub(i64::try_from(context.retention.as_millis()).unwrap_or(i64::MAX));
    let topics: Vec<String> = router.topics();
    let timeout = Duration::from_secs(30);
    sagashop_kit::reader::start_group_at(&context.kafka, &group, &topics, since, timeout).await?;
    let config = ProcessorConfig {
        group_id: group,
        ..wiring.processor_config(&context.instance)?
    };
    context
        .processor_with(wiring, config, router, publisher)
        .await
}

/// The read model's handlers: every order's latest state from the trigger, outcome and
/// shipping topics.
fn read_model(view: &Arc<View>, wiring: &Wiring) -> Result<Router, Error> {
    let (orders, outcome, shipping) = (
        wiring.topic("orders")?,
        wiring.topic("outcome")?,
        wiring.topic("shipping")?,
    );
    let on = || Arc::clone(view);
    let (v1, v2, v3, v4, v5, v6) = (on(), on(), on(), on(), on(), on());
    Ok(Router::new()
        .on(orders, move |e: Envelope<OrderPlaced>| {
            v1.placed(&e.payload);
            async { Ok(vec![]) }
        })
        .on(outcome, move |e: Envelope<OrderCompleted>| {
            v2.completed(&e.payload);
            async { Ok(vec![]) }
        })
        .on(outcome, move |e: Envelope<OrderCancelled>| {
            v3.cancelled(&e.payload);
            async { Ok(vec![]) }
        })
        .on(outcome, move |e: Envelope<SagaStepChanged>| {
            v4.step(&e.payload);
            async { Ok(vec![]) }
        })
        .on(shipping, move |e: Envelope<OrderShipped>| {
            v5.shipped(&e.payload);
            async { Ok(vec![]) }
        })
        .on(shipping, move |e: Envelope<OrderDelivered>| {
            v6.delivered(&e.payload);
            async { Ok(vec![]) }
        }))
}

/// Takes a token from the rate limit, if there is one.
fn admit(edge: &Edge) -> Result<(), ApiError> {
    match edge.limit.as_ref().map(RateLimit::try_take) {
        Some(Err(wait)) => Err(ApiError::RateLimited {
            retry_after_secs: u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX),
        }),
        _ => Ok(()),
    }
}

/// Refuses a new order while too many this process accepted wait for their outcome.
fn shed(edge: &Edge) -> Result<(), ApiError> {
    let Some(limit) = edge.config.max_pending else {
        return Ok(());
    };
    let pending = edge.view.pending_accepted();
    if pending < limit {
        return Ok(());
    }
    if edge
        .shed
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(1000)
    {
        tracing::warn!(
            pending,
            limit,
            "shedding new orders: too many accepted here are waiting for their outcome"
        );
    }
    Err(ApiError::Overloaded {
        pending,
        limit,
        retry_after_secs: edge.config.shed_retry_after_secs,
    })
}

/// The whole body, within the size limit and the body timeout.
async fn read_body(
    config: &OrderSettings,
    request: Request,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = config.body_limit;
    let read = axum::body::to_bytes(request.into_body(), limit);
    match tokio::time::timeout(config.body_timeout, read).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err(ApiError::BodyTooLarge { limit }),
        Err(_) => Err(ApiError::BodyTooSlow {
            timeout: config.body_timeout,
        }),
    }
}

async fn place(State(edge): State<Arc<Edge>>, request: Request) -> Result<Response, ApiError> {
    admit(&edge)?;
    let key = idempotency_key(request.headers())?;
    let body = read_body(&edge.config, request).await?;
    let order = request::parse(&body, edge.config.limits)?;
    // A key is the customer's own: another customer's identical key is another order.
    let key = key.map(|key| format!("{}/{key}", order.customer_id));
    // One request per key at a time, so a retry racing its original still gets one order.
    let _held = match &key {
        Some(key) => Some(edge.locks.lock(key).await),
        None => None,
    };
    if let Some(order_id) = key.as_deref().and_then(|k| edge.idempotency.get(k)) {
        return Ok(accepted_response(&order_id));
    }
    shed(&edge)?;
    let order_id = key.as_deref().map_or_else(Uuid::now_v7, keyed_order_id);
    let event = OrderPlaced {
        order_id,
        customer_id: order.customer_id,
        items: order.items,
        currency: order.currency,
        total_minor: order.total_minor,
        placed_at: chrono::Utc::now(),
    };
    let envelope = Envelope::new(order_id.to_string(), order_id.to_string(), event);
    let records = records(&edge, &envelope, key.as_deref()).map_err(|e| {
        tracing::error!(error = %e, "order not encoded");
        ApiError::NotEncoded(e)
    })?;
    edge.committer
        .commit(records)
        .await
        .map_err(|e| not_committed(&edge, e, order_id))?;
    edge.view.accepted(&envelope.payload);
    edge.accepted.fetch_add(1, Ordering::Relaxed);
    if let Some(key) = key {
        edge.idempotency.committed(&key, order_id.to_string());
    }
    Ok(accepted_response(&order_id.to_string()))
}

/// The answer to an order Kafka did not commit, logged.
fn not_committed(edge: &Edge, error: CommitError, order_id: Uuid) -> ApiError {
    match error {
        CommitError::Unavailable(_) => {
            tracing::warn!(%error, "order not accepted: Kafka unavailable");
            ApiError::Unavailable {
                retry_after_secs: edge.config.retry_after_secs,
            }
        }
        CommitError::Rejected(_) => {
            tracing::error!(%error, "order not accepted");
            ApiError::Rejected(error.to_string())
        }
        CommitError::Unknown(_) => {
            tracing::error!(%error, %order_id, "order outcome unknown");
            ApiError::OutcomeUnknown { order_id }
        }
    }
}

/// The order id of a request with an idempotency key: the same on every replica, so a key
/// that reaches two replicas (or one before and after a restart) names one order, and its
/// saga, keyed by that id, starts once however often `OrderPlaced` is written.
fn keyed_order_id(customer_and_key: &str) -> Uuid {
    // A fixed namespace of sagashop's own (a v4 drawn once): ids of other systems never match.
    const NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_5b0b_8f1e_4c3d_9a7e_2b6c_1d0e_4f5a);
    Uuid::new_v5(&NAMESPACE, customer_and_key.as_bytes())
}

/// `OrderPlaced`, and the `Idempotency-Key` record when there is a key: committed together.
fn records(
    edge: &Edge,
    envelope: &Envelope<OrderPlaced>,
    key: Option<&str>,
) -> Result<Vec<Outgoing>, String> {
    let placed = Outgoing::event(&edge.orders_topic, envelope).map_err(|e| e.to_string())?;
    let mut records = vec![placed];
    if let Some(key) = key {
        let remembered = edge
            .idempotency
            .changelog(key, &envelope.payload.order_id.to_string())
            .map_err(|e| e.to_string())?;
        records.push(remembered);
    }
    Ok(records)
}

#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, built once per request"
)]
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 128 => Ok(Some(key.to_owned())),
        _ => Err(ApiError::BadIdempotencyKey),
    }
}

fn accepted_response(order_id: &str) -> Response {
    let location = format!("/api/orders/{order_id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(serde_json::json!({ "orderId": order_id, "status": "PENDING" })),
    )
        .into_response()
}

async fn show(State(edge): State<Arc<Edge>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let order = id.parse::<Uuid>().ok().and_then(|id| edge.view.get(&id));
    let order = order.ok_or(ApiError::UnknownOrder(id))?;
    Ok(Json(order).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
}

async fn list(
    State(edge): State<Arc<Edge>>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(OrderStatus::parse(text).ok_or(ApiError::InvalidStatus)?),
    };
    let limit = match query.limit.as_deref().map(str::parse::<usize>) {
        None => 20,
        Some(Ok(limit)) if (1..=1000).contains(&limit) => limit,
        Some(_) => return Err(ApiError::InvalidLimit),
    };
    let orders = edge.view.recent(status, limit);
    Ok(Json(serde_json::json!({ "orders": orders })).into_response())
}
