//! Relaying an append-only event table (an event store, a ledger) without an outbox copy.
//!
//! When a service's table already *is* a log of events, its rows can be published as they
//! are: the user maps their columns to the envelope, and the relay remembers how far it got
//! in a **checkpoint** row instead of marking rows. The checkpoint is saved only after the
//! broker acknowledged, so a crash replays from the last checkpoint (at least once).
//!
//! # Out-of-order commits and gaps
//!
//! A position (sequence, identity, auto-increment) is handed out when a row is inserted, not
//! when its transaction commits. Writer A can take position 7, writer B position 8, and B
//! can commit first: a reader then sees 8 but not 7. A checkpoint that were a single "last
//! position" would move past 7 and never publish it. So the checkpoint is *gap-aware*:
//!
//! - `high`: the highest position read so far;
//! - `gaps`: ranges below `high` that were missing when read, with when they were first
//!   seen and the database's transaction horizon at that moment;
//! - `retries`: rows read but not yet published (a retryable broker failure);
//! - `dead`: rows the broker refused for good, skipped and listed.
//!
//! Each read asks for `position > high` plus every open gap plus every retry, in position
//! order. A row that commits late into a gap is read, published, and its gap closes.
//!
//! A gap can also be permanent: a rolled-back insert, a sequence that skipped values. The
//! relay closes a gap when the database can vouch that no transaction that could still fill
//! it is running ([`GapOracle`]):
//!
//! - **PostgreSQL**: the gap remembers `pg_snapshot_xmax` of the read that found it. Once
//!   the oldest running transaction (`pg_snapshot_xmin`) is at or past it, every writer that
//!   could have held the missing position has ended, and the gap closes (after a short grace
//!   period). A long-running writer keeps its gap open however long it runs.
//! - **MySQL/MariaDB**: the same with the start time of the oldest InnoDB transaction (from
//!   `information_schema.innodb_trx`, which needs the `PROCESS` privilege; without it only
//!   the timeout below applies).
//! - **SQLite**: writers are serialised, so a position that is missing once the following
//!   one is visible will never appear; such gaps close after the grace period.
//!
//! Where the database cannot tell, a gap closes after `gap_timeout`; a transaction that
//! commits later than that into the gap is then missed, and the relay logs the closed range
//! at `warn` so it can be replayed. Set the timeout above your longest write transaction.
//!
//! # Ordering and duplicates
//!
//! Rows are published in position order within a read; one publish call never holds two
//! rows of one ordering key. A row that commits late into a gap is published when it
//! becomes visible, so order across keys follows commit visibility. A retryable failure
//! holds back the rest of its key, and while any retry is pending the relay reads only gaps
//! and retries (not new rows), so the backlog it holds stays bounded by the batch size.
//!
//! A row is published again only when the relay stops after the broker accepted it and
//! before the checkpoint was saved, or when the broker's acknowledgement was lost (a
//! timeout). Every copy carries the same event id: the mapped id column, or an id derived
//! from the source name and the position ([`derived_event_id`]).
//!
//! # One relay per checkpoint
//!
//! The checkpoint row carries an owner and a lease. The owner is `name#instance`: the name
//! is the relay's stable name (a host or pod), the instance is new for every relay object.
//! A relay takes the checkpoint when it is free, expired, or held by an earlier instance of
//! the same name (a restart), renews it on each round, and every save is fenced by the full
//! owner, so a save still in flight from a crashed instance cannot land after the restart's.
//! A relay that
//! lost its lease cannot move the checkpoint.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::envelope::{Envelope, EventId};
use crate::error::{Error, ErrorKind, Result};
use crate::publisher::{PublishOutcome, Publisher};
use crate::retry::RetryPolicy;

mod memory;
pub use memory::{InMemoryLog, LogTransaction, OracleMode};

/// A row of the event table, mapped to an envelope.
#[derive(Clone, Debug)]
pub struct LogRecord {
    /// The row's position (sequence).
    pub position: i64,
    /// The event.
    pub envelope: Envelope,
}

