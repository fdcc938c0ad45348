//! `broker-failover`: sagashop on a cluster of three brokers, every topic with three replicas
//! and `min.insync.replicas=2` (the production profile), under load. One at a time, each
//! restarted before the next: `kill -9` of the broker leading most of the system's partitions,
//! of the orchestrator's transaction coordinator, of its group coordinator; then a rolling
//! restart (SIGTERM) of all three, as a node upgrade does. The ledger then checks every
//! promise, and each fault's row notes what it refused and the longest the edge went without
//! accepting an order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{BaseProducer, Producer};
use sagashop_kit::KafkaConfig;
use sagashop_topology::{SHIPPED_SAGA, Topology};

use crate::chaos::{ChaosArgs, Row, Scenario, conclude, step};
use crate::fleet::{Answer, Attempt, Broker};

/// How long a killed broker stays down: past the 10 s session timeout, so its groups'
/// coordinators and its partitions' leadership must move.
const DOWN: Duration = Duration::from_secs(12);
/// How long the load runs on after each fault before the next.
const BETWEEN: Duration = Duration::from_secs(6);

/// The faults of `broker-failover`, injected in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Fault {
    /// `kill -9` of the broker leading the most partitions of the system's topics.
    Leader,
    /// `kill -9` of the orchestrator's transaction coordinator.
    TransactionCoordinator,
    /// `kill -9` of the orchestrator's group coordinator.
    GroupCoordinator,
    /// SIGTERM, start and wait, broker after broker.
    Rolling,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Leader => "leader",
            Self::TransactionCoordinator => "transaction coordinator",
            Self::GroupCoordinator => "group coordinator",
            Self::Rolling => "rolling restart",
        }
    }
}

/// One injected fault and when it was in force, from the start of the load.
struct Window {
    what: String,
    from: Duration,
    to: Duration,
}

