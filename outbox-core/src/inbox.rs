//! The inbox: consumer-side deduplication by event id.
//!
//! The relay delivers at least once, so a consumer can see an event twice (a redelivery
//! after a lost acknowledgement, a relay that crashed between publish and mark). The inbox
//! makes the consumer's *effect* happen once: inside the transaction that applies the
//! business change, the consumer records `(consumer, event id)` in the inbox table and
//! learns whether that pair was already there.
//!
//! 1. begin the transaction;
//! 2. insert the `(consumer, event id)` record, doing nothing on a conflict: one row
//!    inserted means first time (apply the business change), none means already processed
//!    (change nothing);
//! 3. commit: the dedupe record and the change commit together;
//! 4. acknowledge the message to the broker.
//!
//! Two deliveries of one event processed at the same time serialise on the primary key: the
//! second insert waits for the first transaction and then finds the row (it committed) or
//! inserts it (it rolled back). A rolled-back transaction leaves no record, so the next
//! delivery processes the event again.
//!
//! Run the consumer's transaction at the database's default isolation (READ COMMITTED on
//! PostgreSQL, REPEATABLE READ on InnoDB). Under PostgreSQL's REPEATABLE READ or
//! SERIALIZABLE, a concurrent duplicate fails with a serialization error instead of waiting;
//! that error is retryable (roll back and process the delivery again, which then finds the
//! record).
//!
//! This module holds what every backend shares: the outcome, the table's default name and
//! the consumer name's rules. The statement text per dialect is in `outbox-sql`;
//! `outbox-sqlx`, `outbox-diesel` and `outbox-seaorm` run it inside the user's own
//! transaction.

use crate::error::{Error, ErrorKind};
use crate::schema::TableName;

/// The inbox table's default name.
pub const DEFAULT_INBOX_TABLE: &str = "outbox_inbox";

/// The longest consumer name, in bytes (it is part of the primary key; MySQL limits key
/// length).
pub const MAX_CONSUMER_BYTES: usize = 190;

/// Whether an event was seen before by this consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a duplicate must not be processed again"]
#[non_exhaustive]
pub enum InboxOutcome {
    /// First delivery: apply the business change in the same transaction.
    New,
    /// Already processed (and committed) by this consumer: skip it, acknowledge it.
    Duplicate,
}

impl InboxOutcome {
    /// Whether this is the first delivery.
    pub fn is_new(self) -> bool {
        self == InboxOutcome::New
    }

    /// The outcome of an insert that affected `rows` rows.
    pub fn from_rows_affected(rows: u64) -> Self {
        if rows == 0 {
            InboxOutcome::Duplicate
        } else {
            InboxOutcome::New
        }
    }
}

/// The count of a purge run in batches: each statement deletes at most
/// [`size`](Self::size) rows, and the purge ends with the first batch that deletes fewer.
///
/// ```
/// let mut purge = outbox_core::inbox::PurgeBatches::new(100);
/// assert_eq!(purge.add(100), None); // a full batch: go on
/// assert_eq!(purge.add(7), Some(107)); // done, 107 deleted in all
/// ```
#[derive(Clone, Copy, Debug)]
pub struct PurgeBatches {
    size: usize,
    total: u64,
}

impl PurgeBatches {
    /// Batches of `size` rows (at least 1).
    pub fn new(size: usize) -> Self {
        PurgeBatches {
            size: size.max(1),
            total: 0,
        }
    }

    /// Rows per statement.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Counts a batch that deleted `rows`; the total once the purge is done.
    pub fn add(&mut self, rows: u64) -> Option<u64> {
        self.total += rows;
        (rows < self.size as u64).then_some(self.total)
    }
}

/// Checks a consumer name: 1 to [`MAX_CONSUMER_BYTES`] bytes, no control characters.
pub fn validate_consumer(consumer: &str) -> Result<(), Error> {
    if consumer.is_empty() || consumer.len() > MAX_CONSUMER_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "inbox consumer name must be 1 to {MAX_CONSUMER_BYTES} bytes, got {}",
                consumer.len()
            ),
        ));
    }
    if consumer.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("inbox consumer name {consumer:?} contains a control character"),
        ));
    }
    Ok(())
}

/// The default inbox table name.
pub fn default_inbox_table() -> TableName {
    // The constant is a valid identifier; parsing it cannot fail.
    TableName::parse(DEFAULT_INBOX_TABLE).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_checked() {
        assert!(validate_consumer("shipping").is_ok());
        let long = "x".repeat(MAX_CONSUMER_BYTES + 1);
        let err = validate_consumer(&long).expect_err("too long");
        assert!(err.message().contains("190"), "{err}");
        assert!(validate_consumer("").is_err());
        assert!(validate_consumer("a\nb").is_err());
    }

    #[test]
    fn outcome_from_rows() {
        assert_eq!(InboxOutcome::from_rows_affected(1), InboxOutcome::New);
        assert_eq!(InboxOutcome::from_rows_affected(0), InboxOutcome::Duplicate);
        assert!(InboxOutcome::New.is_new());
    }
}
