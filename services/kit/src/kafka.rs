//! Kafka client setup: one validated configuration, the client settings every service shares.
//!
//! The settings here carry the design's promises: producers are idempotent with `acks=all` (an
//! acknowledged write survives and is never duplicated by a client retry); consumers read only
//! committed transactional data and store offsets only after processing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::util::Timeout;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::security::KafkaSecurity;

/// How sagashop reaches Kafka. Every service and tool takes these flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, comma-separated `host:port` (`scripts/kafka up` prints one).
    #[arg(
        long = "kafka-bootstrap-servers",
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,

    /// Extra librdkafka properties, `key=value`, comma-separated; applied last, so they override
    /// sagashop's defaults (e.g. `linger.ms=20,batch.num.messages=5000`).
    #[arg(
        long = "kafka-property",
        env = "KAFKA_CLIENT_PROPERTIES",
        value_delimiter = ',',
        value_parser = parse_property
    )]
    pub properties: Vec<(String, String)>,

    /// The client id the broker logs and quotas see; services append their own name.
    #[arg(
        long = "kafka-client-id",
        env = "KAFKA_CLIENT_ID",
        default_value = "sagashop"
    )]
    pub client_id: String,

    /// How long a publish may wait for the broker's acknowledgement before it fails
    /// (librdkafka `message.timeout.ms`). The HTTP edge answers 503 when it runs out.
    #[arg(
        long = "kafka-delivery-timeout",
        env = "KAFKA_DELIVERY_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration
    )]
    pub delivery_timeout: Duration,

    /// TLS and SASL.
    #[command(flatten)]
    pub security: KafkaSecurity,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self::new("127.0.0.1:9092")
    }
}

fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected `key=value`, found {raw:?}")),
    }
}

