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

/// A broker of the test's own (`scripts/kafka` in a state directory of its own), which it may
/// stop and start, never the shared one. Deleted with its data when dropped.
#[derive(Debug)]
pub struct OwnBroker {
    run_dir: std::path::PathBuf,
    /// Clients' view of it.
    pub kafka: TestKafka,
}

impl OwnBroker {
    /// Starts it (a few seconds; the jars are the shared broker's).
    pub fn up() -> Self {
        let run_dir = std::env::temp_dir().join(unique_name("own-kafka"));
        let stdout = Self::script(&run_dir, &["up"]);
        let bootstrap = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("KAFKA_BOOTSTRAP_SERVERS="))
            .unwrap_or_else(|| panic!("scripts/kafka up printed no address: {stdout}"))
            .to_owned();
        Self {
            run_dir,
            kafka: TestKafka {
                config: KafkaConfig::new(bootstrap),
            },
        }
    }

    /// Stops it, keeping its data and port: SIGKILL when `kill`, else a clean shutdown.
    pub fn stop(&self, kill: bool) {
        let args: &[&str] = if kill { &["stop", "--kill"] } else { &["stop"] };
        Self::script(&self.run_dir, args);
    }

    /// Starts it again on the same data and port.
    pub fn start(&self) {
        Self::script(&self.run_dir, &["start"]);
    }

    fn script(run_dir: &std::path::Path, args: &[&str]) -> String {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka");
        let output = std::process::Command::new(script)
            .args(args)
            .env("KAFKA_RUN_DIR", run_dir)
            .env("KAFKA_HEAP", "512m")
            .env_remove("KAFKA_PODS_ADDRESS")
            .output()
            .expect("running scripts/kafka");
        assert!(
            output.status.success(),
            "scripts/kafka {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka");
        let _ = std::process::Command::new(script)
            .arg("down")
            .env("KAFKA_RUN_DIR", &self.run_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}
