//! Dead letters: a record the runtime gave up on, kept with everything needed to understand and
//! replay it — the original key, bytes and headers, plus where it came from and why it failed.
//!
//! [`dead_letter`] builds one; [`read_dead_letters`] reads a dead-letter topic back (what
//! `sagashop dlq list|show` print) and [`DeadLetter::replay`] turns one into the original record
//! again (what `sagashop dlq replay` publishes).

use std::time::Duration;

use crate::error::Error;
use crate::kafka::KafkaConfig;
use crate::publisher::Publisher;
use crate::reader::read_to_end;
use crate::record::Outgoing;
use crate::record::Record;
use crate::store::Reload;

/// Header names the runtime adds to a dead letter.
pub mod header {
    /// The topic the record was consumed from.
    pub const ORIGINAL_TOPIC: &str = "dlq-original-topic";
    /// Its partition.
    pub const ORIGINAL_PARTITION: &str = "dlq-original-partition";
    /// Its offset.
    pub const ORIGINAL_OFFSET: &str = "dlq-original-offset";
    /// The last error, in words.
    pub const ERROR: &str = "dlq-error";
    /// How many times a handler was tried (0 when the record could not even be decoded).
    pub const ATTEMPTS: &str = "dlq-attempts";
    /// When the runtime gave up (RFC 3339, UTC).
    pub const FAILED_AT: &str = "dlq-failed-at";
    /// The consumer group that gave up.
    pub const CONSUMER_GROUP: &str = "dlq-consumer-group";
}

/// Dead-letters the changelog records `store`'s restores quarantined since the last call
/// ([`crate::Store::take_quarantined`]) to `topic` in the name of `group`, so their bytes and
/// place are where people look (`sagashop dlq list`). Published outside any transaction; a
/// failed publish is logged, and the record, still in its changelog, is quarantined again by
/// the next restore.
pub async fn dead_letter_quarantined(
    store: &dyn Reload,
    publisher: &Publisher,
    topic: &str,
    group: &str,
) {
    let letters: Vec<Outgoing> = store
        .take_quarantined()
        .iter()
        .map(|(record, why)| {
            let error = format!("unreadable changelog record, quarantined on restore: {why}");
            dead_letter(record, topic, group, &error, 0)
        })
        .collect();
    if letters.is_empty() {
        return;
    }
    if let Err(e) = publisher.send_all(&letters).await {
        tracing::warn!(error = %e, letters = letters.len(), "could not dead-letter quarantined changelog records");
    }
}

/// The dead letter for `record`: original key, payload and headers, then the `dlq-*` headers.
pub fn dead_letter(
    record: &Record,
    topic: &str,
    group: &str,
    error: &str,
    attempts: u32,
) -> Outgoing {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("dlq-"))
        .map(|(name, value)| (name.clone(), value.clone().unwrap_or_default()))
        .collect();
    for (name, value) in [
        (header::ORIGINAL_TOPIC, record.topic.clone()),
        (header::ORIGINAL_PARTITION, record.partition.to_string()),
        (header::ORIGINAL_OFFSET, record.offset.to_string()),
        (header::ERROR, error.to_owned()),
        (header::ATTEMPTS, attempts.to_string()),
        (
            header::FAILED_AT,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
        (header::CONSUMER_GROUP, group.to_owned()),
    ] {
        headers.push((name.to_owned(), value.into_bytes()));
    }
    Outgoing {
        topic: topic.to_owned(),
        key: record.key.clone(),
        partition: None,
        payload: record.payload.clone(),
        headers,
    }
}

/// A record read back from a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead letter itself: its partition, offset, key, bytes and every header.
    pub record: Record,
}

impl DeadLetter {
    /// The value of a header as text, if present and UTF-8 (the last one wins).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.record
            .headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The topic the record was consumed from.
    pub fn original_topic(&self) -> Option<&str> {
        self.header(header::ORIGINAL_TOPIC)
    }

    /// The original record, bound for `to` (default: the topic it came from), without the
    /// `dlq-*` headers: key, bytes and the other headers as they were.
    pub fn replay(&self, to: Option<&str>) -> Result<Outgoing, Error> {
        let topic = to
            .or_else(|| self.original_topic())
            .ok_or_else(|| Error::InvalidConfig {
                setting: "--to",
                reason: format!(
                    "dead letter at offset {} has no {} header: name the topic to replay to",
                    self.record.offset,
                    header::ORIGINAL_TOPIC
                ),
            })?;
        Ok(Outgoing {
            topic: topic.to_owned(),
            key: self.record.key.clone(),
            partition: None,
            payload: self.record.payload.clone(),
            headers: self
                .record
                .headers
                .iter()
                .filter(|(name, _)| !name.starts_with("dlq-"))
                .map(|(name, value)| (name.clone(), value.clone().unwrap_or_default()))
                .collect(),
        })
    }
}

/// Reads every record of the dead-letter `topic` that exists now (see [`read_to_end`]).
pub async fn read_dead_letters(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<DeadLetter>, Error> {
    let records = read_to_end(kafka, "dlq-reader", topic, timeout).await?;
    Ok(records
        .into_iter()
        .map(|record| DeadLetter { record })
        .collect())
}
