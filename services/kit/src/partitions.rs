//! At-least-once bookkeeping of the partitions a member owns, shared between the consume loop,
//! the record tasks and the rebalance callback.
//!
//! Each assigned partition has an [`OffsetTracker`] and a count of records being processed.
//! Tasks store their partition's commit position themselves as they finish, so that when a
//! partition is revoked the rebalance callback can wait for its running records (bounded by the
//! drain timeout), commit, and only then let the partition go: its next owner starts where this
//! member stopped instead of redoing its in-flight work. Each assignment of a partition gets a
//! new epoch, so a record from an earlier assignment that finishes late never stores an offset
//! into a later one.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::offsets::OffsetTracker;

/// A topic partition.
pub(crate) type Partition = (String, i32);

#[derive(Default)]
struct Tracked {
    tracker: OffsetTracker,
    epoch: u64,
    running: usize,
}

#[derive(Default)]
struct Inner {
    owned: HashMap<Partition, Tracked>,
    next_epoch: u64,
    revoked: Vec<Partition>,
    /// Revoked and not assigned again: records of these that still arrive are stale.
    gone: HashSet<Partition>,
}

/// The partitions this member is processing.
#[derive(Default)]
pub(crate) struct Partitions {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Partitions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a few field writes that cannot panic halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A record was received; returns the epoch of its partition's current assignment, or
    /// `None` when the partition was revoked (librdkafka had fetched it before): drop it.
    pub(crate) fn received(&self, partition: &Partition, offset: i64) -> Option<u64> {
        let mut inner = self.lock();
        if inner.gone.contains(partition) {
            return None;
        }
        let next = inner.next_epoch;
        let tracked = inner
            .owned
            .entry(partition.clone())
            .or_insert_with(|| Tracked {
                epoch: next,
                ..Tracked::default()
            });
        tracked.tracker.start(offset);
        let epoch = tracked.epoch;
        if epoch == next {
            inner.next_epoch += 1;
        }
        Some(epoch)
    }

    /// `partitions` were assigned (again).
    pub(crate) fn assigned(&self, partitions: &[Partition]) {
        let mut inner = self.lock();
        for partition in partitions {
            inner.gone.remove(partition);
        }
    }

    /// A record of `epoch` started processing.
    pub(crate) fn started(&self, partition: &Partition, epoch: u64) {
        if let Some(tracked) = self.lock().owned.get_mut(partition)
            && tracked.epoch == epoch
        {
            tracked.running += 1;
        }
    }

    /// A record of `epoch` finished. Returns the offset to store when the partition's
    /// contiguous finished prefix grew. Call [`Partitions::ended`] once it is stored.
    #[cfg(test)]
    pub(crate) fn finished(&self, partition: &Partition, epoch: u64, offset: i64) -> Option<i64> {
        self.finished_storing(partition, epoch, offset, |_| Ok::<(), ()>(()))
            .map(|(through, _)| through)
    }

    /// [`Partitions::finished`], storing the new position with `store` while the lock is held:
    /// two records of one partition finishing at once on two threads must store their
    /// positions in the order they were decided, or the later (lower) one would move the
    /// stored position back and the next owner would redo records already handled. Returns
    /// the position and what `store` said, when there was one to store.
    pub(crate) fn finished_storing<E>(
        &self,
        partition: &Partition,
        epoch: u64,
        offset: i64,
        store: impl FnOnce(i64) -> Result<(), E>,
    ) -> Option<(i64, Result<(), E>)> {
        let mut inner = self.lock();
        let tracked = inner.owned.get_mut(partition)?;
        if tracked.epoch != epoch {
            return None;
        }
        let through = tracked.tracker.finish(offset)?;
        Some((through, store(through)))
    }

