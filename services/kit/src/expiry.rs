//! Bounded state: stores forget finished work after a retention.
//!
//! Every store keeps when each entry was last written. An [`Expiry`] lists, per store, how long
//! finished entries are kept and what "finished" means (a saga that ended, a delivered
//! shipment, any message id). A sweep, every tenth of the shortest retention (between 100 ms and
//! a minute), removes what is due from memory and publishes tombstones, so the compacted
//! changelogs, and every restore after them, forget it too. Memory then holds what was written
//! within the retention, whatever the history: about `rate × retention × bytes per entry`.
//!
//! The tombstones are published outside any transaction: a sweep races nothing that matters,
//! since a handler that writes an entry makes it young again, and an entry forgotten in memory
//! but still in the changelog (the publish failed, or a restore read it first) is simply
//! forgotten again by the next sweep.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::publisher::Publisher;
use crate::record::Outgoing;
use crate::store::Store;

/// One store's rule: what it forgets, and after how long.
trait Rule: Send + Sync {
    fn after(&self) -> Duration;
    fn sweep(&self) -> Vec<Outgoing>;
}

struct StoreRule<V> {
    store: Store<V>,
    after: Duration,
    finished: Box<dyn Fn(&V) -> bool + Send + Sync>,
}

impl<V> Rule for StoreRule<V>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn after(&self) -> Duration {
        self.after
    }

    fn sweep(&self) -> Vec<Outgoing> {
        self.store.expire(self.after, &self.finished)
    }
}

/// Memory a service keeps outside any store (a read model, say): forgotten by a function,
/// with nothing to publish.
struct MemoryRule {
    what: &'static str,
    after: Duration,
    forget: Box<dyn Fn() -> usize + Send + Sync>,
}

impl Rule for MemoryRule {
    fn after(&self) -> Duration {
        self.after
    }

    fn sweep(&self) -> Vec<Outgoing> {
        let forgotten = (self.forget)();
        if forgotten > 0 {
            tracing::debug!(forgotten, what = self.what, "past the retention; forgotten");
        }
        Vec::new()
    }
}

/// How a service's stores forget finished work.
#[derive(Clone, Default)]
pub struct Expiry {
    rules: Vec<Arc<dyn Rule>>,
}

impl std::fmt::Debug for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expiry")
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl Expiry {
    /// No rules: nothing expires.
    pub fn new() -> Self {
        Self::default()
    }

    /// `store` forgets an entry that `finished` accepts once nobody wrote it for `after`.
    #[must_use]
    pub fn of<V>(
        mut self,
        store: &Store<V>,
        after: Duration,
        finished: impl Fn(&V) -> bool + Send + Sync + 'static,
    ) -> Self
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.rules.push(Arc::new(StoreRule {
            store: store.clone(),
            after,
            finished: Box::new(finished),
        }));
        self
    }

    /// `forget` drops `what` past a retention of `after` from memory that is no store's (a
    /// read model rebuilt from Kafka, say) and returns how many entries went; it runs on every
    /// sweep, and `after` counts towards how often sweeps run.
    #[must_use]
    pub fn also(
        mut self,
        what: &'static str,
        after: Duration,
        forget: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Self {
        self.rules.push(Arc::new(MemoryRule {
            what,
            after,
            forget: Box::new(forget),
        }));
        self
    }

    /// Both lists of rules.
    #[must_use]
    pub fn and(mut self, other: Self) -> Self {
        self.rules.extend(other.rules);
        self
    }

    /// Whether there is nothing to expire.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How often [`Expiry::run`] sweeps: a tenth of the shortest retention, from 100 ms to a
    /// minute, so an entry lives at most ~10 % longer than its retention.
    pub fn every(&self) -> Duration {
        self.rules
            .iter()
            .map(|r| r.after() / 10)
            .min()
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Forgets what is due now in every store; returns the tombstones to publish.
    pub fn sweep(&self) -> Vec<Outgoing> {
        self.rules.iter().flat_map(|r| r.sweep()).collect()
    }

    /// Sweeps every [`Expiry::every`] until `shutdown`, publishing the tombstones with
    /// `publisher`. A failed publish is logged: memory is pruned either way, and a restore
    /// before the changelog has the tombstones brings the entries back until the next sweep.
    pub async fn run(self, publisher: Publisher, shutdown: CancellationToken) {
        if self.is_empty() {
            return;
        }
        let every = self.every();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let tombstones = self.sweep();
            if tombstones.is_empty() {
                continue;
            }
            for chunk in tombstones.chunks(1000) {
                if let Err(e) = publisher.send_all(chunk).await {
                    tracing::warn!(error = %e, "could not publish the tombstones of expired state");
                }
            }
            tracing::debug!(
                expired = tombstones.len(),
                "state past its retention forgotten"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn memory_rules_run_on_every_sweep_and_set_its_pace() {
        let held = Arc::new(AtomicUsize::new(3));
        let expiry = Expiry::new().also("things", Duration::from_secs(5), {
            let held = Arc::clone(&held);
            move || held.swap(0, Ordering::SeqCst)
        });
        assert!(!expiry.is_empty());
        assert_eq!(expiry.every(), Duration::from_millis(500));
        assert!(expiry.sweep().is_empty(), "nothing to publish");
        assert_eq!(held.load(Ordering::SeqCst), 0, "forgotten by the sweep");
    }
}
