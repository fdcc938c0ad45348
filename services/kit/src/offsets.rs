//! Which offset of a partition may be committed when records finish out of order.
//!
//! Records of different keys complete in any order; a commit must never pass a record that is
//! still in flight, or a crash would skip it. The tracker answers "every offset up to which is
//! done?" — the highest offset below the oldest unfinished one.

use std::collections::BTreeSet;

/// The in-flight offsets of one partition.
#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    in_flight: BTreeSet<i64>,
    lowest_seen: Option<i64>,
    highest_seen: Option<i64>,
    stored: Option<i64>,
}

impl OffsetTracker {
    /// Records that `offset` was received and is being processed.
    pub fn start(&mut self, offset: i64) {
        self.in_flight.insert(offset);
        self.lowest_seen = Some(self.lowest_seen.map_or(offset, |l| l.min(offset)));
        self.highest_seen = Some(self.highest_seen.map_or(offset, |h| h.max(offset)));
    }

    /// Records that `offset` is done. Returns the offset to store when the contiguous done
    /// prefix grew: every offset up to and including it is processed.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        self.in_flight.remove(&offset);
        let done_through = match self.in_flight.first() {
            Some(oldest) => oldest - 1,
            None => self.highest_seen?,
        };
        if self.stored.is_some_and(|s| s >= done_through) {
            return None;
        }
        // Offsets below the first one we saw were handled before us (the committed position):
        // nothing of ours to store yet.
        if self.lowest_seen.is_none_or(|l| done_through < l) {
            return None;
        }
        self.stored = Some(done_through);
        Some(done_through)
    }

    /// How many records are in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_through_the_oldest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.start(o);
        }
        assert_eq!(t.finish(12), None, "10 and 11 are still running");
        assert_eq!(t.finish(14), None);
        assert_eq!(t.finish(10), Some(10));
        assert_eq!(t.finish(11), Some(12), "12 was already done");
        assert_eq!(t.finish(13), Some(14));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_stuck_offset_holds_the_commit_back_however_much_follows() {
        let mut t = OffsetTracker::default();
        for o in 0..1000 {
            t.start(o);
        }
        let mut stored = None;
        for o in (0..1000).filter(|o| *o != 3) {
            stored = t.finish(o).or(stored);
        }
        assert_eq!(stored, Some(2));
        assert_eq!(t.finish(3), Some(999));
    }

    #[test]
    fn never_moves_backwards() {
        let mut t = OffsetTracker::default();
        t.start(5);
        assert_eq!(t.finish(5), Some(5));
        t.start(6);
        t.start(7);
        assert_eq!(t.finish(7), None);
        assert_eq!(t.finish(6), Some(7));
    }
}
