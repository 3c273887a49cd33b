//! The inbox table's statements and DDL on every dialect (see `outbox_core::inbox`).

use outbox_core::EventId;
use outbox_core::error::Error;
use outbox_core::inbox::{MAX_CONSUMER_BYTES, validate_consumer};
use outbox_core::schema::{Dialect, TableName};

use crate::quote::{Quote, quote_ident};

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
    /// SQLite's statements serve any dialect added after these three.
    pub fn new(table: &TableName, dialect: Dialect) -> Self {
        let t = table.quoted(dialect);
        let m = |n| crate::event_table::marker(dialect, n);
        let (record, purge) = match dialect {
            Dialect::Postgres => (
                format!(
                    "INSERT INTO {t} (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                ),
                format!(
                    "DELETE FROM {t} WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM {t} \
                     WHERE processed_at < now() - make_interval(secs => $1::bigint / 1000000.0) LIMIT $2)"
                ),
            ),
            // INSERT IGNORE also turns data errors into warnings, so callers validate the
            // consumer name (the only free-form value) before binding it.
            Dialect::MySql => (
                format!(
                    "INSERT IGNORE INTO {t} (consumer, event_id, processed_at) VALUES (?, ?, UTC_TIMESTAMP(6))"
                ),
                format!(
                    "DELETE FROM {t} WHERE processed_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?"
                ),
            ),
            _ => (
                format!(
                    "INSERT INTO {t} (consumer, event_id, processed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
                ),
                format!(
                    "DELETE FROM {t} WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM {t} \
                     WHERE processed_at < ? LIMIT ?)"
                ),
            ),
        };
        InboxStatements {
            dialect,
            record,
            seen: format!(
                "SELECT 1 FROM {t} WHERE consumer = {} AND event_id = {}",
                m(1),
                m(2)
            ),
            purge,
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

    /// The inbox of `consumer` in the default table, `outbox_inbox`.
    pub fn for_consumer(consumer: impl Into<String>) -> Result<Self, Error> {
        InboxSpec::new(consumer, outbox_core::inbox::default_inbox_table())
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
            _ => &self.sqlite,
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
        _ => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    consumer TEXT NOT NULL,\n    event_id TEXT NOT NULL,\n    \
                 processed_at INTEGER NOT NULL,\n    PRIMARY KEY (consumer, event_id)\n) WITHOUT ROWID"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {t} (processed_at)",
                match table.schema() {
                    Some(s) => format!(
                        "{}.{}",
                        quote_ident(dialect, s),
                        quote_ident(dialect, &index)
                    ),
                    None => quote_ident(dialect, &index),
                }
            ),
        ],
    }
}

/// Defines a database crate's `Inbox`: one consumer's view of an inbox table, wrapping an
/// [`InboxSpec`] (its consumer name, table and statements, through `Deref`), with the
/// constructors `new` (the default table) and `with_table`. The crate adds the methods that
/// run the statements on its connections.
#[macro_export]
macro_rules! inbox_type {
    () => {
        /// One consumer's view of an inbox table. Cheap to clone; build it once.
        #[derive(Clone, Debug)]
        pub struct Inbox {
            spec: $crate::InboxSpec,
        }

        impl ::std::ops::Deref for Inbox {
            type Target = $crate::InboxSpec;

            /// The consumer name, the table and their statements.
            fn deref(&self) -> &$crate::InboxSpec {
                &self.spec
            }
        }

        impl Inbox {
            /// The inbox of `consumer` (a stable name: the service or handler) in the
            /// default table `outbox_inbox`. The name is checked (1 to 190 bytes, no
            /// control characters).
            pub fn new(consumer: impl Into<String>) -> outbox_core::Result<Self> {
                $crate::InboxSpec::for_consumer(consumer).map(|spec| Inbox { spec })
            }

            /// The inbox of `consumer` in `table`.
            pub fn with_table(
                consumer: impl Into<String>,
                table: outbox_core::TableName,
            ) -> outbox_core::Result<Self> {
                $crate::InboxSpec::new(consumer, table).map(|spec| Inbox { spec })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::inbox::{DEFAULT_INBOX_TABLE, default_inbox_table};

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
