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
//!
//! Two scopes. A **global** store ([`Store::open`]) holds every partition of its changelog and
//! lets the key choose the partition of each write: for state that one process reads whole
//! (the edge's idempotency keys). An **owned** store ([`Store::owned`]) is Kafka Streams' task
//! model: its changelog is partitioned like the processor's input, and a replica holds only the
//! partitions whose input it is assigned. The processor restores exactly those before it
//! handles a record and drops the others after a rebalance; a write made while handling a
//! record of partition `p` goes to changelog partition `p`, and a handler that writes a key
//! living in another partition gets an error instead of becoming its second writer. So every
//! piece of state has one owner, whatever the number of replicas.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::error::Error;
use crate::kafka::KafkaConfig;
use crate::monitor::{Monitor, ReadyFlag, StoreLabels};
use crate::reader::{fold_partitions, fold_to_end};
use crate::record::Outgoing;
use crate::record::Record;

tokio::task_local! {
    /// The input partition of the record whose handler is running (set by the processor).
    static HANDLING: i32;
}

/// Runs `work` as the handling of a record of input `partition`: owned stores write there.
pub(crate) async fn handling<T>(partition: i32, work: impl Future<Output = T>) -> T {
    HANDLING.scope(partition, work).await
}

fn handling_partition() -> Option<i32> {
    HANDLING.try_with(|p| *p).ok()
}

/// The most quarantined records a store keeps for dead-lettering between two takes.
pub const QUARANTINE_KEPT: usize = 100;

/// Memory's bucket for keys a global store wrote before Kafka chose their partition.
const UNPLACED: i32 = -1;

/// Which partitions of its changelog a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// All of them, restored on open.
    Global,
    /// Those its processor is assigned, restored on assignment.
    Owned,
}

/// A value and when it was last written (Unix milliseconds; on restore, its record's
/// timestamp): what expiry measures age from.
struct Kept<V> {
    value: V,
    written: i64,
}

impl<V> Kept<V> {
    fn now(value: V) -> Self {
        Self {
            value,
            written: now_ms(),
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct Entries<V> {
    /// Values per changelog partition.
    parts: HashMap<i32, HashMap<String, Kept<V>>>,
    /// The partitions restored (an owned store's assignment; some may hold nothing).
    held: BTreeSet<i32>,
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Self {
            parts: HashMap::new(),
            held: BTreeSet::new(),
        }
    }
}

impl<V> Entries<V> {
    /// The partition `key` lives in, if any.
    fn partition_of(&self, key: &str) -> Option<i32> {
        self.parts
            .iter()
            .find_map(|(p, entries)| entries.contains_key(key).then_some(*p))
    }

    /// An owned store read inside a handler sees the handled partition only.
    fn get(&self, key: &str, scope: Scope) -> Option<&V> {
        match (scope, handling_partition()) {
            (Scope::Owned, Some(p)) => self.parts.get(&p).and_then(|e| e.get(key)),
            _ => self.parts.values().find_map(|e| e.get(key)),
        }
        .map(|kept| &kept.value)
    }
}

/// A keyed store of `V` backed by the changelog `topic`.
pub struct Store<V> {
    name: String,
    topic: String,
    kafka: KafkaConfig,
    entries: Arc<Mutex<Entries<V>>>,
    ready: ReadyFlag,
    restore_timeout: Duration,
    scope: Scope,
    /// `sagashop_store_entries`: the keys held.
    held_keys: Gauge,
    /// `sagashop_store_expired_total`: the keys forgot by [`Store::expire`].
    expired: Counter,
    /// `sagashop_store_quarantined_total`: unreadable changelog records skipped on restore.
    quarantined: Counter,
    /// The unreadable records of the last restores and why, until their owner dead-letters
    /// them ([`Store::take_quarantined`]).
    quarantine: Arc<Mutex<Vec<(Record, String)>>>,
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
            scope: self.scope,
            held_keys: self.held_keys.clone(),
            expired: self.expired.clone(),
            quarantined: self.quarantined.clone(),
            quarantine: Arc::clone(&self.quarantine),
        }
    }
}

