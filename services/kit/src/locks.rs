//! A lock per key, for read-modify-write of one entity's state from more than one task.

use std::hash::{DefaultHasher, Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of async mutexes striped by key hash: two tasks working on the same key run one
/// after the other; tasks on different keys rarely wait for each other (only when their keys
/// share a stripe). Memory does not grow with the number of keys.
#[derive(Debug)]
pub struct KeyLocks {
    stripes: Vec<Mutex<()>>,
}

impl KeyLocks {
    /// `stripes` mutexes (at least one).
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Waits until no other task holds `key`'s lock, and holds it until the guard drops.
    pub async fn lock(&self, key: &str) -> MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let stripe = usize::try_from(hasher.finish() % self.stripes.len() as u64).unwrap_or(0);
        self.stripes[stripe].lock().await
    }
}

impl Default for KeyLocks {
    /// 256 stripes: enough that unrelated keys seldom share one at the concurrency of a
    /// processor (16 handlers by default).
    fn default() -> Self {
        Self::new(256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_waits_for_its_holder_and_another_key_does_not() {
        let locks = KeyLocks::new(64);
        let held = locks.lock("order-1").await;
        let same =
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("order-1"));
        assert!(same.await.is_err(), "a second holder of one key got in");
        // Some other key lands on another stripe and is not held up.
        let mut free = 0;
        for n in 0..8 {
            let key = format!("order-{}", n + 2);
            if tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock(&key))
                .await
                .is_ok()
            {
                free += 1;
            }
        }
        assert!(free >= 7, "only {free} of 8 other keys could be locked");
        drop(held);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("order-1"))
                .await
                .is_ok(),
            "the key stayed locked after its guard dropped"
        );
    }
}
