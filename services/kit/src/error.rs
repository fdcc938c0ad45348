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

impl Error {
    /// The error for a topic Kafka does not have (yet: the operator or `sagashop dev` makes
    /// topics, possibly after a service starts).
    pub fn missing_topic(topic: &str) -> Self {
        Self::InvalidConfig {
            setting: "--topic",
            reason: format!("topic `{topic}` does not exist"),
        }
    }

    /// Whether it is [`Error::missing_topic`]'s: worth waiting for while topics are being made.
    pub fn is_missing_topic(&self) -> bool {
        matches!(self, Self::InvalidConfig { setting: "--topic", reason } if reason.ends_with("does not exist"))
    }

    /// Whether Kafka being away or slow explains it, so that the same call can work later: the
    /// broker unreachable, a connection lost, a request timed out, a leader or coordinator
    /// moving. Settings, refusals and bugs are not.
    pub fn is_transient(&self) -> bool {
        use RDKafkaErrorCode as C;
        let cause = match self {
            Self::Unreachable { .. } => return true,
            Self::Client { cause, .. } | Self::Admin { cause, .. } => cause,
            _ => return false,
        };
        let code = cause.rdkafka_error_code();
        kafka_away(code)
            || matches!(
                code,
                Some(C::CoordinatorLoadInProgress | C::CoordinatorNotAvailable | C::NotCoordinator)
            )
    }
}

/// Whether librdkafka's `code` says the broker is away or slow, or a partition's leader is
/// moving: what every kind of call may meet during an outage, and what waiting can cure.
pub(crate) fn kafka_away(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        Some(
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::NetworkException
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                // A broker that left the cluster's metadata (restarting in a cluster) is
                // decommissioned: a request on its way to it fails with this.
                | C::DestroyBroker
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_being_away_is_transient_and_a_bad_setting_is_not() {
        let consumer = |cause| Error::Client {
            what: "consumer",
            cause,
        };
        // What a restore hit during a broker restart (the fault suite's broker-restart).
        let away = consumer(KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure,
        ));
        assert!(away.is_transient(), "{away}");
        assert!(
            consumer(KafkaError::MetadataFetch(
                RDKafkaErrorCode::OperationTimedOut
            ))
            .is_transient()
        );
        // What a restore hit while a broker of three restarted (the fault suite's
        // broker-failover): payment stopped on it before it counted as Kafka being away.
        assert!(
            consumer(KafkaError::MetadataFetch(RDKafkaErrorCode::DestroyBroker)).is_transient()
        );
        assert!(
            !consumer(KafkaError::ClientCreation("bad setting".into())).is_transient(),
            "librdkafka refusing a configuration will refuse it again"
        );
        let setting = Error::InvalidConfig {
            setting: "partitions",
            reason: "not co-partitioned".into(),
        };
        assert!(!setting.is_transient());
        assert!(!Error::Internal("a panicked task".into()).is_transient());
    }
}
