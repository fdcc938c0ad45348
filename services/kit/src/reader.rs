//! Reading a topic from its start to its current end, outside any consumer group: how the
//! dead-letter tools list records and how state stores restore from their changelogs.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

use crate::error::Error;
use crate::kafka::KafkaConfig;
use crate::record::Record;

/// Reads every committed record of `topic` that exists now, sorted by partition and offset.
///
/// Bounded: each partition is read up to its last stable offset seen at the start, so records
/// written meanwhile, and transactions still open, are left for the next call. Joins no group
/// and commits nothing. A producer's `commit_transaction` returns before the broker has written
/// the commit markers, so a transaction committed a moment ago may not be visible yet: where
/// every writer is known to be idle, [`read_settled`] waits for them.
pub async fn read_to_end(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, Error> {
    collect(read(kafka, role, topic, None, timeout, Vec::new(), push).await?)
}

fn push(records: &mut Vec<Record>, record: Record) -> Result<(), Error> {
    records.push(record);
    Ok(())
}

fn collect(mut records: Vec<Record>) -> Result<Vec<Record>, Error> {
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// What [`fold_to_end`] and [`fold_partitions`] do with each record, in offset order per
/// partition (partitions interleaved): folds it into the state.
pub type Fold<S> = fn(&mut S, Record) -> Result<(), Error>;

/// Like [`read_to_end`], folding each record into `state` as it arrives instead of keeping
/// them: a restore's memory is then its state, not its changelog.
pub async fn fold_to_end<S: Send + 'static>(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    timeout: Duration,
    state: S,
    fold: Fold<S>,
) -> Result<S, Error> {
    read(kafka, role, topic, None, timeout, state, fold).await
}

/// Like [`read_partitions`], folding each record into `state` as it arrives.
pub async fn fold_partitions<S: Send + 'static>(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
    state: S,
    fold: Fold<S>,
) -> Result<S, Error> {
    if partitions.is_empty() {
        return Ok(state);
    }
    read(
        kafka,
        role,
        topic,
        Some(partitions.to_vec()),
        timeout,
        state,
        fold,
    )
    .await
}

/// Reads every committed record of `partitions` of `topic`, up to each partition's high
/// watermark seen at the start, sorted by partition and offset: a transaction still open there
/// is waited for (until it commits, aborts or times out), so what it commits is not missed.
/// How an owned state store restores the partitions its processor was just assigned, while the
/// previous owner may still be finishing its last transaction.
pub async fn read_partitions(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<Record>, Error> {
    collect(fold_partitions(kafka, role, topic, partitions, timeout, Vec::new(), push).await?)
}

/// Reads `topic` (all partitions, up to their last stable offsets; or `only` these, up to their
/// high watermarks) with a `read_committed` consumer, folding each record into `state`.
async fn read<S: Send + 'static>(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    only: Option<Vec<i32>>,
    timeout: Duration,
    mut state: S,
    fold: Fold<S>,
) -> Result<S, Error> {
    let config = reader_config(kafka, role);
    let mut everything = config.clone();
    everything.set("isolation.level", "read_uncommitted");
    let name = topic.to_owned();
    let topic = topic.to_owned();
    let reading = tokio::task::spawn_blocking(move || -> Result<S, Error> {
        let consumer: BaseConsumer = config.create().map_err(client)?;
        let deadline = Instant::now() + timeout;
        let (assignment, ends) = plan(&consumer, &everything, &topic, only, timeout, deadline)?;
        if ends.is_empty() {
            return Ok(state);
        }
        consumer.assign(&assignment).map_err(client)?;
        // Done when every partition's position (the next offset to read) reached the end seen at
        // the start. Positions also move past transaction markers, which are never delivered.
        let done = |consumer: &BaseConsumer| -> Result<bool, Error> {
            let positions = consumer.position().map_err(client)?;
            Ok(ends.iter().all(|(partition, high)| {
                matches!(
                    positions.find_partition(&topic, *partition).map(|p| p.offset()),
                    Some(Offset::Offset(position)) if position >= *high
                )
            }))
        };
        while !done(&consumer)? {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Internal(format!(
                    "reading `{topic}` took longer than {timeout:?} (a transaction that a killed \
                     writer left open holds readers back until the broker aborts it)"
                )));
            }
            if let Some(message) = consumer.poll(left.min(Duration::from_millis(200))) {
                let message = message.map_err(client)?;
                let beyond_start = ends
                    .iter()
                    .any(|(p, high)| *p == message.partition() && message.offset() >= *high);
                if !beyond_start {
                    fold(&mut state, Record::from_message(&message))?;
                }
            }
        }
        Ok(state)
    });
    reading
        .await
        .map_err(|e| Error::Internal(format!("the reader of `{name}` panicked: {e}")))?
}

