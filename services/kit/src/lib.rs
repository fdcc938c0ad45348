//! The event runtime every sagashop service is built on.
//!
//! It sits between the services' domain code and Kafka: [`kafka`] turns one validated
//! [`KafkaConfig`] into producer, consumer and admin clients whose settings carry the design's
//! delivery promises; [`headers`] maps the contracts' envelope metadata onto record headers;
//! [`admin`] creates the topics a service needs; [`telemetry`] sets up logging.
//!
//! Services publish with a [`Publisher`] (acknowledged or a typed error; "unavailable" is what
//! the HTTP edge turns into 503) and consume with a [`Processor`] running a [`Router`] of typed
//! handlers: ordered per key, concurrent across keys, offsets committed only through the last
//! contiguous finished record, transient failures retried with backoff ([`retry`]), everything
//! else sent to a dead-letter topic ([`dlq`]).

pub mod admin;
pub mod committer;
pub mod dlq;
mod exactly_once;
pub mod exit;
pub mod expiry;
pub mod headers;
pub mod http;
pub mod kafka;
pub mod monitor;
pub mod offsets;
mod partitions;
pub mod processor;
pub mod publisher;
pub mod reader;
pub mod redelivery;
pub mod retry;
pub mod router;
pub mod security;
pub mod store;
pub mod telemetry;

pub use committer::{CommitError, Committer, CommitterConfig};
pub use exactly_once::fence;
pub use expiry::Expiry;
pub use http::ops_router;
pub use kafka::{ClusterInfo, KafkaConfig};
pub use monitor::{Monitor, ReadyFlag};
pub use processor::{DedupeKey, Processor, ProcessorConfig, Stats, StatsSnapshot};
pub use publisher::{Delivered, Outgoing, PublishError, Publisher};
pub use redelivery::RetryTopic;
pub use retry::RetryPolicy;
pub use router::{FailurePolicy, HandlerError, HandlerResult, Record, Router};
pub use store::Store;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What can go wrong in the runtime. Messages say what to do next where there is something to do.
///
/// librdkafka's errors are shown inline as `cause` rather than chained as a `source`: their
/// `Display` already includes the error code that their `source()` would repeat.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is unusable; found before any connection is made.
    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig {
        /// The environment variable (or flag) at fault.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The broker does not answer.
    #[error(
        "Kafka at {bootstrap} is unreachable ({cause}): start it with `scripts/kafka up`, or \
         check KAFKA_BOOTSTRAP_SERVERS (and KAFKA_SECURITY_PROTOCOL: a TLS listener looks like \
         this to a PLAINTEXT client)"
    )]
    Unreachable {
        /// The bootstrap servers tried.
        bootstrap: String,
        /// librdkafka's account.
        cause: KafkaError,
    },
    /// The broker answers but refuses the connection: TLS or SASL settings do not match it.
    #[error(
        "Kafka at {bootstrap} refused the connection ({reason}): check KAFKA_SECURITY_PROTOCOL, \
         KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SSL_CA_LOCATION"
    )]
    Refused {
        /// The bootstrap servers tried.
        bootstrap: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// librdkafka refused a client configuration.
    #[error("could not create the Kafka {what} client: {cause}")]
    Client {
        /// Which client: producer, consumer, admin.
        what: &'static str,
        /// librdkafka's account.
        cause: KafkaError,
    },
    /// An admin request failed as a whole.
    #[error("Kafka could not {action}: {cause}")]
    Admin {
        /// What we asked for.
        action: &'static str,
        /// librdkafka's account.
        cause: KafkaError,
    },
    /// The broker refused to create a topic.
    #[error("Kafka refused to create topic `{topic}`: {code}")]
    TopicRefused {
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// A bug or an environment fault (a panicked blocking task, say).
    #[error("internal error: {0}")]
    Internal(String),
}

/// A service's background work: its processor (and helpers), running until its shutdown
/// token is cancelled.
#[derive(Debug)]
pub struct Task {
    name: &'static str,
    handle: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Task {
    /// Runs `work` on the executor as `name`'s task.
    pub fn spawn(
        name: &'static str,
        work: impl std::future::Future<Output = Result<(), Error>> + Send + 'static,
    ) -> Self {
        Self {
            name,
            handle: tokio::spawn(work),
        }
    }

    /// Waits for it to end (after its shutdown token is cancelled): its result, or an internal
    /// error naming it if it panicked.
    pub async fn stopped(self) -> Result<(), Error> {
        self.handle
            .await
            .map_err(|e| Error::Internal(format!("{} panicked: {e}", self.name)))?
    }
}