pub(crate) async fn run(
    args: &ChaosArgs,
    root: &Path,
    dir: &Path,
    prefix: &str,
) -> anyhow::Result<Row> {
    let name = Scenario::BrokerFailover.name();
    step(&format!("{name}: starting a cluster of three brokers"));
    let cluster = Broker::cluster(root, &dir.join("kafka"), None, 3)?;
    let saga = dir.join("saga.yaml");
    let yaml = replicated_saga()?;
    std::fs::write(&saga, &yaml)?;
    let topology = Topology::load(Some((&yaml, "replicated")), prefix)?;
    let topics: Vec<String> = topology.topics().into_iter().map(|t| t.0.name).collect();
    // The edge's own queue timeout (2 s): a rolling restart should refuse nothing with it.
    let saga_arg = saga.display().to_string();
    let mut dev = crate::chaos::dev(args, &cluster, dir, prefix, &["--saga", &saga_arg]).await?;
    let kafka = cluster.config();
    let mut row = Row {
        scenario: name,
        injection: format!(
            "3 brokers, 3 replicas, min.insync 2, the edge's default 2 s queue timeout; under {} \
             orders/s, in turn: {} (each `kill -9` down {DOWN:?})",
            args.rate,
            args.failover
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ..Row::default()
    };
    row.notes.extend(durability(&kafka, &topics).await?);

    let base = dev.address.clone();
    let load_started = Instant::now();
    let (done, load) = crate::fleet::steady_load(base, args.rate, args.duration);
    tokio::time::sleep(BETWEEN).await;
    let (group, _) = crate::names::orchestrator(prefix);
    let transactional_id = format!("{prefix}dev-orchestrator");
    let mut windows = Vec::new();
    for fault in &args.failover {
        let roles = Roles::read(&kafka, &topics, &group, &transactional_id).await?;
        let id = match fault {
            Fault::Leader => roles.busiest_leader,
            Fault::TransactionCoordinator => roles.transaction_coordinator,
            Fault::GroupCoordinator => roles.group_coordinator,
            Fault::Rolling => {
                windows.push(rolling(name, &cluster, load_started).await?);
                tokio::time::sleep(BETWEEN).await;
                continue;
            }
        };
        let role = fault.name();
        step(&format!("{name}: kill -9 of broker {id}, the {role}"));
        let from = load_started.elapsed();
        cluster.stop_node(id, true)?;
        tokio::time::sleep(DOWN).await;
        cluster.start_node(id)?;
        let to = load_started.elapsed();
        windows.push(Window {
            what: format!("kill -9 of the {role} (broker {id})"),
            from,
            to,
        });
        tokio::time::sleep(BETWEEN).await;
    }
    done.store(true, Ordering::SeqCst);
    let attempts = load.await?;
    for window in &windows {
        row.notes.push(window.account(&attempts));
    }
    let (mut row, _) = conclude(args, &cluster, prefix, row, &attempts, &[]).await?;
    if let Some(status) = dev.exited() {
        row.notes.push(format!(
            "BROKEN: sagashop dev exited by itself ({status}); nothing may need a restart by hand"
        ));
    }
    dev.terminate()?;
    drop(cluster);
    Ok(row)
}

/// Every broker in turn: SIGTERM, start, wait as a rolling update waits for Ready.
async fn rolling(name: &str, cluster: &Broker, load_started: Instant) -> anyhow::Result<Window> {
    step(&format!("{name}: rolling restart of every broker"));
    let from = load_started.elapsed();
    for id in 1..=cluster.brokers {
        cluster.stop_node(id, false)?;
        cluster.start_node(id)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(Window {
        what: "rolling restart (SIGTERM, start, next)".to_owned(),
        from,
        to: load_started.elapsed(),
    })
}

impl Window {
    /// What the fault cost the edge: requests refused while it was in force (and for the 5 s
    /// after), and the longest it went without accepting an order.
    fn account(&self, attempts: &[Attempt]) -> String {
        let until = self.to + Duration::from_secs(5);
        let inside: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.at >= self.from && a.at <= until)
            .collect();
        let refused = inside
            .iter()
            .filter(|a| matches!(a.answer, Answer::Unavailable))
            .count();
        let mut accepted: Vec<Duration> = inside
            .iter()
            .filter(|a| matches!(a.answer, Answer::Accepted(_)))
            .map(|a| a.at)
            .collect();
        accepted.insert(0, self.from);
        accepted.push(until);
        let stall = accepted
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or_default();
        format!(
            "{}: {refused} of {} requests refused (503), longest without a 202 {stall:.1?}",
            self.what,
            inside.len()
        )
    }
}

/// The shipped saga with three replicas per topic.
fn replicated_saga() -> anyhow::Result<String> {
    let from = "  topicDefaults:\n    partitions: 4\n    replicas: 1\n";
    anyhow::ensure!(
        SHIPPED_SAGA.contains(from),
        "the shipped saga's topicDefaults changed: update xtask/src/failover.rs"
    );
    Ok(SHIPPED_SAGA.replace(
        from,
        "  topicDefaults:\n    partitions: 4\n    replicas: 3\n",
    ))
}

/// BROKEN notes for any topic of the system not made as the production profile says.
async fn durability(kafka: &KafkaConfig, topics: &[String]) -> anyhow::Result<Vec<String>> {
    let admin = Arc::new(kafka.admin_client("chaos")?);
    let states =
        sagashop_kit::admin::describe_topics(&admin, topics, Duration::from_secs(30)).await?;
    let mut notes = Vec::new();
    for topic in topics {
        let state = states.get(topic);
        let insync = state.and_then(|s| s.config.get("min.insync.replicas"));
        if state.map(|s| s.replicas) != Some(3) || insync.map(String::as_str) != Some("2") {
            notes.push(format!(
                "BROKEN: {topic} is not 3 replicas with min.insync.replicas 2: {:?}",
                state.map(|s| (s.replicas, insync))
            ));
        }
    }
    Ok(notes)
}

/// Which broker holds what, from the cluster's metadata.
struct Roles {
    /// The broker leading the most partitions of the system's topics.
    busiest_leader: u32,
    /// The leader of the `__transaction_state` partition of the orchestrator's transactional id.
    transaction_coordinator: u32,
    /// The leader of the `__consumer_offsets` partition of the orchestrator's group.
    group_coordinator: u32,
}

impl Roles {
    async fn read(
        kafka: &KafkaConfig,
        topics: &[String],
        group: &str,
        transactional_id: &str,
    ) -> anyhow::Result<Self> {
        let client: BaseProducer = kafka.admin("chaos").create()?;
        let leaders = tokio::task::spawn_blocking(move || {
            let metadata = client
                .client()
                .fetch_metadata(None, Duration::from_secs(30))?;
            let mut leaders: HashMap<String, Vec<i32>> = HashMap::new();
            for topic in metadata.topics() {
                let mut by_partition: Vec<(i32, i32)> = topic
                    .partitions()
                    .iter()
                    .map(|p| (p.id(), p.leader()))
                    .collect();
                by_partition.sort_unstable();
                leaders.insert(
                    topic.name().to_owned(),
                    by_partition.into_iter().map(|(_, l)| l).collect(),
                );
            }
            anyhow::Ok(leaders)
        })
        .await??;
        let mut led: HashMap<i32, usize> = HashMap::new();
        for topic in topics {
            for leader in leaders.get(topic).into_iter().flatten() {
                *led.entry(*leader).or_default() += 1;
            }
        }
        let busiest = led
            .iter()
            .max_by_key(|(id, n)| (**n, -**id))
            .map(|(id, _)| *id)
            .context("the system's topics have no leaders")?;
        let coordinator = |internal: &str, key: &str| -> anyhow::Result<u32> {
            let partitions = leaders
                .get(internal)
                .with_context(|| format!("{internal} is not in the metadata yet"))?;
            let count = i32::try_from(partitions.len())?;
            let index = usize::try_from(partition_for(key, count))?;
            Ok(u32::try_from(partitions[index])?)
        };
        Ok(Self {
            busiest_leader: u32::try_from(busiest)?,
            transaction_coordinator: coordinator("__transaction_state", transactional_id)?,
            group_coordinator: coordinator("__consumer_offsets", group)?,
        })
    }
}

/// The partition of Kafka's internal topic that holds `key`'s coordinator state: Kafka's
/// `Utils.abs(key.hashCode()) % partitions`, with Java's `String.hashCode`.
fn partition_for(key: &str, partitions: i32) -> i32 {
    let hash = key
        .encode_utf16()
        .fold(0_i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (hash & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinator_partitions_follow_javas_string_hash() {
        // jshell: "orchestrator".hashCode() == -474222454; & 0x7fffffff == 1673261194.
        assert_eq!(partition_for("orchestrator", 10), 1_673_261_194 % 10);
        assert_eq!(partition_for("orchestrator", 50), 1_673_261_194 % 50);
        // "" hashes to 0; "a" to 97.
        assert_eq!(partition_for("", 50), 0);
        assert_eq!(partition_for("a", 50), 97 % 50);
    }

    #[test]
    fn a_window_counts_its_refusals_and_its_longest_gap_between_acceptances() {
        let at = |s: u64, answer| Attempt {
            at: Duration::from_secs(s),
            answer,
            sent: None,
        };
        let attempts = [
            at(1, Answer::Accepted("a".into())),
            at(10, Answer::Accepted("b".into())),
            at(11, Answer::Unavailable),
            at(12, Answer::Unavailable),
            at(19, Answer::Accepted("c".into())),
            at(40, Answer::Unavailable),
        ];
        let window = Window {
            what: "a fault".into(),
            from: Duration::from_secs(10),
            to: Duration::from_secs(20),
        };
        assert_eq!(
            window.account(&attempts),
            "a fault: 2 of 4 requests refused (503), longest without a 202 9.0s"
        );
    }
}
