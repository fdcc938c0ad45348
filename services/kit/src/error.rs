//! The runtime's error type: what can go wrong below the services, with what to do next.

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