/// A row that could not be mapped to an envelope.
#[derive(Debug)]
pub struct UndecodableRecord {
    /// The row's position.
    pub position: i64,
    /// What was wrong, naming the column.
    pub error: Error,
}

/// What the database can say about transactions that might still fill a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The result of one read.
#[derive(Debug)]
pub struct LogRead {
    /// Rows read, in position order.
    pub records: Vec<LogRecord>,
    /// Rows that could not be mapped.
    pub undecodable: Vec<UndecodableRecord>,
    /// The database clock at the read.
    pub now: DateTime<Utc>,
    /// The transaction horizon taken with the read.
    pub oracle: GapOracle,
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
    /// A SQL condition on `column` selecting exactly this plan. Positions are integers, so
    /// they are written into the text; `column` must already be a quoted identifier.
    pub fn sql_condition(&self, column: &str) -> String {
        let mut terms = Vec::new();
        if let Some(after) = self.after {
            terms.push(format!("{column} > {after}"));
        }
        for (from, to) in &self.ranges {
            if from == to {
                terms.push(format!("{column} = {from}"));
            } else {
                terms.push(format!("{column} BETWEEN {from} AND {to}"));
            }
        }
        if !self.positions.is_empty() {
            let list: Vec<String> = self.positions.iter().map(i64::to_string).collect();
            terms.push(format!("{column} IN ({})", list.join(", ")));
        }
        if terms.is_empty() {
            "1 = 0".to_owned()
        } else {
            format!("({})", terms.join(" OR "))
        }
    }

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

    fn add_dead(&mut self, position: i64, error: String, at: DateTime<Utc>) {
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

/// The id of an event whose table has no id column: a name-based UUID (version 5) of the
/// source name and the position, so every copy of a row carries the same id.
pub fn derived_event_id(source: &str, position: i64) -> EventId {
    // A fixed namespace for this toolkit's derived ids.
    const NAMESPACE: Uuid = Uuid::from_u128(0x6f75_7462_6f78_4c6f_9e1d_7a2b_3c4d_5e6f);
    let name = format!("{source}/{position}");
    EventId::from_uuid(Uuid::new_v5(&NAMESPACE, name.as_bytes()))
}

/// An append-only table the log relay reads, with its checkpoint row.
pub trait LogSource: Send + Sync {
    /// The checkpoint's name (one row per name).
    fn name(&self) -> &str;

    /// Takes or renews the checkpoint for `owner` (`name#instance`, see the module docs) for
    /// `lease_for` and returns it; `None` when an owner of another name holds an unexpired
    /// lease. An owner of the same name is replaced at once. A missing row is created at the
    /// source's starting position.
    fn acquire(
        &self,
        owner: &str,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Option<Checkpoint>>> + Send;

    /// Reads up to `limit` rows the plan covers, in position order, in one snapshot, with
    /// the database clock and transaction horizon.
    ///
    /// The horizon must be consistent with the snapshot: `oldest_running` measured no later
    /// than the snapshot was taken (so a transaction seen as ended has its rows in the
    /// read), and `marker` no earlier (so every writer of a missing row is below it).
    fn read(&self, plan: &ReadPlan, limit: usize) -> impl Future<Output = Result<LogRead>> + Send;

    /// Saves the checkpoint and renews the lease, only if exactly `owner` still holds it (otherwise
    /// an error of kind [`ErrorKind::LeaseLost`]).
    fn save(
        &self,
        owner: &str,
        lease_for: Duration,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Gives the lease up so another relay may take over at once.
    fn release(&self, owner: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Log relay settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogRelayConfig {
    /// Most rows per read (default 500).
    pub batch_size: usize,
    /// How long the checkpoint is held between rounds (default 30 s).
    #[serde(with = "crate::duration_serde")]
    pub lease: Duration,
    /// Longest wait for one publish call; shorter than `lease` (default 10 s).
    #[serde(with = "crate::duration_serde")]
    pub publish_timeout: Duration,
    /// Wait after a read that found nothing; doubles while idle (default 100 ms).
    #[serde(with = "crate::duration_serde")]
    pub poll_interval: Duration,
    /// Longest wait between polls while idle (default 1 s).
    #[serde(with = "crate::duration_serde")]
    pub max_poll_interval: Duration,
    /// How long a gap the database vouches for stays open anyway (default 1 s).
    #[serde(with = "crate::duration_serde")]
    pub gap_grace: Duration,
    /// How long a gap stays open when the database cannot vouch for it (default 5 min).
    #[serde(with = "crate::duration_serde")]
    pub gap_timeout: Duration,
    /// Most open gaps kept; the oldest beyond this are closed (default 10,000).
    pub max_gaps: usize,
    /// Back-off between attempts and when a row is given up.
    pub retry: RetryPolicy,
}

impl Default for LogRelayConfig {
    fn default() -> Self {
        LogRelayConfig {
            batch_size: 500,
            lease: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            max_poll_interval: Duration::from_secs(1),
            gap_grace: Duration::from_secs(1),
            gap_timeout: Duration::from_secs(300),
            max_gaps: 10_000,
            retry: RetryPolicy::default(),
        }
    }
}

impl LogRelayConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("log relay setting `{field}` {why}"),
            ))
        };
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.publish_timeout.is_zero() || self.publish_timeout >= self.lease {
            return bad(
                "publish_timeout",
                "must be greater than zero and shorter than `lease`",
            );
        }
        if self.poll_interval.is_zero() || self.poll_interval > self.max_poll_interval {
            return bad(
                "poll_interval",
                "must be greater than zero and not exceed `max_poll_interval`",
            );
        }
        if self.gap_timeout < self.gap_grace {
            return bad("gap_timeout", "must not be shorter than `gap_grace`");
        }
        if self.max_gaps == 0 {
            return bad("max_gaps", "must be at least 1");
        }
        self.retry.validate()
    }
}

/// What one round of the log relay came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogReport {
    /// Rows read.
    pub read: usize,
    /// Rows published.
    pub published: usize,
    /// Rows left for a retry (failed, or held behind a failure of their key).
    pub retried: usize,
    /// The most failed attempts of any row left for a retry (the back-off step).
    pub retry_attempts: u32,
    /// Rows skipped for good.
    pub dead: usize,
    /// Gaps open after the round.
    pub open_gaps: usize,
    /// Gaps closed by timeout or trimming (rows committed into them later are missed).
    pub abandoned_gaps: usize,
    /// Whether another relay holds the checkpoint (nothing was done).
    pub not_owner: bool,
}

