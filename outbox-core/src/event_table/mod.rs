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
//! Rows are published in position order within a read, through the same publish engine as
//! the outbox relay ([`crate::engine`]): in one call for a publisher that keeps a link's
//! order, else in waves that never hold two rows of one ordering key. A row that commits late into a gap is published when it
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

mod checkpoint;
mod memory;
mod relay;
mod source;

pub use checkpoint::{
    Checkpoint, DeadRecord, Gap, GapOracle, MAX_DEAD_LISTED, PendingRecord, ReadPlan,
};
pub use memory::{InMemoryLog, LogTransaction, OracleMode};
pub use relay::{LogRelay, LogRelayConfig, LogReport, owner_name};
pub use source::{LogRead, LogRecord, LogSource, UndecodableRecord, derived_event_id};
