//! Dead letters: a record the runtime gave up on, kept with everything needed to understand and
//! replay it — the original key, bytes and headers, plus where it came from and why it failed.

use crate::publisher::Outgoing;
use crate::router::Record;

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
        payload: record.payload.clone().unwrap_or_default(),
        headers,
    }
}
