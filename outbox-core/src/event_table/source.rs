//! What an event-table relay reads from: the [`LogSource`] trait and what a read returns.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Checkpoint, GapOracle, ReadPlan};
use crate::envelope::{Envelope, EventId};
use crate::error::{Error, Result};

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
    /// an error of kind [`ErrorKind::LeaseLost`](crate::ErrorKind::LeaseLost)).
    fn save(
        &self,
        owner: &str,
        lease_for: Duration,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Gives the lease up so another relay may take over at once.
    fn release(&self, owner: &str) -> impl Future<Output = Result<()>> + Send;
}
