//! Metric hooks the relay calls; plug in Prometheus, StatsD or anything else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;
use crate::store::BacklogStats;

/// Called by the relay as it works. Every method has an empty default.
pub trait RelayMetrics: Send + Sync {
    /// A claim returned `rows` rows (0 for an empty claim).
    fn claimed(&self, rows: usize) {
        let _ = rows;
    }
    /// A publish call took `latency` and published `events` of its events.
    fn published(&self, events: usize, latency: Duration) {
        let _ = (events, latency);
    }
    /// `events` failed and were scheduled for another attempt.
    fn retried(&self, events: usize) {
        let _ = events;
    }
    /// `events` were moved to the dead letters.
    fn dead_lettered(&self, events: usize) {
        let _ = events;
    }
    /// `rows` marks were refused because the lease had been lost.
    fn fenced(&self, rows: u64) {
        let _ = rows;
    }
    /// `events` were acknowledged by the broker after an earlier event of their key in the
    /// same call failed (ordered runs only; see [`Publisher::ordered_runs`]).
    ///
    /// [`Publisher::ordered_runs`]: crate::Publisher::ordered_runs
    fn out_of_order(&self, events: usize) {
        let _ = events;
    }
    /// A store operation failed.
    fn store_error(&self, error: &Error) {
        let _ = error;
    }
    /// A backlog sample.
    fn backlog(&self, stats: &BacklogStats) {
        let _ = stats;
    }
}

/// Metrics that go nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl RelayMetrics for NoMetrics {}

/// Counters in atomics; [`CountingMetrics::snapshot`] reads them.
#[derive(Debug, Default)]
pub struct CountingMetrics {
    claims: AtomicU64,
    claimed_rows: AtomicU64,
    published: AtomicU64,
    publish_calls: AtomicU64,
    publish_micros: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    fenced: AtomicU64,
    out_of_order: AtomicU64,
    store_errors: AtomicU64,
    backlog_pending: AtomicU64,
}

/// A copy of [`CountingMetrics`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Claims made (including empty ones).
    pub claims: u64,
    /// Rows claimed.
    pub claimed_rows: u64,
    /// Events published.
    pub published: u64,
    /// Publish calls.
    pub publish_calls: u64,
    /// Total time in publish calls, in microseconds.
    pub publish_micros: u64,
    /// Events scheduled for retry.
    pub retried: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Marks refused by fencing.
    pub fenced: u64,
    /// Events acknowledged ahead of an earlier event of their key that failed.
    pub out_of_order: u64,
    /// Store errors.
    pub store_errors: u64,
    /// Pending rows at the latest backlog sample.
    pub backlog_pending: u64,
}

impl CountingMetrics {
    /// Reads the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            claims: r(&self.claims),
            claimed_rows: r(&self.claimed_rows),
            published: r(&self.published),
            publish_calls: r(&self.publish_calls),
            publish_micros: r(&self.publish_micros),
            retried: r(&self.retried),
            dead_lettered: r(&self.dead_lettered),
            fenced: r(&self.fenced),
            out_of_order: r(&self.out_of_order),
            store_errors: r(&self.store_errors),
            backlog_pending: r(&self.backlog_pending),
        }
    }
}

impl RelayMetrics for CountingMetrics {
    fn claimed(&self, rows: usize) {
        self.claims.fetch_add(1, Ordering::Relaxed);
        self.claimed_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }
    fn published(&self, events: usize, latency: Duration) {
        self.published.fetch_add(events as u64, Ordering::Relaxed);
        self.publish_calls.fetch_add(1, Ordering::Relaxed);
        self.publish_micros.fetch_add(
            latency.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
    fn retried(&self, events: usize) {
        self.retried.fetch_add(events as u64, Ordering::Relaxed);
    }
    fn dead_lettered(&self, events: usize) {
        self.dead_lettered
            .fetch_add(events as u64, Ordering::Relaxed);
    }
    fn fenced(&self, rows: u64) {
        self.fenced.fetch_add(rows, Ordering::Relaxed);
    }
    fn out_of_order(&self, events: usize) {
        self.out_of_order
            .fetch_add(events as u64, Ordering::Relaxed);
    }
    fn store_error(&self, _error: &Error) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }
    fn backlog(&self, stats: &BacklogStats) {
        self.backlog_pending.store(stats.pending, Ordering::Relaxed);
    }
}
