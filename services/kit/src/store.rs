//! Keyed state backed by a compacted changelog topic: the service's memory, rebuilt from Kafka.
//!
//! A [`Store`] keeps the latest value per key in memory. Reads are local. A write updates memory
//! and returns the changelog record to publish with the handler's other outputs, so in
//! exactly-once mode the state change commits in the same transaction as the messages it caused
//! (and in at-least-once mode it is published with them). On start, [`Store::open`] replays the
//! changelog before the store reports ready; after an aborted transaction the processor calls
//! [`Store::reload`], so memory never keeps a change Kafka rolled back.
//!
//! The changelog should be compacted (`cleanup.policy=compact`): Kafka then keeps the latest
//! record per key and deletes keys whose latest record is a tombstone ([`Store::delete`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::monitor::{Monitor, ReadyFlag};
use crate::publisher::Outgoing;
use crate::reader::read_to_end;
use crate::{Error, KafkaConfig};

/// A keyed store of `V` backed by the changelog `topic`.
pub struct Store<V> {
    name: String,
    topic: String,
    kafka: KafkaConfig,
    entries: Arc<Mutex<HashMap<String, V>>>,
    ready: ReadyFlag,
    restore_timeout: Duration,
}

impl<V> Clone for Store<V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            topic: self.topic.clone(),
            kafka: self.kafka.clone(),
            entries: Arc::clone(&self.entries),
            ready: self.ready.clone(),
            restore_timeout: self.restore_timeout,
        }
    }
}

impl<V> std::fmt::Debug for Store<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<V> Store<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// Declares the component `store:<name>` on `monitor`, replays `topic` into memory and then
    /// marks it ready. Fails when the topic is missing or a record does not decode as `V`.
    pub async fn open(
        kafka: &KafkaConfig,
        name: &str,
        topic: &str,
        monitor: &Monitor,
    ) -> Result<Self, Error> {
        let store = Self {
            name: name.to_owned(),
            topic: topic.to_owned(),
            kafka: kafka.clone(),
            entries: Arc::default(),
            ready: monitor.component(format!("store:{name}")),
            restore_timeout: Duration::from_secs(120),
        };
        store.reload().await?;
        Ok(store)
    }

    /// Replaces memory with the changelog's committed contents.
    pub async fn reload(&self) -> Result<(), Error> {
        self.ready.set(false);
        let started = tokio::time::Instant::now();
        let records = read_to_end(
            &self.kafka,
            "store-restore",
            &self.topic,
            self.restore_timeout,
        )
        .await?;
        let mut entries = HashMap::new();
        for record in &records {
            let key = record
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .ok_or_else(|| self.corrupt(record.partition, record.offset, "no UTF-8 key"))?;
            match &record.payload {
                None => {
                    entries.remove(key);
                }
                Some(bytes) => {
                    let value = serde_json::from_slice(bytes).map_err(|e| {
                        self.corrupt(record.partition, record.offset, &e.to_string())
                    })?;
                    entries.insert(key.to_owned(), value);
                }
            }
        }
        tracing::info!(store = %self.name, topic = %self.topic, records = records.len(), keys = entries.len(), elapsed = ?started.elapsed(), "store restored");
        *self.lock() = entries;
        self.ready.set(true);
        Ok(())
    }

    fn corrupt(&self, partition: i32, offset: i64, why: &str) -> Error {
        Error::Internal(format!(
            "store `{}`: changelog `{}` partition {partition} offset {offset} is unreadable: {why}",
            self.name, self.topic
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, V>> {
        // A panic while holding the lock cannot leave a half-written map: every write is one
        // insert or remove.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// What `pick` returns for each entry, where it returns something, in no particular order.
    /// A scan that clones only what it keeps: periodic scans of a store that keeps history
    /// (deadlines, deliveries, pruning) use this, so their cost is not a copy of everything.
    pub fn select<T>(&self, mut pick: impl FnMut(&str, &V) -> Option<T>) -> Vec<T> {
        self.lock().iter().filter_map(|(k, v)| pick(k, v)).collect()
    }

    /// Every entry, in no particular order (for read models and reports).
    pub fn entries(&self) -> Vec<(String, V)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Sets `key` to `value` in memory; returns the changelog record to publish with the
    /// handler's outputs.
    pub fn put(&self, key: &str, value: V) -> Result<Outgoing, Error> {
        let record = self.changelog(key, &value)?;
        self.lock().insert(key.to_owned(), value);
        Ok(record)
    }

    /// The changelog record that sets `key` to `value`, without changing memory: for a writer
    /// that commits it on its own and calls [`Store::committed`] once Kafka has it.
    pub fn changelog(&self, key: &str, value: &V) -> Result<Outgoing, Error> {
        let payload = serde_json::to_vec(value).map_err(|e| {
            Error::Internal(format!(
                "store `{}` cannot encode its value: {e}",
                self.name
            ))
        })?;
        Ok(self.record(key, Some(payload)))
    }

    /// Sets `key` to `value` in memory after its [`Store::changelog`] record was committed.
    pub fn committed(&self, key: &str, value: V) {
        self.lock().insert(key.to_owned(), value);
    }

    /// Removes `key` from memory; returns the tombstone to publish with the handler's outputs.
    pub fn delete(&self, key: &str) -> Outgoing {
        self.lock().remove(key);
        self.record(key, None)
    }

    fn record(&self, key: &str, payload: Option<Vec<u8>>) -> Outgoing {
        Outgoing {
            topic: self.topic.clone(),
            key: Some(key.as_bytes().to_vec()),
            payload,
            headers: Vec::new(),
        }
    }
}

/// Something the processor reloads after an aborted transaction.
pub trait Reload: Send + Sync {
    /// Replaces in-memory state with what Kafka committed.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>>;

    /// When `out` is a record of this store's changelog, hands `enqueue` a copy carrying the
    /// store's *current* value for its key (a tombstone if it was deleted), while holding the
    /// store's lock, and returns `true`; otherwise returns `false` and does nothing.
    ///
    /// Handlers of different records may change one key (a product's stock) one after the
    /// other and have their outputs enqueued in the opposite order; writing the value of
    /// the moment of enqueueing keeps the changelog's last record equal to memory, so a
    /// restore never resurrects an older value.
    fn enqueue_current(&self, out: &Outgoing, enqueue: &mut dyn FnMut(&Outgoing)) -> bool;
}

impl<V> Reload for Store<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
        Box::pin(Store::reload(self))
    }

    fn enqueue_current(&self, out: &Outgoing, enqueue: &mut dyn FnMut(&Outgoing)) -> bool {
        if out.topic != self.topic {
            return false;
        }
        let Some(key) = out.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
            return false;
        };
        let entries = self.lock();
        let payload = match entries.get(key) {
            // The value encoded when it was put; encoding it again cannot fail differently.
            Some(value) => serde_json::to_vec(value)
                .ok()
                .or_else(|| out.payload.clone()),
            None => None,
        };
        enqueue(&Outgoing {
            payload,
            ..out.clone()
        });
        true
    }
}