impl KafkaConfig {
    /// A configuration for `bootstrap_servers` with every other setting at its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: Vec::new(),
            client_id: "sagashop".to_owned(),
            delivery_timeout: Duration::from_secs(10),
            security: KafkaSecurity::default(),
        }
    }

    /// Checks the settings without contacting the broker; the error names the setting.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidConfig {
            setting: "KAFKA_BOOTSTRAP_SERVERS",
            reason,
        };
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        for server in self.bootstrap_servers.split(',').map(str::trim) {
            let port = server
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(port))) if !host.is_empty() && port > 0 => {}
                _ => return Err(invalid(format!("{server:?} is not `host:port`"))),
            }
        }
        if self.delivery_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                setting: "KAFKA_DELIVERY_TIMEOUT",
                reason: "it must be longer than zero".to_owned(),
            });
        }
        self.security.validate()
    }

    fn base(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", format!("{}-{role}", self.client_id))
            // Back within a second of a restarted broker, not librdkafka's 10 s.
            .set("reconnect.backoff.max.ms", "1000")
            // Route librdkafka's own log lines through `tracing` at their severity.
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        self.security.apply(&mut config);
        config
    }

    fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// A producer whose acknowledged writes are durable and never duplicated by client retries.
    pub fn producer(&self, role: &str) -> ClientConfig {
        self.finish(self.producer_defaults(role))
    }

    fn producer_defaults(&self, role: &str) -> ClientConfig {
        let mut config = self.base(role);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", millis(self.delivery_timeout))
            // A few milliseconds of batching buys throughput at a latency the edge can afford.
            // Measured for the transactional hops (docs/benchmarks.md, "Faster sagas"): 1 ms
            // takes ~40 ms off an order's outcome at 20 orders/s but costs at 800/s, so 5 it
            // stays; `--kafka-property linger.ms=1` suits a deployment that is mostly idle.
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        config
    }

    /// A transactional producer (exactly-once processing); `transactional_id` must be stable
    /// across restarts of the same logical producer so that the broker fences its zombies.
    pub fn transactional_producer(&self, role: &str, transactional_id: &str) -> ClientConfig {
        let mut config = self.producer_defaults(role);
        config
            .set("transactional.id", transactional_id)
            .set("transaction.timeout.ms", millis(Self::TRANSACTION_TIMEOUT));
        self.finish(config)
    }

    /// How long the coordinator lets a transaction stay open before aborting it
    /// (`transaction.timeout.ms`, unless a `--kafka-property` overrides it). A member killed
    /// mid-transaction holds back every `read_committed` reader of the partitions it wrote
    /// (the next owner's state restore among them) until then, plus the broker's check
    /// interval (`transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10 s by
    /// default), unless it restarts under the same transactional id first. Our batches commit
    /// within milliseconds, so 10 s is ample and bounds that stall to about 20 s.
    pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);

    /// The transaction timeout in effect: [`Self::TRANSACTION_TIMEOUT`] or the override.
    pub fn transaction_timeout(&self) -> Duration {
        self.properties
            .iter()
            .rev()
            .find(|(key, _)| key == "transaction.timeout.ms")
            .and_then(|(_, value)| value.parse().ok())
            .map_or(Self::TRANSACTION_TIMEOUT, Duration::from_millis)
    }

    /// A consumer in `group_id` that sees only committed data and stores offsets only after the
    /// caller has processed a record (`enable.auto.offset.store=false`).
    pub fn consumer(&self, role: &str, group_id: &str) -> ClientConfig {
        let mut config = self.base(role);
        config
            .set("group.id", group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // A member that died without leaving (kill -9, a lost node) holds its partitions
            // until this runs out: 10 s rather than librdkafka's 45 s, so a restarted or
            // surviving member takes over quickly. Heartbeats every 3 s keep live members in.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            // What a consumer prefetches ahead of its handlers: 8 MB and 10,000 records per
            // partition rather than librdkafka's 64 MB and 100,000, so a process whose eight
            // consumers fall behind, or whose stores restore long changelogs at once, does not
            // hold hundreds of megabytes of records it has not reached yet (measured: a restart
            // of `sagashop dev` peaked 450 MB → 320 MB).
            .set("queued.max.messages.kbytes", "8192")
            .set("queued.min.messages", "10000")
            // With the queue that small, librdkafka's default 1 s pause before fetching again
            // once it is full made reading 37 times slower (raw consume 1.8 M → 49 k records/s,
            // and every restore of a long changelog with it): fetch again after 10 ms.
            .set("fetch.queue.backoff.ms", "10")
            // Incremental rebalances: a member joining or leaving moves only the partitions
            // that change owner; the others keep processing.
            .set("partition.assignment.strategy", "cooperative-sticky");
        self.finish(config)
    }

    /// An admin client configuration.
    pub fn admin(&self, role: &str) -> ClientConfig {
        let config = self.base(role);
        self.finish(config)
    }

    /// Creates an admin client.
    pub fn admin_client(&self, role: &str) -> Result<AdminClient<DefaultClientContext>, Error> {
        self.admin(role).create().map_err(|cause| Error::Client {
            what: "admin",
            cause,
        })
    }

    /// Asks the cluster for its metadata: proof the broker answers. Runs off the async executor
    /// because librdkafka's metadata call blocks.
    pub async fn probe(&self, timeout: Duration) -> Result<ClusterInfo, Error> {
        let config = self.admin("probe");
        let bootstrap = self.bootstrap_servers.clone();
        let unreachable = move |cause: KafkaError| Error::Unreachable {
            bootstrap: bootstrap.clone(),
            cause,
        };
        let context = ProbeContext::default();
        let reasons = Arc::clone(&context.reasons);
        let result = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer<ProbeContext> = config.create_with_context(context)?;
            let metadata = match consumer.fetch_metadata(None, Timeout::After(timeout)) {
                Ok(metadata) => metadata,
                Err(e) => {
                    // Serve the queued error events, so that the context hears their reasons.
                    for _ in 0..5 {
                        let _ = consumer.poll(Duration::from_millis(20));
                    }
                    return Err(e);
                }
            };
            let mut topics: Vec<_> = metadata
                .topics()
                .iter()
                .filter(|t| !t.name().starts_with("__"))
                .map(|t| (t.name().to_owned(), t.partitions().len()))
                .collect();
            topics.sort();
            Ok(ClusterInfo {
                brokers: metadata
                    .brokers()
                    .iter()
                    .map(|b| format!("{}:{}", b.host(), b.port()))
                    .collect(),
                topics,
            })
        })
        .await
        .map_err(|join| Error::Internal(format!("the metadata probe panicked: {join}")))?;
        result.map_err(|cause| {
            // A broker that answers but refuses us (TLS, SASL) is a settings problem: say so
            // with librdkafka's own reason rather than "unreachable".
            let reasons = reasons.lock().map(|r| r.clone()).unwrap_or_default();
            let refusal = reasons.iter().find(|r| {
                [
                    "SASL",
                    "SSL",
                    "ssl",
                    "authentication",
                    "Authentication",
                    "security.protocol",
                ]
                .iter()
                .any(|word| r.contains(word))
            });
            match refusal {
                Some(reason) => Error::Refused {
                    bootstrap: self.bootstrap_servers.clone(),
                    reason: reason.clone(),
                },
                None => unreachable(cause),
            }
        })
    }
}