impl LogReport {
    fn add(&mut self, o: &LogReport) {
        self.read += o.read;
        self.published += o.published;
        self.retried += o.retried;
        self.retry_attempts = o.retry_attempts;
        self.dead += o.dead;
        self.open_gaps = o.open_gaps;
        self.abandoned_gaps += o.abandoned_gaps;
        self.not_owner = o.not_owner;
    }
}

/// Moves rows from a [`LogSource`] to a [`Publisher`]. See the module docs.
pub struct LogRelay<S, P> {
    source: S,
    publisher: P,
    config: LogRelayConfig,
    owner: String,
    instance: String,
}

/// The name part of an owner `name#instance`.
pub fn owner_name(owner: &str) -> &str {
    owner.rsplit_once('#').map_or(owner, |(name, _)| name)
}

impl<S: LogSource, P: Publisher> LogRelay<S, P> {
    /// A relay over `source` and `publisher`; the config is validated. The relay's owner
    /// name is random; see [`with_owner`](Self::with_owner).
    pub fn new(source: S, publisher: P, config: LogRelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(LogRelay {
            source,
            publisher,
            config,
            owner: format!("relay-{}", Uuid::new_v4().simple()),
            instance: Uuid::new_v4().simple().to_string(),
        })
    }

    /// Names this relay as the checkpoint's owner (a host name, a pod name). A restarted
    /// relay with the same owner name takes its checkpoint back without waiting for the
    /// lease to expire.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into().replace('#', "_");
        self
    }

    fn holder(&self) -> String {
        format!("{}#{}", self.owner, self.instance)
    }

    /// The settings.
    pub fn config(&self) -> &LogRelayConfig {
        &self.config
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// One round: take the checkpoint, read, publish, save. A failed publish is recorded in
    /// the checkpoint (retry or dead), not returned as an error; errors are the source's.
    pub async fn run_once(&self) -> Result<LogReport> {
        let cfg = &self.config;
        let Some(mut cp) = self.source.acquire(&self.holder(), cfg.lease).await? else {
            return Ok(LogReport {
                not_owner: true,
                ..LogReport::default()
            });
        };
        let plan = cp.plan();
        let read = self.source.read(&plan, cfg.batch_size).await?;
        let mut report = LogReport {
            read: read.records.len() + read.undecodable.len(),
            ..LogReport::default()
        };
        let mut seen: Vec<i64> = read
            .records
            .iter()
            .map(|r| r.position)
            .chain(read.undecodable.iter().map(|u| u.position))
            .filter(|p| plan.covers(*p))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        cp.observe(&plan, &seen, read.now, read.oracle);

        // Attempts carried over from earlier rounds.
        let mut attempts: BTreeMap<i64, (u32, Option<String>)> = cp
            .retries
            .drain(..)
            .map(|r| (r.position, (r.attempts, r.last_error)))
            .collect();
        for u in &read.undecodable {
            warn!(source = self.source.name(), position = u.position, error = %u.error, "row skipped: it cannot be mapped to an event");
            attempts.remove(&u.position);
            cp.add_dead(u.position, u.error.to_report(), read.now);
            report.dead += 1;
        }

        // Publish in waves: the n-th row of every ordering key in wave n.
        let mut records: Vec<&LogRecord> = read
            .records
            .iter()
            .filter(|r| plan.covers(r.position))
            .collect();
        records.sort_by_key(|r| r.position);
        let mut by_key: BTreeMap<&str, Vec<&LogRecord>> = BTreeMap::new();
        for r in &records {
            by_key.entry(r.envelope.ordering_key()).or_default().push(r);
        }
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut pending: Vec<PendingRecord> = Vec::new();
        let mut attempted: HashSet<i64> = HashSet::new();
        let mut wave = 0;
        loop {
            let batch: Vec<&LogRecord> = by_key
                .iter()
                .filter(|(k, _)| !blocked.contains(*k))
                .filter_map(|(_, rows)| rows.get(wave).copied())
                .collect();
            if batch.is_empty() {
                break;
            }
            let envelopes: Vec<Envelope> = batch.iter().map(|r| r.envelope.clone()).collect();
            let outcomes = match timeout(cfg.publish_timeout, self.publisher.publish(&envelopes))
                .await
            {
                Ok(o) if o.len() == envelopes.len() => o,
                Ok(o) => {
                    let msg = format!(
                        "publisher returned {} outcomes for {} events",
                        o.len(),
                        envelopes.len()
                    );
                    envelopes
                        .iter()
                        .map(|_| PublishOutcome::Failed(Error::new(ErrorKind::Other, msg.clone())))
                        .collect()
                }
                Err(_) => envelopes
                    .iter()
                    .map(|_| {
                        PublishOutcome::Failed(Error::new(ErrorKind::Timeout, "publish timed out"))
                    })
                    .collect(),
            };
            for (rec, outcome) in batch.iter().zip(outcomes) {
                attempted.insert(rec.position);
                let (before, _) = attempts.remove(&rec.position).unwrap_or((0, None));
                match outcome {
                    PublishOutcome::Published => report.published += 1,
                    PublishOutcome::Failed(e) => {
                        let n = before + 1;
                        if e.is_retryable() && !cfg.retry.exhausted(n) {
                            debug!(position = rec.position, error = %e, "publish failed; will retry");
                            pending.push(PendingRecord {
                                position: rec.position,
                                attempts: n,
                                last_error: Some(e.to_report()),
                            });
                            blocked.insert(rec.envelope.ordering_key());
                        } else {
                            warn!(source = self.source.name(), position = rec.position, event_id = %rec.envelope.id(), error = %e, "row skipped: the broker refused it");
                            cp.add_dead(rec.position, e.to_report(), read.now);
                            report.dead += 1;
                        }
                    }
                }
            }
            wave += 1;
        }
        // Rows of blocked keys not attempted, and retries not read back (yet), stay pending.
        for (key, rows) in &by_key {
            if blocked.contains(key) {
                for r in rows.iter().filter(|r| !attempted.contains(&r.position)) {
                    let (n, last) = attempts.remove(&r.position).unwrap_or((0, None));
                    pending.push(PendingRecord {
                        position: r.position,
                        attempts: n,
                        last_error: last,
                    });
                }
            }
        }
        for (position, (n, last)) in attempts {
            // A retry that was not returned by the read: the row vanished (deleted). Keep
            // it only if the read was cut short by the limit before reaching it.
            let cut_short =
                seen.len() >= cfg.batch_size && seen.last().is_some_and(|l| *l < position);
            if cut_short {
                pending.push(PendingRecord {
                    position,
                    attempts: n,
                    last_error: last,
                });
            } else {
                warn!(
                    source = self.source.name(),
                    position, "row to retry is gone from the table"
                );
            }
        }
        pending.sort_by_key(|p| p.position);
        report.retried = pending.len();
        report.retry_attempts = pending.iter().map(|p| p.attempts).max().unwrap_or(0);
        cp.retries = pending;

        let read_through =
            (report.read >= cfg.batch_size).then(|| seen.last().copied().unwrap_or(i64::MIN));
        let abandoned = cp.close_gaps(read.now, read.oracle, read_through, cfg);
        for g in &abandoned {
            warn!(
                source = self.source.name(),
                from = g.from,
                to = g.to,
                "gap closed without the database vouching for it; rows committed into it later will not be published"
            );
        }
        report.abandoned_gaps = abandoned.len();
        report.open_gaps = cp.gaps.len();
        self.source.save(&self.holder(), cfg.lease, &cp).await?;
        Ok(report)
    }

    /// Runs rounds until one reads nothing and leaves nothing to retry. For tests and tools.
    pub async fn drain(&self) -> Result<LogReport> {
        let mut total = LogReport::default();
        loop {
            let r = self.run_once().await?;
            total.add(&r);
            if r.not_owner || (r.read == 0 && r.retried == 0) {
                return Ok(total);
            }
        }
    }

    /// Runs until `shutdown` resolves, finishing the round in progress, then releases the
    /// checkpoint. Source errors are logged and retried after a back-off; they do not stop
    /// the relay.
    pub async fn run_until<F: Future<Output = ()> + Send>(self, shutdown: F) -> LogReport {
        let cfg = self.config.clone();
        let mut total = LogReport::default();
        let mut idle = cfg.poll_interval;
        let mut failures = 0u32;
        info!(source = self.source.name(), owner = %self.owner, "log relay started");
        tokio::pin!(shutdown);
        loop {
            // A round is never cut off half-way: it ends within `publish_timeout` plus two
            // database calls, so a graceful stop republishes nothing.
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                break;
            }
            let round = self.run_once().await;
            let wait = match round {
                Ok(r) => {
                    failures = 0;
                    total.add(&r);
                    if r.retried > 0 {
                        cfg.retry.delay(r.retry_attempts.max(1))
                    } else if r.read >= cfg.batch_size {
                        idle = cfg.poll_interval;
                        Duration::ZERO
                    } else if r.read > 0 {
                        idle = cfg.poll_interval;
                        cfg.poll_interval
                    } else {
                        let w = idle;
                        idle = (idle * 2).min(cfg.max_poll_interval);
                        if r.not_owner { cfg.lease / 4 } else { w }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(source = self.source.name(), error = %e, "log relay round failed");
                    cfg.retry.delay(failures)
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = sleep(wait) => {}
                }
            }
        }
        if let Err(e) = self.source.release(&self.holder()).await {
            warn!(source = self.source.name(), error = %e, "could not release the checkpoint");
        }
        info!(
            source = self.source.name(),
            published = total.published,
            "log relay stopped"
        );
        total
    }
}