impl<V> std::fmt::Debug for Store<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<V> Store<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    fn new(kafka: &KafkaConfig, name: &str, topic: &str, monitor: &Monitor, scope: Scope) -> Self {
        let labels = StoreLabels {
            store: name.to_owned(),
        };
        Self {
            held_keys: monitor.runtime.store_entries.get_or_create(&labels).clone(),
            expired: monitor.runtime.store_expired.get_or_create(&labels).clone(),
            quarantined: monitor
                .runtime
                .store_quarantined
                .get_or_create(&labels)
                .clone(),
            quarantine: Arc::default(),
            name: name.to_owned(),
            topic: topic.to_owned(),
            kafka: kafka.clone(),
            entries: Arc::default(),
            ready: monitor.component(format!("store:{name}")),
            // Long enough to outlast a transaction that a killed writer left open (the broker
            // aborts it after the transaction timeout).
            restore_timeout: Duration::from_secs(120),
            scope,
        }
    }

    /// A global store: declares the component `store:<name>` on `monitor`, replays every
    /// partition of `topic` into memory and then marks it ready. A topic that does not exist
    /// yet is waited for, up to [`Store::TOPIC_WAIT`] (in a fresh install the operator makes it
    /// while the services start; the component stays not ready meanwhile); then, or when Kafka
    /// cannot be read, it fails.
    pub async fn open(
        kafka: &KafkaConfig,
        name: &str,
        topic: &str,
        monitor: &Monitor,
    ) -> Result<Self, Error> {
        let store = Self::new(kafka, name, topic, monitor, Scope::Global);
        let deadline = tokio::time::Instant::now() + Self::TOPIC_WAIT;
        let mut told = false;
        loop {
            match store.reload().await {
                Ok(()) => break,
                Err(e) if e.is_missing_topic() && tokio::time::Instant::now() < deadline => {
                    if !told {
                        tracing::warn!(store = name, %topic, "the store's topic does not exist yet; waiting for it (the operator makes it)");
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
        if told {
            tracing::info!(store = name, %topic, "the store's topic exists now; restored");
        }
        Ok(store)
    }

    /// How long [`Store::open`] waits for its topic to be made.
    pub const TOPIC_WAIT: Duration = crate::reader::TOPIC_WAIT;

    /// An owned store: empty and not ready until the processor that [reloads](crate::processor::Processor::reloads)
    /// it is assigned partitions and restores them. Its changelog must have as many partitions
    /// as the processor's input topics.
    pub fn owned(kafka: &KafkaConfig, name: &str, topic: &str, monitor: &Monitor) -> Self {
        let store = Self::new(kafka, name, topic, monitor, Scope::Owned);
        store.ready.set(false);
        store
    }

    /// Replaces memory with the changelog's committed contents: every partition of a global
    /// store, the held partitions of an owned one.
    pub async fn reload(&self) -> Result<(), Error> {
        match self.scope {
            Scope::Global => self.restore(None).await,
            Scope::Owned => {
                let held: Vec<i32> = self.lock().held.iter().copied().collect();
                self.restore(Some(&held)).await
            }
        }
    }

    /// Holds exactly `partitions` (an owned store; a global one reloads everything): restores
    /// them from the changelog, waiting for transactions still open on them to end, and drops
    /// the rest.
    pub async fn assign(&self, partitions: &[i32]) -> Result<(), Error> {
        match self.scope {
            Scope::Global => self.restore(None).await,
            Scope::Owned => self.restore(Some(partitions)).await,
        }
    }

    async fn restore(&self, partitions: Option<&[i32]>) -> Result<(), Error> {
        self.ready.set(false);
        let started = tokio::time::Instant::now();
        let restoring = Restoring {
            store: self.name.clone(),
            topic: self.topic.clone(),
            now: now_ms(),
            parts: HashMap::new(),
            records: 0,
            quarantined: Vec::new(),
        };
        // Folded record by record: memory holds the state being rebuilt, never the changelog.
        let restored = match partitions {
            None => {
                fold_to_end(
                    &self.kafka,
                    "store-restore",
                    &self.topic,
                    self.restore_timeout,
                    restoring,
                    Restoring::<V>::apply,
                )
                .await?
            }
            // Read up to the high watermark, not the last stable offset: a transaction the
            // partition's previous owner still has open may commit state we must see.
            Some(partitions) => {
                fold_partitions(
                    &self.kafka,
                    "store-restore",
                    &self.topic,
                    partitions,
                    self.restore_timeout,
                    restoring,
                    Restoring::<V>::apply,
                )
                .await?
            }
        };
        self.quarantined.inc_by(restored.quarantined.len() as u64);
        {
            let mut kept = self
                .quarantine
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Bounded: a changelog full of garbage is a bug to fix, not letters to keep.
            let room = QUARANTINE_KEPT.saturating_sub(kept.len());
            kept.extend(restored.quarantined.into_iter().take(room));
        }
        let parts = restored.parts;
        let keys: usize = parts.values().map(HashMap::len).sum();
        tracing::info!(store = %self.name, topic = %self.topic, partitions = ?partitions, records = restored.records, keys, elapsed = ?started.elapsed(), "store restored");
        let mut entries = self.lock();
        entries.parts = parts;
        self.held_keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
        entries.held = partitions
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default();
        drop(entries);
        self.ready.set(true);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<V>> {
        // A panic while holding the lock cannot leave a half-written map: every write is one
        // insert or remove.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value under `key` (inside a handler, an owned store looks in the handled record's
    /// partition only).
    pub fn get(&self, key: &str) -> Option<V> {
        self.lock().get(key, self.scope).cloned()
    }

    /// What `pick` returns for each entry, where it returns something, in no particular order.
    /// A scan that clones only what it keeps: periodic scans of a store that keeps history
    /// (deadlines, deliveries, pruning) use this, so their cost is not a copy of everything.
    pub fn select<T>(&self, mut pick: impl FnMut(&str, &V) -> Option<T>) -> Vec<T> {
        self.lock()
            .parts
            .values()
            .flat_map(HashMap::iter)
            .filter_map(|(k, kept)| pick(k, &kept.value))
            .collect()
    }

    /// Every entry, in no particular order (for read models and reports). An owned store's
    /// partitions may hold the same key each.
    pub fn entries(&self) -> Vec<(String, V)> {
        self.select(|k, v| Some((k.to_owned(), v.clone())))
    }

    /// How many entries the store holds.
    pub fn len(&self) -> usize {
        self.lock().parts.values().map(HashMap::len).sum()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The unreadable changelog records the restores since the last call skipped, and why
    /// (at most [`QUARANTINE_KEPT`]): for the store's owner to dead-letter.
    pub fn take_quarantined(&self) -> Vec<(Record, String)> {
        std::mem::take(
            &mut *self
                .quarantine
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The changelog partitions an owned store holds (empty for a global store).
    pub fn partitions(&self) -> Vec<i32> {
        self.lock().held.iter().copied().collect()
    }

    /// Sets `key` to `value` in memory; returns the changelog record to publish with the
    /// handler's outputs. An owned store writes to the handled record's partition (outside a
    /// handler: to the partition the key lives in), and refuses a key that lives elsewhere.
    pub fn put(&self, key: &str, value: V) -> Result<Outgoing, Error> {
        let mut entries = self.lock();
        let partition = self.placement(&entries, key)?;
        let record = self.changelog_in(partition, key, &value)?;
        let old = entries
            .parts
            .entry(partition.unwrap_or(UNPLACED))
            .or_default()
            .insert(key.to_owned(), Kept::now(value));
        if old.is_none() {
            self.held_keys.inc();
        }
        Ok(record)
    }

    /// Where a write of `key` goes: `None` lets the key choose (a global store's new key).
    fn placement(&self, entries: &Entries<V>, key: &str) -> Result<Option<i32>, Error> {
        let lives = entries.partition_of(key).filter(|p| *p != UNPLACED);
        match (self.scope, handling_partition(), lives) {
            (Scope::Global, _, lives) => Ok(lives),
            (Scope::Owned, Some(handled), Some(lives)) if lives != handled => {
                Err(Error::Internal(format!(
                    "store `{}`: key `{key}` lives in partition {lives}, but a record of \
                     partition {handled} changes it: key the input by the state it changes \
                     (docs/architecture.md, \"One owner per piece of state\")",
                    self.name
                )))
            }
            (Scope::Owned, Some(handled), _) => Ok(Some(handled)),
            (Scope::Owned, None, Some(lives)) => Ok(Some(lives)),
            (Scope::Owned, None, None) => Err(Error::Internal(format!(
                "store `{}`: key `{key}` is new and no record is being handled, so it has no \
                 partition: create state in the handler of the record it belongs to",
                self.name
            ))),
        }
    }

    /// The changelog record that sets `key` to `value`, without changing memory: for a writer
    /// that commits it on its own and calls [`Store::committed`] once Kafka has it.
    pub fn changelog(&self, key: &str, value: &V) -> Result<Outgoing, Error> {
        let partition = {
            let entries = self.lock();
            self.placement(&entries, key)?
        };
        self.changelog_in(partition, key, value)
    }

    fn changelog_in(
        &self,
        partition: Option<i32>,
        key: &str,
        value: &V,
    ) -> Result<Outgoing, Error> {
        let payload = serde_json::to_vec(value).map_err(|e| {
            Error::Internal(format!(
                "store `{}` cannot encode its value: {e}",
                self.name
            ))
        })?;
        Ok(self.record(partition, key, Some(payload)))
    }

    /// Sets `key` to `value` in memory after its [`Store::changelog`] record was committed.
    pub fn committed(&self, key: &str, value: V) {
        let mut entries = self.lock();
        let partition = entries.partition_of(key).unwrap_or(UNPLACED);
        let old = entries
            .parts
            .entry(partition)
            .or_default()
            .insert(key.to_owned(), Kept::now(value));
        if old.is_none() {
            self.held_keys.inc();
        }
    }

    /// Forgets every entry that `finished` accepts and that nobody wrote for `after`: removes
    /// them from memory and returns their tombstones, to publish so that the changelog (once
    /// compacted) and every later restore forget them too.
    ///
    /// How state stays bounded: work that is done (a finished saga, a delivered shipment, a
    /// message id older than any duplicate) goes after a retention, so memory holds what
    /// arrived within it, not everything ever.
    pub fn expire(&self, after: Duration, finished: impl Fn(&V) -> bool) -> Vec<Outgoing> {
        let cutoff = now_ms().saturating_sub(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
        let mut entries = self.lock();
        let mut tombstones = Vec::new();
        for (partition, part) in &mut entries.parts {
            let placed = (*partition != UNPLACED).then_some(*partition);
            part.retain(|key, kept| {
                let expired = kept.written < cutoff && finished(&kept.value);
                if expired {
                    tombstones.push(self.record(placed, key, None));
                }
                !expired
            });
        }
        drop(entries);
        let n = tombstones.len();
        self.held_keys.dec_by(i64::try_from(n).unwrap_or(i64::MAX));
        self.expired.inc_by(n as u64);
        tombstones
    }

    /// Removes `key` from memory; returns the tombstone to publish with the handler's outputs
    /// (to the partition the key lived in).
    pub fn delete(&self, key: &str) -> Outgoing {
        let mut entries = self.lock();
        let lives = entries.partition_of(key);
        if let Some(e) = lives.and_then(|p| entries.parts.get_mut(&p))
            && e.remove(key).is_some()
        {
            self.held_keys.dec();
        }
        let partition = match (lives.filter(|p| *p != UNPLACED), self.scope) {
            (Some(p), _) => Some(p),
            (None, Scope::Owned) => handling_partition(),
            (None, Scope::Global) => None,
        };
        self.record(partition, key, None)
    }

    fn record(&self, partition: Option<i32>, key: &str, payload: Option<Vec<u8>>) -> Outgoing {
        Outgoing {
            topic: self.topic.clone(),
            key: Some(key.as_bytes().to_vec()),
            partition,
            payload,
            headers: Vec::new(),
        }
    }
}

/// A restore in progress: the state rebuilt so far from the changelog's records.
struct Restoring<V> {
    store: String,
    topic: String,
    /// The write time of a record without a timestamp.
    now: i64,
    parts: HashMap<i32, HashMap<String, Kept<V>>>,
    records: usize,
    /// Unreadable records skipped, and why.
    quarantined: Vec<(Record, String)>,
}

impl<V: DeserializeOwned> Restoring<V> {
    /// One changelog record: a value sets its key, a tombstone removes it. An unreadable
    /// record (no UTF-8 key, a value that is not a `V`: a foreign write, a bug, bit rot) is
    /// quarantined: logged with its place, counted in `sagashop_store_quarantined_total`,
    /// kept for its owner to dead-letter ([`Store::take_quarantined`]) and skipped, so its key
    /// keeps the value before it. One bad record stops neither the restore nor the service
    /// that owns the store; the alert on the counter says to look.
    fn apply(&mut self, record: Record) -> Result<(), Error> {
        self.records += 1;
        let mut quarantine = |why: &str| {
            tracing::error!(store = %self.store, topic = %self.topic, partition = record.partition, offset = record.offset, why, "unreadable changelog record quarantined: skipped, its key keeps its previous value");
            self.quarantined.push((record.clone(), why.to_owned()));
        };
        let Some(key) = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
        else {
            quarantine("no UTF-8 key");
            return Ok(());
        };
        let value = match &record.payload {
            None => None,
            Some(bytes) => match serde_json::from_slice::<V>(bytes) {
                Ok(value) => Some(value),
                Err(e) => {
                    quarantine(&e.to_string());
                    return Ok(());
                }
            },
        };
        let entries = self.parts.entry(record.partition).or_default();
        match value {
            None => {
                entries.remove(key);
            }
            Some(value) => {
                let written = record.timestamp.filter(|t| *t > 0).unwrap_or(self.now);
                entries.insert(key.to_owned(), Kept { value, written });
            }
        }
        Ok(())
    }
}

/// Something the processor restores on assignment and reloads after an aborted transaction.
pub trait Reload: Send + Sync {
    /// Replaces in-memory state with what Kafka committed.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>>;

    /// The processor was assigned input `partitions` (partition numbers, the same for every
    /// input topic): an owned store holds exactly these from now on.
    fn assign<'a>(
        &'a self,
        partitions: &'a [i32],
    ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

    /// Whether the store holds only its processor's partitions.
    fn is_owned(&self) -> bool;

    /// The topic it is restored from.
    fn changelog(&self) -> &str;

    /// The unreadable changelog records its restores skipped since the last call, and why.
    fn take_quarantined(&self) -> Vec<(Record, String)> {
        Vec::new()
    }

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

    fn assign<'a>(
        &'a self,
        partitions: &'a [i32],
    ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>> {
        Box::pin(Store::assign(self, partitions))
    }

    fn is_owned(&self) -> bool {
        self.scope == Scope::Owned
    }

    fn changelog(&self) -> &str {
        &self.topic
    }

    fn take_quarantined(&self) -> Vec<(Record, String)> {
        Store::take_quarantined(self)
    }

    fn enqueue_current(&self, out: &Outgoing, enqueue: &mut dyn FnMut(&Outgoing)) -> bool {
        if out.topic != self.topic {
            return false;
        }
        let Some(key) = out.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
            return false;
        };
        let entries = self.lock();
        let current = match out.partition {
            Some(p) => entries
                .parts
                .get(&p)
                .and_then(|e| e.get(key))
                .map(|kept| &kept.value),
            None => entries.get(key, self.scope),
        };
        let payload = match current {
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
