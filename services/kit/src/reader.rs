//! Reading a topic from its start to its current end, outside any consumer group: how the
//! dead-letter tools list records and how state stores restore from their changelogs.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::router::Record;
use crate::{Error, KafkaConfig};

/// Reads every committed record of `topic` that exists now, sorted by partition and offset.
///
/// Bounded: each partition is read up to the high watermark seen at the start, so records
/// written meanwhile are left for the next call. Joins no group and commits nothing.
pub async fn read_to_end(
    kafka: &KafkaConfig,
    role: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, Error> {
    let mut config = kafka.consumer(role, &format!("sagashop-{role}"));
    config.set("enable.auto.commit", "false");
    let name = topic.to_owned();
    let topic = topic.to_owned();
    let reading = tokio::task::spawn_blocking(move || -> Result<Vec<Record>, Error> {
        let client = |cause| Error::Client {
            what: "consumer",
            cause,
        };
        let consumer: BaseConsumer = config.create().map_err(client)?;
        let deadline = std::time::Instant::now() + timeout;
        // A topic created a moment ago may not have partition leaders yet: wait for them.
        let settling = |e: &KafkaError| {
            matches!(
                e.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::NotLeaderForPartition
                        | RDKafkaErrorCode::LeaderNotAvailable
                        | RDKafkaErrorCode::UnknownLeaderEpoch
                )
            ) && std::time::Instant::now() < deadline
        };
        let partitions: Vec<i32> = loop {
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(client)?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                break Vec::new();
            };
            match found.error().map(RDKafkaErrorCode::from) {
                None => break found.partitions().iter().map(|p| p.id()).collect(),
                Some(RDKafkaErrorCode::LeaderNotAvailable)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(_) => break Vec::new(),
            }
        };
        if partitions.is_empty() {
            return Err(Error::InvalidConfig {
                setting: "--topic",
                reason: format!("topic `{topic}` does not exist"),
            });
        }
        let mut assignment = TopicPartitionList::new();
        let mut ends = Vec::new();
        for partition in partitions {
            let (low, high) = loop {
                match consumer.fetch_watermarks(&topic, partition, timeout) {
                    Err(e) if settling(&e) => std::thread::sleep(Duration::from_millis(100)),
                    other => break other.map_err(client)?,
                }
            };
            if high > low {
                assignment
                    .add_partition_offset(&topic, partition, Offset::Offset(low))
                    .map_err(client)?;
                ends.push((partition, high));
            }
        }
        let mut records = Vec::new();
        if ends.is_empty() {
            return Ok(records);
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
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Internal(format!(
                    "reading `{topic}` took longer than {timeout:?}"
                )));
            }
            if let Some(message) = consumer.poll(left.min(Duration::from_millis(200))) {
                let message = message.map_err(client)?;
                let beyond_start = ends
                    .iter()
                    .any(|(p, high)| *p == message.partition() && message.offset() >= *high);
                if !beyond_start {
                    records.push(Record::from_message(&message));
                }
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    });
    reading
        .await
        .map_err(|e| Error::Internal(format!("the reader of `{name}` panicked: {e}")))?
}