/// What to read of `topic`: every partition that holds records, from its low watermark to the
/// end seen now (its last stable offset; or, for `only` these partitions, its high watermark,
/// asked of the `read_uncommitted` consumer `everything` would create).
fn plan(
    consumer: &BaseConsumer,
    everything: &ClientConfig,
    topic: &str,
    only: Option<Vec<i32>>,
    timeout: Duration,
    deadline: Instant,
) -> Result<(TopicPartitionList, Vec<(i32, i64)>), Error> {
    let (partitions, ends_at) = match only {
        None => (partitions(consumer, topic, timeout, deadline)?, None),
        Some(only) => {
            let uncommitted: BaseConsumer = everything.create().map_err(client)?;
            let known = partitions(&uncommitted, topic, timeout, deadline)?;
            if let Some(missing) = only.iter().find(|p| !known.contains(p)) {
                return Err(Error::InvalidConfig {
                    setting: "partitions",
                    reason: format!(
                        "`{topic}` has {} partitions, so no partition {missing}: a state \
                         store's changelog needs as many partitions as its processor's input",
                        known.len()
                    ),
                });
            }
            (only, Some(uncommitted))
        }
    };
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in partitions {
        let (low, high) = watermarks(consumer, topic, partition, timeout, deadline)?;
        let high = match &ends_at {
            Some(uncommitted) => watermarks(uncommitted, topic, partition, timeout, deadline)?.1,
            None => high,
        };
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(low))
                .map_err(client)?;
            ends.push((partition, high));
        }
    }
    Ok((assignment, ends))
}

/// Like [`read_to_end`], after waiting until no transaction is open on `topic`: every partition's
/// last stable offset has caught up with its high watermark.
///
/// For readers that must see everything a writer has committed, such as a check after a load run
/// or right after a `202 Accepted`: `commit_transaction` returns before the broker has written the
/// commit markers, and until it has, `read_to_end` stops short of those records. A writer that
/// keeps a transaction open makes this wait; past `timeout` it is an error that names the
/// partition still unsettled.
pub async fn read_settled(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, Error> {
    let started = Instant::now();
    let committed = reader_config(kafka, role);
    let mut everything = committed.clone();
    everything.set("isolation.level", "read_uncommitted");
    let name = topic.to_owned();
    let topic = topic.to_owned();
    let settling = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let committed: BaseConsumer = committed.create().map_err(client)?;
        let everything: BaseConsumer = everything.create().map_err(client)?;
        let deadline = Instant::now() + timeout;
        let partitions = partitions(&committed, &topic, timeout, deadline)?;
        loop {
            let mut open = None;
            for &partition in &partitions {
                // Watermark queries follow the consumer's isolation level: the high end is the
                // last stable offset for one, the high watermark for the other.
                let (_, stable) = watermarks(&committed, &topic, partition, timeout, deadline)?;
                let (_, written) = watermarks(&everything, &topic, partition, timeout, deadline)?;
                if stable < written {
                    open = Some((partition, stable, written));
                    break;
                }
            }
            let Some((partition, stable, written)) = open else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "`{topic}` partition {partition} still has a transaction open after \
                     {timeout:?}: stable up to offset {stable}, written up to {written}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    settling
        .await
        .map_err(|e| Error::Internal(format!("the reader of `{name}` panicked: {e}")))??;
    read_to_end(
        kafka,
        role,
        &name,
        timeout.saturating_sub(started.elapsed()),
    )
    .await
}

/// The partitions of `topic`, waiting for a topic created a moment ago to get its leaders.
fn partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
    deadline: Instant,
) -> Result<Vec<i32>, Error> {
    let partitions: Vec<i32> = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(client)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            break Vec::new();
        };
        match found.error().map(RDKafkaErrorCode::from) {
            None => break found.partitions().iter().map(|p| p.id()).collect(),
            Some(RDKafkaErrorCode::LeaderNotAvailable) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(_) => break Vec::new(),
        }
    };
    if partitions.is_empty() {
        return Err(Error::missing_topic(topic));
    }
    Ok(partitions)
}

/// How long a service starting up waits for a topic that does not exist yet: in a fresh
/// install the operator makes the topics while the services start.
pub const TOPIC_WAIT: Duration = Duration::from_secs(120);

/// Like [`partitions`], waiting up to [`TOPIC_WAIT`] for a topic that does not exist yet.
fn partitions_once_made(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, Error> {
    let until = Instant::now() + TOPIC_WAIT;
    let mut told = false;
    loop {
        match partitions(consumer, topic, timeout, Instant::now() + timeout) {
            Err(e) if e.is_missing_topic() && Instant::now() < until => {
                if !told {
                    tracing::warn!(%topic, "the topic does not exist yet; waiting for it (the operator makes it)");
                    told = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// The low and high watermarks of one partition (the high one as the consumer's isolation level
/// sees it), waiting out a leader that is still being elected.
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
    deadline: Instant,
) -> Result<(i64, i64), Error> {
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(e) if settling(&e, deadline) => std::thread::sleep(Duration::from_millis(100)),
            other => {
                return other.map_err(client);
            }
        }
    }
}

/// Whether `e` says a partition's leader is still being elected (a topic created a moment ago,
/// a broker that just restarted), and there is time left to wait for it.
fn settling(e: &KafkaError, deadline: Instant) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownLeaderEpoch
        )
    ) && Instant::now() < deadline
}