    /// A record of `epoch` stopped running (finished and its offset stored, or abandoned).
    pub(crate) fn ended(&self, partition: &Partition, epoch: u64) {
        let mut inner = self.lock();
        if let Some(tracked) = inner.owned.get_mut(partition)
            && tracked.epoch == epoch
        {
            tracked.running = tracked.running.saturating_sub(1);
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until every received record of `partitions` has finished (and
    /// its offset is stored); returns how many have not.
    pub(crate) fn wait_idle(&self, partitions: &[Partition], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let running = |inner: &Inner| -> usize {
            partitions
                .iter()
                .filter_map(|p| inner.owned.get(p))
                // Running records are in the tracker until they finish, and count as running
                // until their offset is stored.
                .map(|t| t.running.max(t.tracker.in_flight()))
                .sum()
        };
        let mut inner = self.lock();
        loop {
            let left = running(&inner);
            let now = Instant::now();
            if left == 0 || now >= deadline {
                return left;
            }
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Whether `epoch` is still the current assignment of `partition`.
    pub(crate) fn current(&self, partition: &Partition, epoch: u64) -> bool {
        self.lock()
            .owned
            .get(partition)
            .is_some_and(|t| t.epoch == epoch)
    }

    /// Lets `partitions` go: their records still queued must be dropped by the loop
    /// ([`Partitions::take_revoked`]) and late finishers store nothing.
    pub(crate) fn revoke(&self, partitions: &[Partition]) {
        let mut inner = self.lock();
        for partition in partitions {
            inner.owned.remove(partition);
            inner.revoked.push(partition.clone());
            inner.gone.insert(partition.clone());
        }
    }

    /// The partitions revoked since the last call.
    pub(crate) fn take_revoked(&self) -> Vec<Partition> {
        std::mem::take(&mut self.lock().revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".to_owned(), n)
    }

    #[test]
    fn a_late_finisher_from_an_earlier_assignment_stores_nothing() {
        let parts = Partitions::default();
        let old = parts.received(&p(0), 5).unwrap();
        parts.started(&p(0), old);
        parts.revoke(&[p(0)]);
        assert_eq!(
            parts.received(&p(0), 6),
            None,
            "fetched before the revocation"
        );
        parts.assigned(&[p(0)]);
        let new = parts.received(&p(0), 3).unwrap();
        assert_ne!(old, new);
        assert_eq!(parts.finished(&p(0), old, 5), None);
        parts.ended(&p(0), old);
        parts.started(&p(0), new);
        assert_eq!(parts.finished(&p(0), new, 3), Some(3));
        parts.ended(&p(0), new);
        assert_eq!(parts.take_revoked(), [p(0)]);
        assert!(parts.take_revoked().is_empty());
    }

    #[test]
    fn positions_are_stored_in_the_order_they_grow_when_records_finish_on_many_threads() {
        // Found in CI: a task that decided to store 12 stored it after another had stored 13,
        // so the next owner redid 13. Stores now happen under the lock, in decision order.
        let parts = std::sync::Arc::new(Partitions::default());
        let mut epoch = 0;
        for offset in 0..400 {
            epoch = parts.received(&p(2), offset).unwrap();
        }
        let stored = std::sync::Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (parts, stored) = (parts.clone(), stored.clone());
                std::thread::spawn(move || {
                    for offset in (0..400).filter(|o| o % 8 == t) {
                        parts.finished_storing(&p(2), epoch, offset, |through| {
                            std::thread::yield_now();
                            stored.lock().unwrap().push(through);
                            Ok::<(), ()>(())
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let stored = stored.lock().unwrap().clone();
        assert!(
            stored.windows(2).all(|w| w[0] < w[1]),
            "the stored position went back: {stored:?}"
        );
        assert_eq!(stored.last(), Some(&399));
    }

    #[test]
    fn waiting_for_idle_returns_once_running_and_queued_records_finish() {
        let parts = std::sync::Arc::new(Partitions::default());
        let epoch = parts.received(&p(1), 0).unwrap();
        assert_eq!(
            parts.received(&p(1), 1),
            Some(epoch),
            "queued behind offset 0"
        );
        parts.started(&p(1), epoch);
        assert_eq!(parts.wait_idle(&[p(1)], Duration::from_millis(10)), 2);
        let chain = {
            let parts = std::sync::Arc::clone(&parts);
            std::thread::spawn(move || {
                let mut stored = Vec::new();
                for offset in [0, 1] {
                    if offset > 0 {
                        parts.started(&p(1), epoch);
                    }
                    std::thread::sleep(Duration::from_millis(30));
                    stored.extend(parts.finished(&p(1), epoch, offset));
                    parts.ended(&p(1), epoch);
                }
                stored
            })
        };
        assert_eq!(parts.wait_idle(&[p(1)], Duration::from_secs(10)), 0);
        assert_eq!(chain.join().unwrap(), [0, 1]);
        assert_eq!(
            parts.wait_idle(&[p(2)], Duration::ZERO),
            0,
            "unknown partitions are idle"
        );
    }
}
