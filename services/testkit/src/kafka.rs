//! The real Kafka broker, as a fixture.

use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use sagashop_kit::KafkaConfig;
use sagashop_kit::admin::{TopicSpec, create_topics};

use crate::{cache_dir, unique_name};

const START_ONE: &str = "run the tests through `scripts/test`, or start a broker with `scripts/kafka up` \
     (and export the KAFKA_BOOTSTRAP_SERVERS it prints)";

/// A handle on the broker the tests run against.
#[derive(Debug, Clone)]
pub struct TestKafka {
    /// A client configuration pointing at the broker.
    pub config: KafkaConfig,
}

impl TestKafka {
    /// The broker named by `KAFKA_BOOTSTRAP_SERVERS`, or else the one `scripts/kafka up` runs.
    ///
    /// Panics when there is neither, or when the broker does not answer: an integration test
    /// never passes by skipping.
    pub async fn connect() -> Self {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .or_else(scripts_kafka_bootstrap)
            .unwrap_or_else(|| panic!("no Kafka broker for the integration tests: {START_ONE}"));
        let config = KafkaConfig::new(bootstrap);
        config
            .validate()
            .expect("KAFKA_BOOTSTRAP_SERVERS is malformed");
        if let Err(e) = config.probe(Duration::from_secs(10)).await {
            panic!("{e}\n{START_ONE}");
        }
        Self { config }
    }

    /// Creates a topic with a unique name starting with `prefix` and returns the name.
    pub async fn topic(&self, prefix: &str, partitions: i32) -> String {
        let name = unique_name(prefix);
        self.create(TopicSpec::new(&name, partitions)).await;
        name
    }

    /// Creates a topic exactly as specified.
    pub async fn create(&self, spec: TopicSpec) {
        let admin = self.config.admin_client("test").unwrap();
        create_topics(&admin, std::slice::from_ref(&spec), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("creating test topic {}: {e}", spec.name));
        sagashop_kit::admin::wait_for_leaders(
            &self.config,
            vec![spec.name.clone()],
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("test topic {} has no leader: {e}", spec.name));
    }

    /// A producer with the services' settings.
    pub fn producer(&self) -> FutureProducer {
        self.config.producer("test").create().unwrap()
    }

    /// A consumer with the services' settings in `group`.
    pub fn consumer(&self, group: &str) -> StreamConsumer {
        self.config.consumer("test", group).create().unwrap()
    }
}

/// The bootstrap address of the broker `scripts/kafka up` started, from its state directory.
fn scripts_kafka_bootstrap() -> Option<String> {
    let port = std::fs::read_to_string(cache_dir()?.join("kafka-run/port")).ok()?;
    Some(format!("127.0.0.1:{}", port.trim()))
}