/// Remembers the reasons librdkafka gives for failing connections.
#[derive(Default)]
struct ProbeContext {
    reasons: Arc<Mutex<Vec<String>>>,
}

impl rdkafka::ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "probe connection failed");
        if let Ok(mut reasons) = self.reasons.lock()
            && reasons.len() < 16
        {
            reasons.push(reason.to_owned());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// What [`KafkaConfig::probe`] learnt about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `host:port` of every broker.
    pub brokers: Vec<String>,
    /// Every non-internal topic and its partition count, sorted by name.
    pub topics: Vec<(String, usize)>,
}

pub(crate) fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

pub use crate::exit::EX_USAGE;

/// Prints a command-line parse error (or the help or version asked for) and returns the exit
/// code every sagashop binary uses for it: 0 for `--help` and `--version`, 64 otherwise.
pub fn usage_exit(error: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    // Printing can only fail when stdout/stderr are closed; nothing useful is left to do then.
    let _ = error.print();
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::from(EX_USAGE),
    }
}

/// How a consumer reads the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolationLevel {
    /// Only records of committed transactions (what every promise of sagashop assumes).
    #[default]
    ReadCommitted,
    /// Also records of open and aborted transactions: allowed only for at-least-once services,
    /// which then may act on writes that never happened.
    ReadUncommitted,
}

impl IsolationLevel {
    /// librdkafka's `isolation.level` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadCommitted => "read_committed",
            Self::ReadUncommitted => "read_uncommitted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(config: &'a ClientConfig, key: &str) -> Option<&'a str> {
        config.get(key)
    }

    #[test]
    fn producers_are_idempotent_and_wait_for_all_replicas() {
        let config = KafkaConfig::new("127.0.0.1:1").producer("order");
        assert_eq!(get(&config, "enable.idempotence"), Some("true"));
        assert_eq!(get(&config, "acks"), Some("all"));
        assert_eq!(get(&config, "message.timeout.ms"), Some("10000"));
        assert_eq!(get(&config, "client.id"), Some("sagashop-order"));
    }

    #[test]
    fn consumers_read_committed_and_store_offsets_by_hand() {
        let config = KafkaConfig::new("127.0.0.1:1").consumer("payment", "payment-group");
        assert_eq!(get(&config, "isolation.level"), Some("read_committed"));
        assert_eq!(get(&config, "enable.auto.offset.store"), Some("false"));
        assert_eq!(get(&config, "group.id"), Some("payment-group"));
    }

    #[test]
    fn user_properties_override_defaults() {
        let mut kafka = KafkaConfig::new("127.0.0.1:1");
        kafka.properties = vec![parse_property("linger.ms = 50").unwrap()];
        assert_eq!(get(&kafka.producer("x"), "linger.ms"), Some("50"));
        assert!(parse_property("no-equals-sign").is_err());
        assert!(parse_property("=value").is_err());
    }

    #[test]
    fn validation_names_the_setting() {
        for bad in ["", "localhost", "host:notaport", ":9092", "a:1,b"] {
            let err = KafkaConfig::new(bad).validate().unwrap_err();
            assert!(
                err.to_string().contains("KAFKA_BOOTSTRAP_SERVERS"),
                "{bad:?}: {err}"
            );
        }
        KafkaConfig::new("127.0.0.1:9092,[::1]:9093,kafka.local:9094")
            .validate()
            .unwrap();
        let zero = KafkaConfig {
            delivery_timeout: Duration::ZERO,
            ..KafkaConfig::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("KAFKA_DELIVERY_TIMEOUT")
        );
    }
}
