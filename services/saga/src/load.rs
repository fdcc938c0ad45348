//! The load of the last minutes, as the read model saw it: instances started, completed,
//! cancelled and failed per few seconds, and how long the ended ones took.
//!
//! Counted by when things happened (an instance's own times), not by when the model heard of
//! them: a model that restores the state topic after a restart shows the same minutes as one
//! that watched them. What happened before the window is not counted.

use std::collections::BTreeMap;

use serde::Serialize;

/// Seconds per sample.
pub const BUCKET_SECONDS: i64 = 5;
/// How many samples are kept: 15 minutes.
const KEPT: i64 = 180;

/// Upper bounds (ms) of the duration histogram: ×1.25 from 1 ms, up to about 10 minutes.
fn bounds() -> &'static [u64] {
    static BOUNDS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| {
        let mut bounds = Vec::new();
        let mut b = 1.0_f64;
        while b < 600_000.0 {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "positive and far below u64::MAX"
            )]
            let ms = b.ceil() as u64;
            if bounds.last() != Some(&ms) {
                bounds.push(ms);
            }
            b *= 1.25;
        }
        bounds.push(u64::MAX);
        bounds
    })
}

/// What happened to an instance, counted in the sample of its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happened {
    /// It started.
    Started,
    /// It completed, after this many milliseconds.
    Completed(u64),
    /// It was cancelled (compensated), after this many milliseconds.
    Cancelled(u64),
    /// A compensation gave up.
    Failed,
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    started: u64,
    completed: u64,
    cancelled: u64,
    failed: u64,
    /// Ended instances' durations, per [`bounds`].
    durations: Vec<u64>,
}

impl Bucket {
    fn observe(&mut self, ms: u64) {
        let bounds = bounds();
        if self.durations.is_empty() {
            self.durations = vec![0; bounds.len()];
        }
        let at = bounds.partition_point(|b| *b < ms);
        self.durations[at.min(bounds.len() - 1)] += 1;
    }

    /// The duration under which `q` of the ended instances fell (the bucket's upper bound).
    fn quantile(&self, q: f64) -> Option<u64> {
        let total: u64 = self.durations.iter().sum();
        if total == 0 {
            return None;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank between 1 and total"
        )]
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in self.durations.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bounds().get(i).copied();
            }
        }
        None
    }
}

/// One sample of the load, per second.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// The start of the sample (Unix ms).
    pub at: i64,
    /// Instances started per second (one per order accepted).
    pub started: f64,
    /// Instances completed per second.
    pub completed: f64,
    /// Instances cancelled per second.
    pub cancelled: f64,
    /// Instances that became `FAILED` per second.
    pub failed: f64,
    /// Median time from start to end of the instances that ended in it (ms, the upper bound of
    /// a ×1.25 histogram bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<u64>,
    /// 99th percentile of the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
}

/// The samples of the last 15 minutes.
#[derive(Debug, Default)]
pub struct Load {
    buckets: BTreeMap<i64, Bucket>,
}

impl Load {
    /// Counts `what`, which happened at `at_ms` (Unix ms), seen at `now_ms`.
    pub fn count(&mut self, what: Happened, at_ms: i64, now_ms: i64) {
        let oldest = now_ms.div_euclid(1000 * BUCKET_SECONDS) - KEPT + 1;
        let key = at_ms.div_euclid(1000 * BUCKET_SECONDS);
        if key < oldest {
            return;
        }
        let bucket = self.buckets.entry(key).or_default();
        match what {
            Happened::Started => bucket.started += 1,
            Happened::Completed(ms) => {
                bucket.completed += 1;
                bucket.observe(ms);
            }
            Happened::Cancelled(ms) => {
                bucket.cancelled += 1;
                bucket.observe(ms);
            }
            Happened::Failed => bucket.failed += 1,
        }
        // Forget what slid out of the window.
        while self
            .buckets
            .first_key_value()
            .is_some_and(|(k, _)| *k < oldest)
        {
            self.buckets.pop_first();
        }
    }

    /// The samples of the last `minutes` (at most 15) up to `now_ms`, oldest first, one per
    /// [`BUCKET_SECONDS`] including the empty ones; the sample still filling is left out.
    pub fn samples(&self, minutes: i64, now_ms: i64) -> Vec<Sample> {
        let now = now_ms.div_euclid(1000 * BUCKET_SECONDS);
        let count = (minutes.clamp(1, 15) * 60 / BUCKET_SECONDS).min(KEPT - 1);
        #[allow(clippy::cast_precision_loss, reason = "counts per few seconds")]
        let rate = |n: u64| n as f64 / BUCKET_SECONDS as f64;
        let empty = Bucket::default();
        (now - count..now)
            .map(|key| {
                let b = self.buckets.get(&key).unwrap_or(&empty);
                Sample {
                    at: key * 1000 * BUCKET_SECONDS,
                    started: rate(b.started),
                    completed: rate(b.completed),
                    cancelled: rate(b.cancelled),
                    failed: rate(b.failed),
                    p50_ms: b.quantile(0.5),
                    p99_ms: b.quantile(0.99),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::float_cmp,
        reason = "test code: a panic is the failure report; rates of small counts are exact"
    )]

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn counts_land_in_the_sample_of_their_own_time_as_rates() {
        let mut load = Load::default();
        for i in 0..10 {
            load.count(Happened::Started, NOW - 20_000 + i, NOW);
        }
        load.count(Happened::Completed(40), NOW - 20_000, NOW);
        load.count(Happened::Cancelled(900), NOW - 6_000, NOW);
        load.count(Happened::Failed, NOW - 6_000, NOW);
        let samples = load.samples(1, NOW);
        assert_eq!(samples.len(), 12, "a minute of 5 s samples");
        let of = |at: i64| {
            samples
                .iter()
                .find(|s| s.at <= at && at < s.at + 5_000)
                .unwrap()
        };
        let early = of(NOW - 20_000);
        assert_eq!(early.started, 2.0);
        assert_eq!(early.completed, 0.2);
        let p50 = early.p50_ms.unwrap();
        assert!(
            (40..=50).contains(&p50),
            "40 ms reads as its bucket's bound: {p50}"
        );
        let late = of(NOW - 6_000);
        assert_eq!((late.cancelled, late.failed), (0.2, 0.2));
        assert!(late.p99_ms.unwrap() >= 900 && late.p99_ms.unwrap() < 1125);
        let quiet = of(NOW - 40_000);
        assert_eq!((quiet.started, quiet.p50_ms), (0.0, None));
    }

    #[test]
    fn what_is_older_than_the_window_is_neither_counted_nor_kept() {
        let mut load = Load::default();
        load.count(Happened::Started, NOW - 16 * 60_000, NOW);
        assert!(load.buckets.is_empty());
        load.count(Happened::Started, NOW - 10 * 60_000, NOW);
        load.count(Happened::Started, NOW, NOW + 10 * 60_000);
        assert_eq!(load.buckets.len(), 1, "the first slid out of the window");
    }

    #[test]
    fn quantiles_follow_the_durations() {
        let mut load = Load::default();
        for ms in 1..=100 {
            load.count(Happened::Completed(ms * 10), NOW - 3_000, NOW);
        }
        let sample = load.samples(1, NOW).into_iter().last().unwrap();
        let (p50, p99) = (sample.p50_ms.unwrap(), sample.p99_ms.unwrap());
        assert!((500..=625).contains(&p50), "{p50}");
        assert!((990..=1250).contains(&p99), "{p99}");
    }
}
