//! The gap-aware checkpoint: how far an event-table relay got, and what it still awaits.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::LogRelayConfig;

/// What the database can say about transactions that might still fill a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapOracle {
    /// Commits are serialised (SQLite): a gap is final as soon as it is seen.
    Serialized,
    /// A monotonic transaction horizon (PostgreSQL transaction ids, MySQL transaction start
    /// times).
    Horizon {
        /// The horizon to remember for gaps found by this read: any transaction that could
        /// fill them is below it.
        marker: i64,
        /// The oldest transaction still running, on the same scale; `None` if none is.
        oldest_running: Option<i64>,
    },
    /// The database cannot tell: gaps close after the timeout.
    Unknown,
}

/// What the next read must cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadPlan {
    /// Rows after this position; `None` while retries are pending (only gaps and retries
    /// are read then).
    pub after: Option<i64>,
    /// Inclusive position ranges still awaited.
    pub ranges: Vec<(i64, i64)>,
    /// Single positions to read again (retries).
    pub positions: Vec<i64>,
}

impl ReadPlan {
    /// Whether `position` falls in the plan.
    pub fn covers(&self, position: i64) -> bool {
        self.after.is_some_and(|a| position > a)
            || self
                .ranges
                .iter()
                .any(|(f, t)| (*f..=*t).contains(&position))
            || self.positions.contains(&position)
    }
}

/// A range of positions that was missing when read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// First missing position.
    pub from: i64,
    /// Last missing position (inclusive).
    pub to: i64,
    /// When the gap was first seen (database clock).
    pub seen_at: DateTime<Utc>,
    /// The transaction horizon when first seen ([`GapOracle::Horizon::marker`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<i64>,
}

/// A row read but not yet published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Its position.
    pub position: i64,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A row skipped for good (refused by the broker, attempts exhausted, undecodable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRecord {
    /// Its position.
    pub position: i64,
    /// Why.
    pub error: String,
    /// When (database clock).
    pub at: DateTime<Utc>,
}

/// How far a log relay got. Stored as JSON in the checkpoint row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Checkpoint {
    /// The highest position read.
    pub high: i64,
    /// Missing ranges below `high`, still awaited, in position order.
    pub gaps: Vec<Gap>,
    /// Rows read and not yet published, in position order.
    pub retries: Vec<PendingRecord>,
    /// The most recent rows skipped for good (at most [`MAX_DEAD_LISTED`]).
    pub dead: Vec<DeadRecord>,
    /// All rows ever skipped for good.
    pub dead_total: u64,
}

/// How many skipped rows a checkpoint lists.
pub const MAX_DEAD_LISTED: usize = 1000;

impl Checkpoint {
    /// A checkpoint that starts reading after `position` (0 for the whole table when
    /// positions start at 1).
    pub fn starting_after(position: i64) -> Self {
        Checkpoint {
            high: position,
            ..Checkpoint::default()
        }
    }

    /// What the next read must cover.
    pub fn plan(&self) -> ReadPlan {
        ReadPlan {
            after: self.retries.is_empty().then_some(self.high),
            ranges: self.gaps.iter().map(|g| (g.from, g.to)).collect(),
            positions: self.retries.iter().map(|r| r.position).collect(),
        }
    }

