//! The inbox: consumer-side deduplication by event id.
//!
//! The relay delivers at least once, so a consumer can see an event twice (a redelivery
//! after a lost acknowledgement, a relay that crashed between publish and mark). The inbox
//! makes the consumer's *effect* happen once: inside the transaction that applies the
//! business change, the consumer records `(consumer, event id)` in the inbox table and
//! learns whether that pair was already there.
//!
//! ```text
//! BEGIN
//!   INSERT INTO outbox_inbox (consumer, event_id) ... ON CONFLICT DO NOTHING
//!   -- 1 row inserted: first time; apply the business change
//!   -- 0 rows: already processed; change nothing
//! COMMIT          -- the dedupe record and the change commit together
//! acknowledge the message to the broker
//! ```
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
//! This module holds what the database crates share: the table, its DDL on every dialect,
//! and the statements. `outbox-sqlx`, `outbox-diesel` and `outbox-seaorm` run them inside
//! the user's own transaction.

use crate::envelope::EventId;
use crate::error::{Error, ErrorKind};
use crate::schema::{Dialect, TableName};

/// The inbox table's default name.
pub const DEFAULT_INBOX_TABLE: &str = "outbox_inbox";

/// The longest consumer name, in bytes (it is part of the primary key; MySQL limits key
/// length).
pub const MAX_CONSUMER_BYTES: usize = 190;

/// Whether an event was seen before by this consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a duplicate must not be processed again"]
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

/// The event id as the inbox stores it on `dialect` (PostgreSQL binds a UUID; MySQL and
/// SQLite store the hyphenated text).
pub fn event_id_text(id: EventId) -> String {
    id.as_uuid().hyphenated().to_string()
}

/// The inbox table's statements for one table and dialect.
#[derive(Clone, Debug)]
pub struct InboxStatements {
    /// The dialect the statements are written for.
    pub dialect: Dialect,
    /// Records a delivery. Binds: consumer, event id (UUID on PostgreSQL, text elsewhere),
    /// and on SQLite the time in Unix microseconds. Affects 1 row when new, 0 when a
    /// duplicate.
    pub record: String,
    /// Whether an event was processed. Binds: consumer, event id. Returns a row if so.
    pub seen: String,
    /// Deletes up to a batch of records processed before a cut-off. Binds: the age in
    /// microseconds (PostgreSQL, MySQL) or the cut-off in Unix microseconds (SQLite), then
    /// the batch size.
    pub purge: String,
}

impl InboxStatements {
    /// The statements for `table` on `dialect`.
    pub fn new(table: &TableName, dialect: Dialect) -> Self {
        let t = table.quoted(dialect);
        match dialect {
            Dialect::Postgres => InboxStatements {
                dialect,
                record: format!(
                    "INSERT INTO {t} (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                ),
                seen: format!("SELECT 1 FROM {t} WHERE consumer = $1 AND event_id = $2"),
                purge: format!(
                    "DELETE FROM {t} WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM {t} \
                     WHERE processed_at < now() - make_interval(secs => $1::bigint / 1000000.0) LIMIT $2)"
                ),
            },
            // INSERT IGNORE also turns data errors into warnings, so callers validate the
            // consumer name (the only free-form value) before binding it.
            Dialect::MySql => InboxStatements {
                dialect,
                record: format!(
                    "INSERT IGNORE INTO {t} (consumer, event_id, processed_at) VALUES (?, ?, UTC_TIMESTAMP(6))"
                ),
                seen: format!("SELECT 1 FROM {t} WHERE consumer = ? AND event_id = ?"),
                purge: format!(
                    "DELETE FROM {t} WHERE processed_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?"
                ),
            },
            Dialect::Sqlite => InboxStatements {
                dialect,
                record: format!(
                    "INSERT INTO {t} (consumer, event_id, processed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
                ),
                seen: format!("SELECT 1 FROM {t} WHERE consumer = ? AND event_id = ?"),
                purge: format!(
                    "DELETE FROM {t} WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM {t} \
                     WHERE processed_at < ? LIMIT ?)"
                ),
            },
        }
    }
}

/// What the database crates' inbox helpers share: the checked consumer name, the table and
/// its statements on every dialect. Each crate's `Inbox` wraps one.
#[derive(Clone, Debug)]
pub struct InboxSpec {
    consumer: String,
    table: TableName,
    postgres: InboxStatements,
    mysql: InboxStatements,
    sqlite: InboxStatements,
}

impl InboxSpec {
    /// The inbox of `consumer` in `table`; the name is checked ([`validate_consumer`]).
    pub fn new(consumer: impl Into<String>, table: TableName) -> Result<Self, Error> {
        let consumer = consumer.into();
        validate_consumer(&consumer)?;
        Ok(InboxSpec {
            postgres: InboxStatements::new(&table, Dialect::Postgres),
            mysql: InboxStatements::new(&table, Dialect::MySql),
            sqlite: InboxStatements::new(&table, Dialect::Sqlite),
            consumer,
            table,
        })
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The statements on `dialect`.
    pub fn statements(&self, dialect: Dialect) -> &InboxStatements {
        match dialect {
            Dialect::Postgres => &self.postgres,
            Dialect::MySql => &self.mysql,
            Dialect::Sqlite => &self.sqlite,
        }
    }

    /// The DDL on `dialect` ([`create_inbox_table_sql`]).
    pub fn create_table_sql(&self, dialect: Dialect) -> Vec<String> {
        create_inbox_table_sql(&self.table, dialect)
    }
}

/// The statements that create the inbox table and its index on `dialect`, idempotently.
pub fn create_inbox_table_sql(table: &TableName, dialect: Dialect) -> Vec<String> {
    let t = table.quoted(dialect);
    let index = table.derived("processed_idx");
    match dialect {
        Dialect::Postgres => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    consumer TEXT NOT NULL,\n    event_id UUID NOT NULL,\n    \
                 processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),\n    PRIMARY KEY (consumer, event_id)\n)"
            ),
            format!("CREATE INDEX IF NOT EXISTS \"{index}\" ON {t} (processed_at)"),
        ],
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n    consumer VARCHAR({MAX_CONSUMER_BYTES}) NOT NULL,\n    \
             event_id CHAR(36) NOT NULL,\n    processed_at DATETIME(6) NOT NULL,\n    \
             PRIMARY KEY (consumer, event_id),\n    INDEX `{index}` (processed_at)\n) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )],
        Dialect::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    consumer TEXT NOT NULL,\n    event_id TEXT NOT NULL,\n    \
                 processed_at INTEGER NOT NULL,\n    PRIMARY KEY (consumer, event_id)\n) WITHOUT ROWID"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (processed_at)",
                match table.schema() {
                    Some(s) => format!("\"{s}\".\"{index}\""),
                    None => format!("\"{index}\""),
                }
            ),
        ],
    }
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

    #[test]
    fn ddl_names_the_table_on_every_dialect() {
        let t = TableName::parse("shop_inbox").expect("valid");
        for d in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let ddl = create_inbox_table_sql(&t, d).join("\n");
            assert!(ddl.contains("shop_inbox"), "{ddl}");
            assert!(ddl.contains("PRIMARY KEY (consumer, event_id)"), "{ddl}");
            let s = InboxStatements::new(&t, d);
            assert!(s.record.contains("shop_inbox") && s.purge.contains("shop_inbox"));
        }
        assert_eq!(default_inbox_table().table(), DEFAULT_INBOX_TABLE);
    }
}
