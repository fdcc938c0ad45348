//! Kafka transactions, shared by the exactly-once consume loop (`exactly_once.rs`) and the
//! edge's group commit (`committer.rs`): creating and fencing a transactional producer, running
//! librdkafka's blocking transaction calls under a watchdog, committing and aborting.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::publisher::PublishError;

/// Why a batch's transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TxnError {
    #[error("{0}: {1}")]
    Kafka(&'static str, KafkaError),
    #[error("{0} did not return within the watchdog timeout")]
    Watchdog(&'static str),
    #[error(transparent)]
    Delivery(#[from] PublishError),
    #[error("{0}")]
    Internal(String),
}

impl TxnError {
    /// As a runtime error from the `what` client, keeping librdkafka's code, so that
    /// [`Error::is_transient`] tells an outage from a fault.
    pub(crate) fn into_error(self, what: &'static str) -> Error {
        match self {
            Self::Kafka(_, cause) => Error::Client { what, cause },
            other => Error::Internal(format!("{what}: {other}")),
        }
    }

    /// Whether the producer can no longer be used (fenced by a newer instance, or broken).
    pub(crate) fn is_fatal(&self) -> bool {
        match self {
            Self::Kafka(_, KafkaError::Transaction(e)) => e.is_fatal(),
            Self::Watchdog(_) => true,
            _ => false,
        }
    }
}

/// Runs a blocking librdkafka call on the blocking pool, giving up after `timeout` plus a margin
/// (librdkafka's own timeout should fire first; the watchdog catches a call that hangs anyway).
pub(crate) async fn blocking<T, F>(
    what: &'static str,
    timeout: Duration,
    call: F,
) -> Result<T, TxnError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, KafkaError> + Send + 'static,
{
    let task = tokio::task::spawn_blocking(call);
    match tokio::time::timeout(timeout + Duration::from_secs(5), task).await {
        Ok(Ok(result)) => result.map_err(|e| TxnError::Kafka(what, e)),
        Ok(Err(join)) => Err(TxnError::Internal(format!("{what} panicked: {join}"))),
        Err(_) => Err(TxnError::Watchdog(what)),
    }
}

/// Creates a transactional producer and registers its `transactional.id` with the broker,
/// which fences (aborts) whatever an earlier instance with the same id left open.
pub(crate) async fn producer(
    config: &ClientConfig,
    timeout: Duration,
) -> Result<FutureProducer, Error> {
    let producer: FutureProducer = config.create().map_err(|cause| Error::Client {
        what: "transactional producer",
        cause,
    })?;
    let init = producer.clone();
    blocking("init_transactions", timeout, move || {
        init.init_transactions(timeout)
    })
    .await
    .map_err(|e| e.into_error("transactional producer (init_transactions)"))?;
    Ok(producer)
}

/// [`producer`], tried again with backoff for as long as Kafka is away (an outage outlasts
/// any one `init_transactions`); `None` when `shutdown` comes first. Other errors (settings, a
/// call that hung past the watchdog) end the service.
pub(crate) async fn producer_when_reachable(
    config: &ClientConfig,
    timeout: Duration,
    shutdown: &CancellationToken,
    alive: &crate::monitor::Heartbeat,
) -> Result<Option<FutureProducer>, Error> {
    crate::retry::while_kafka_away("starting a transactional producer", shutdown, alive, || {
        producer(config, timeout)
    })
    .await
}

/// How long fencing a transactional id may take before the service gives up starting.
pub(crate) const FENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Fences the previous incarnation of `transactional_id` (a member killed mid-transaction):
/// registering the id aborts whatever it left open at once, instead of after the transaction
/// timeout. Call it before restoring stores: an open transaction holds back what
/// `read_committed` readers (the restore) can see.
pub async fn fence(
    kafka: &crate::kafka::KafkaConfig,
    group_id: &str,
    transactional_id: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let config = kafka.transactional_producer(group_id, transactional_id);
    let fenced = producer(&config, timeout).await?;
    drop(fenced);
    Ok(())
}

/// Commits the open transaction. First waits (up to a second) until librdkafka holds no
/// message and no undelivered report: every record's acknowledgement has been awaited already,
/// but the report may still be on its way out of librdkafka's queue, and rdkafka's
/// `commit_transaction` then runs its flush loop, which sleeps 100 ms per round. Measured: 1
/// commit in 10 took 100 ms instead of under 1 ms.
pub(crate) fn commit_now(txn: &FutureProducer, timeout: Duration) -> Result<(), KafkaError> {
    let settled = std::time::Instant::now() + Duration::from_secs(1);
    while txn.in_flight_count() > 0 && std::time::Instant::now() < settled {
        std::thread::sleep(Duration::from_micros(200));
    }
    txn.commit_transaction(timeout)
}

/// How long shutdown waits for a transaction in progress.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Completes [`SHUTDOWN_GRACE`] after `shutdown` is cancelled.
pub(crate) async fn grace_after(shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// Aborts the open transaction; returns whether the producer must be replaced.
pub(crate) async fn abort(txn: &FutureProducer, timeout: Duration) -> bool {
    let producer = txn.clone();
    match blocking("abort_transaction", timeout, move || {
        producer.abort_transaction(timeout)
    })
    .await
    {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(error = %e, "abort failed");
            e.is_fatal()
        }
    }
}