    /// Takes note of the positions a read under `plan` returned: new gaps between `high`
    /// and the rows above it, gaps filled by late rows. `seen` must be sorted.
    pub fn observe(
        &mut self,
        plan: &ReadPlan,
        seen: &[i64],
        now: DateTime<Utc>,
        oracle: GapOracle,
    ) {
        let horizon = match oracle {
            GapOracle::Horizon { marker, .. } => Some(marker),
            _ => None,
        };
        // Fill gaps: remove seen positions from the ranges.
        if !self.gaps.is_empty() {
            let mut next = Vec::with_capacity(self.gaps.len());
            for gap in self.gaps.drain(..) {
                let mut from = gap.from;
                for &p in seen.iter().filter(|p| (gap.from..=gap.to).contains(*p)) {
                    if p > from {
                        next.push(Gap {
                            from,
                            to: p - 1,
                            ..gap.clone()
                        });
                    }
                    from = p + 1;
                }
                if from <= gap.to {
                    next.push(Gap { from, ..gap });
                }
            }
            self.gaps = next;
        }
        // New rows above `high`: anything skipped between them is a new gap.
        if plan.after.is_some() {
            let mut last = self.high;
            for &p in seen.iter().filter(|p| **p > self.high) {
                if p > last + 1 {
                    self.gaps.push(Gap {
                        from: last + 1,
                        to: p - 1,
                        seen_at: now,
                        horizon,
                    });
                }
                last = p;
            }
            self.high = last;
        }
        self.gaps.sort_by_key(|g| g.from);
    }

    /// Closes the gaps the database vouches for (see the module docs) and those past the
    /// timeout; trims the list to `max_gaps`. Returns the gaps closed by timeout or trimming
    /// (rows committed into them later would be missed), for logging.
    ///
    /// `read_through` is the last position the read could vouch for: when a read was cut
    /// short by its limit, gaps above its last row were not looked at and stay open.
    pub fn close_gaps(
        &mut self,
        now: DateTime<Utc>,
        oracle: GapOracle,
        read_through: Option<i64>,
        cfg: &LogRelayConfig,
    ) -> Vec<Gap> {
        let grace = chrono::Duration::from_std(cfg.gap_grace).unwrap_or(chrono::Duration::MAX);
        let limit = chrono::Duration::from_std(cfg.gap_timeout).unwrap_or(chrono::Duration::MAX);
        let mut abandoned = Vec::new();
        self.gaps.retain(|g| {
            if read_through.is_some_and(|last| g.to > last) {
                return true;
            }
            let age = now.signed_duration_since(g.seen_at);
            let vouched = match (oracle, g.horizon) {
                (GapOracle::Serialized, _) => true,
                (GapOracle::Horizon { oldest_running, .. }, Some(h)) => {
                    oldest_running.is_none_or(|o| o >= h)
                }
                _ => false,
            };
            if vouched && age >= grace {
                return false;
            }
            if age >= limit {
                abandoned.push(g.clone());
                return false;
            }
            true
        });
        if self.gaps.len() > cfg.max_gaps {
            let mut by_age: Vec<usize> = (0..self.gaps.len()).collect();
            by_age.sort_by_key(|i| self.gaps[*i].seen_at);
            let drop: HashSet<usize> = by_age[..self.gaps.len() - cfg.max_gaps]
                .iter()
                .copied()
                .collect();
            let mut kept = Vec::with_capacity(cfg.max_gaps);
            for (i, g) in self.gaps.drain(..).enumerate() {
                if drop.contains(&i) {
                    abandoned.push(g);
                } else {
                    kept.push(g);
                }
            }
            self.gaps = kept;
        }
        abandoned
    }

    pub(super) fn add_dead(&mut self, position: i64, error: String, at: DateTime<Utc>) {
        self.dead.push(DeadRecord {
            position,
            error,
            at,
        });
        self.dead_total += 1;
        if self.dead.len() > MAX_DEAD_LISTED {
            let excess = self.dead.len() - MAX_DEAD_LISTED;
            self.dead.drain(..excess);
        }
    }

    /// Moves skipped rows back to the retries so the relay publishes them again (after the
    /// cause was fixed). Returns how many were listed.
    pub fn requeue_dead(&mut self, positions: &[i64]) -> usize {
        let mut moved = 0;
        self.dead.retain(|d| {
            if positions.contains(&d.position) {
                moved += 1;
                false
            } else {
                true
            }
        });
        for &p in positions {
            if !self.retries.iter().any(|r| r.position == p) && p <= self.high {
                self.retries.push(PendingRecord {
                    position: p,
                    attempts: 0,
                    last_error: None,
                });
            }
        }
        self.retries.sort_by_key(|r| r.position);
        moved
    }
}
