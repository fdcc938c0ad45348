//! The retry topic: a record that keeps failing transiently is parked there and re-consumed
//! when due, so that a slow dependency does not hold its partition for minutes.
//!
//! When in-place retries run out, the processor republishes the record to the retry topic with
//! the same key and payload, its original headers and `retry-*` headers saying which attempt
//! this is, when it may run again (`retry-not-before`, Unix milliseconds) and where it came
//! from. The processor consumes the retry topic like any other; a record that is not yet due
//! waits in its own key's queue, so other keys keep flowing. After `redeliveries` parkings the
//! record goes to the dead-letter topic.
//!
//! **Per-key order.** Parking a record would let later records of its key overtake it. The
//! runtime prevents that: while a key has records on the retry topic ("the key is parked"),
//! every later record of that key is parked behind them at once (`retry-attempt: 0`, due
//! immediately), and because they share the key they share a retry-topic partition and run in
//! order after it. If the first record fails again and is parked once more, it lands *after*
//! the records queued behind it; the runtime remembers that new position (the key's `head`)
//! and re-parks every earlier retry-topic record of the key behind it again, so the original
//! order is restored. Which keys are parked is kept in a [`Store`] (a compacted topic), so the
//! order also holds across restarts. Keyless records have no order to keep and are parked
//! alone.

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::record::Outgoing;
use crate::record::Record;
use crate::retry::RetryPolicy;
use crate::store::Store;

/// Header names on a parked record.
pub mod header {
    /// How many times the record was parked after failing (`0`: it never failed, it waits
    /// behind an earlier record of its key).
    pub const ATTEMPT: &str = "retry-attempt";
    /// When it may be handled again, in Unix milliseconds.
    pub const NOT_BEFORE: &str = "retry-not-before";
    /// The topic it was first consumed from (and is routed as).
    pub const ORIGINAL_TOPIC: &str = "retry-original-topic";
    /// Its partition there.
    pub const ORIGINAL_PARTITION: &str = "retry-original-partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "retry-original-offset";
    /// The error that parked it, if it failed.
    pub const ERROR: &str = "retry-error";
}

/// A processor's retry topic and how often a record may go through it.
#[derive(Debug, Clone)]
pub struct RetryTopic {
    /// The topic records are parked on; give it as many partitions as the topics it serves.
    pub topic: String,
    /// How many times a record may be parked before it is dead-lettered (per handler, see
    /// [`crate::router::FailurePolicy`]).
    pub redeliveries: u32,
    /// The wait before the n-th redelivery: `delay.backoff(n)`.
    pub delay: RetryPolicy,
    parked: Store<Parked>,
    guard: Arc<Mutex<()>>,
}

/// What the runtime remembers about a parked key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// Records of the key on the retry topic that are not finished.
    pub waiting: u32,
    /// The retry-topic offset the key's failing record was parked at again; the key's
    /// retry-topic records before it are parked behind it once more.
    pub head: Option<i64>,
}

impl RetryTopic {
    /// Parks on `topic`, remembering parked keys in `parked` (open it on a compacted topic).
    /// Three redeliveries, waiting about 1 s, 2 s, 4 s … up to a minute.
    pub fn new(topic: impl Into<String>, parked: Store<Parked>) -> Self {
        Self {
            topic: topic.into(),
            redeliveries: 3,
            delay: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: std::time::Duration::from_secs(1),
                max_backoff: std::time::Duration::from_secs(60),
            },
            parked,
            guard: Arc::default(),
        }
    }

    /// The store of parked keys (the processor reloads it with its other stores).
    pub fn store(&self) -> &Store<Parked> {
        &self.parked
    }

    fn update<T>(&self, key: &str, change: impl FnOnce(&mut Parked) -> T) -> (T, Option<Outgoing>) {
        let _held = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.parked.get(key).unwrap_or_default();
        let mut after = before.clone();
        let answer = change(&mut after);
        if after == before {
            return (answer, None);
        }
        let record = if after == Parked::default() {
            Some(self.parked.delete(key))
        } else {
            // Encoding two integers cannot fail; if it somehow did, memory still holds the
            // change and only a restart could lose it.
            self.parked.put(key, after).ok()
        };
        (answer, record)
    }

    /// If `key` is parked, counts one more record waiting behind it and returns the state
    /// change to publish; `None` when the key is not parked.
    pub(crate) fn join_if_parked(&self, key: &str) -> Option<Option<Outgoing>> {
        let (joined, record) = self.update(key, |p| {
            if p.waiting == 0 {
                return false;
            }
            p.waiting += 1;
            true
        });
        joined.then_some(record)
    }

    /// Counts one more record of `key` on the retry topic.
    pub(crate) fn add(&self, key: &str) -> Option<Outgoing> {
        self.update(key, |p| p.waiting += 1).1
    }

    /// One record of `key` left the retry topic for good.
    pub(crate) fn finished(&self, key: &str) -> Option<Outgoing> {
        self.update(key, |p| {
            p.waiting = p.waiting.saturating_sub(1);
            if p.waiting == 0 {
                p.head = None;
            }
        })
        .1
    }

    /// The key's failing record was parked again at `offset`.
    pub(crate) fn moved_head(&self, key: &str, offset: i64) -> Option<Outgoing> {
        self.update(key, |p| p.head = Some(offset)).1
    }

    /// Whether the retry-topic record at `offset` must go behind the key's moved head again;
    /// reaching the head clears it.
    pub(crate) fn behind_head(&self, key: &str, offset: i64) -> (bool, Option<Outgoing>) {
        self.update(key, |p| match p.head {
            Some(head) if offset < head => true,
            Some(_) => {
                p.head = None;
                false
            }
            None => false,
        })
    }
}