/// Follows every partition of `topic` from its first record, committed records only, handing
/// each to `apply` in offset order per partition, until `shutdown`: it starts reading at once,
/// on a blocking thread, and the future returned ends when it stops. It joins no group and
/// commits nothing: every follower sees the whole topic (a read model of a compacted topic that
/// each replica keeps whole). `caught_up` is called once, when every partition has been read up
/// to the end it had at the start. A topic that is missing or has no leaders yet is waited for;
/// a consumer error is logged and reading goes on.
pub fn follow(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    shutdown: tokio_util::sync::CancellationToken,
    mut apply: impl FnMut(Record) + Send + 'static,
    caught_up: impl FnOnce() + Send + 'static,
) -> impl Future<Output = Result<(), Error>> + Send + 'static {
    let config = reader_config(kafka, role);
    let topic = topic.to_owned();
    let timeout = Duration::from_secs(30);
    let reading = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let consumer: BaseConsumer = config.create().map_err(client)?;
        // Every partition from its start, and where each ended when we began. A topic that
        // does not exist yet (the operator has not made it) is waited for, not an error.
        let start = || -> Result<(TopicPartitionList, Vec<(i32, i64)>), Error> {
            let deadline = Instant::now() + timeout;
            let mut assignment = TopicPartitionList::new();
            let mut ends = Vec::new();
            for partition in partitions(&consumer, &topic, timeout, deadline)? {
                let (_, high) = watermarks(&consumer, &topic, partition, timeout, deadline)?;
                assignment
                    .add_partition_offset(&topic, partition, Offset::Beginning)
                    .map_err(client)?;
                ends.push((partition, high));
            }
            Ok((assignment, ends))
        };
        let mut told = false;
        let (assignment, ends) = loop {
            match start() {
                Ok(started) => break started,
                Err(_) if shutdown.is_cancelled() => return Ok(()),
                Err(e) if told => {
                    tracing::debug!(%topic, error = %e, "following: cannot read the topic yet; trying again");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "following: cannot read the topic yet; trying again every second");
                    told = true;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        if told {
            tracing::info!(%topic, "following: the topic can be read now");
        }
        consumer.assign(&assignment).map_err(client)?;
        let mut caught_up = Some(caught_up);
        while !shutdown.is_cancelled() {
            if caught_up.is_some() {
                let positions = consumer.position().map_err(client)?;
                let done = ends.iter().all(|(partition, high)| {
                    *high == 0
                        || matches!(
                            positions.find_partition(&topic, *partition).map(|p| p.offset()),
                            Some(Offset::Offset(position)) if position >= *high
                        )
                });
                if done && let Some(signal) = caught_up.take() {
                    signal();
                }
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => apply(Record::from_message(&message)),
                Some(Err(e)) => {
                    tracing::warn!(%topic, error = %e, "following: consumer error; continuing");
                    std::thread::sleep(Duration::from_millis(100));
                }
                None => {}
            }
        }
        Ok(())
    });
    async move {
        reading
            .await
            .map_err(|e| Error::Internal(format!("a follower panicked: {e}")))?
    }
}

/// A `read_committed` consumer outside any group's offsets: it joins no group and commits nothing.
fn reader_config(kafka: &KafkaConfig, role: &str) -> ClientConfig {
    let mut config = kafka.consumer(role, &format!("sagashop-{role}"));
    config.set("enable.auto.commit", "false");
    config
}

/// A consumer call that failed, as the kit's error.
fn client(cause: KafkaError) -> Error {
    Error::Client {
        what: "consumer",
        cause,
    }
}

/// Commits, for the new consumer group `group`, the first offset of every partition of `topics`
/// whose record is no older than `since` (Unix milliseconds; a partition with none starts at its
/// end). A group that then joins reads only what was written since: how a read model rebuilt at
/// start skips history it would forget at once.
pub async fn start_group_at(
    kafka: &KafkaConfig,
    group: &str,
    topics: &[String],
    since: i64,
    timeout: Duration,
) -> Result<(), Error> {
    let mut config = kafka.consumer(group, group);
    config.set("enable.auto.commit", "false");
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let consumer: BaseConsumer = config.create().map_err(client)?;
        let mut wanted = TopicPartitionList::new();
        for topic in &topics {
            for partition in partitions_once_made(&consumer, topic, timeout)? {
                wanted
                    .add_partition_offset(topic, partition, Offset::Offset(since))
                    .map_err(client)?;
            }
        }
        let deadline = Instant::now() + timeout;
        let found = loop {
            match consumer.offsets_for_times(wanted.clone(), timeout) {
                Err(e) if settling(&e, deadline) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => break other.map_err(client)?,
            }
        };
        let mut start = TopicPartitionList::new();
        for element in found.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let offset = match element.offset() {
                Offset::Offset(offset) => offset,
                // Nothing that recent: start after the last record.
                _ => watermarks(&consumer, topic, partition, timeout, deadline)?.1,
            };
            start
                .add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(client)?;
        }
        consumer
            .commit(&start, rdkafka::consumer::CommitMode::Sync)
            .map_err(client)
    })
    .await
    .map_err(|e| Error::Internal(format!("positioning group `{group}` panicked: {e}")))?
}