/// The store key of a record's ordering key: its original topic and key bytes (hex).
pub(crate) fn park_key(topic: &str, key: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(topic.len() + 1 + key.len() * 2);
    out.push_str(topic);
    out.push('/');
    for byte in key {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A record consumed from the retry topic, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unparked {
    /// The record as first consumed: original topic, partition, offset and headers.
    pub(crate) original: Record,
    /// How often it was parked after failing.
    pub(crate) attempt: u32,
    /// When it is due, in Unix milliseconds.
    pub(crate) not_before: i64,
}

/// Parks `original` on the retry topic as attempt `attempt`, due at `not_before` (Unix ms).
pub(crate) fn park(
    original: &Record,
    topic: &str,
    attempt: u32,
    not_before: i64,
    error: Option<&str>,
) -> Outgoing {
    let mut headers: Vec<(String, Vec<u8>)> = original
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("retry-"))
        .map(|(name, value)| (name.clone(), value.clone().unwrap_or_default()))
        .collect();
    let mut add = |name: &str, value: String| headers.push((name.to_owned(), value.into_bytes()));
    add(header::ATTEMPT, attempt.to_string());
    add(header::NOT_BEFORE, not_before.to_string());
    add(header::ORIGINAL_TOPIC, original.topic.clone());
    add(header::ORIGINAL_PARTITION, original.partition.to_string());
    add(header::ORIGINAL_OFFSET, original.offset.to_string());
    if let Some(error) = error {
        add(header::ERROR, error.to_owned());
    }
    Outgoing {
        topic: topic.to_owned(),
        key: original.key.clone(),
        partition: None,
        payload: original.payload.clone(),
        headers,
    }
}

/// Reads a retry-topic record back; the error names the missing or unreadable header.
pub(crate) fn unpark(record: &Record) -> Result<Unparked, String> {
    let text = |name: &str| -> Result<String, String> {
        let value = record
            .headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .ok_or_else(|| format!("the retry-topic record has no `{name}` header"))?;
        String::from_utf8(value.to_vec()).map_err(|_| format!("header `{name}` is not UTF-8"))
    };
    let number = |name: &str| -> Result<i64, String> {
        text(name)?
            .parse()
            .map_err(|e| format!("header `{name}` is not a number: {e}"))
    };
    let attempt = u32::try_from(number(header::ATTEMPT)?)
        .map_err(|_| format!("header `{}` is out of range", header::ATTEMPT))?;
    let partition = i32::try_from(number(header::ORIGINAL_PARTITION)?)
        .map_err(|_| format!("header `{}` is out of range", header::ORIGINAL_PARTITION))?;
    Ok(Unparked {
        original: Record {
            topic: text(header::ORIGINAL_TOPIC)?,
            partition,
            offset: number(header::ORIGINAL_OFFSET)?,
            key: record.key.clone(),
            payload: record.payload.clone(),
            headers: record
                .headers
                .iter()
                .filter(|(name, _)| !name.starts_with("retry-"))
                .cloned()
                .collect(),
            timestamp: record.timestamp,
        },
        attempt,
        not_before: number(header::NOT_BEFORE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            topic: "orders.v1".into(),
            partition: 2,
            offset: 41,
            key: Some(b"order-1".to_vec()),
            payload: Some(b"{}".to_vec()),
            headers: vec![("event-type".into(), Some(b"OrderPlaced".to_vec()))],
            timestamp: None,
        }
    }

    #[test]
    fn a_parked_record_reads_back_as_the_original() {
        let parked = park(
            &record(),
            "svc.retry.v1",
            2,
            1_700_000_000_000,
            Some("timeout"),
        );
        assert_eq!(parked.key, record().key);
        let consumed = Record {
            topic: parked.topic.clone(),
            partition: 0,
            offset: 7,
            key: parked.key.clone(),
            payload: parked.payload.clone(),
            headers: parked
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            timestamp: None,
        };
        let back = unpark(&consumed).unwrap();
        assert_eq!(back.original, record());
        assert_eq!(back.attempt, 2);
        assert_eq!(back.not_before, 1_700_000_000_000);
    }

    #[test]
    fn parking_again_replaces_the_retry_headers() {
        let first = park(&record(), "r", 1, 10, Some("a"));
        let mut again = record();
        again.headers = first
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        let second = park(&again, "r", 2, 20, None);
        let attempts = second
            .headers
            .iter()
            .filter(|(k, _)| k == header::ATTEMPT)
            .count();
        assert_eq!(attempts, 1);
        assert!(!second.headers.iter().any(|(k, _)| k == header::ERROR));
    }

    #[test]
    fn a_record_without_retry_headers_is_refused_by_name() {
        let error = unpark(&record()).unwrap_err();
        assert!(error.contains("retry-attempt"), "{error}");
    }

    #[test]
    fn park_keys_separate_topics_and_encode_any_bytes() {
        assert_eq!(park_key("a.v1", &[0, 255, b'k']), "a.v1/00ff6b");
        assert_ne!(park_key("a", b"k"), park_key("b", b"k"));
    }
}
