//! The canonical outbox table, defined once so that rows written through sqlx, diesel and
//! SeaORM services are relayed by one relay.
//!
//! | column | meaning |
//! |---|---|
//! | `seq` | insertion order; per-key order follows it |
//! | `id` | event id (UUIDv7), unique |
//! | `aggregate_type`, `aggregate_id`, `event_type` | what happened to what |
//! | `destination` | topic / subject / queue / `exchange/routing-key` |
//! | `ordering_key` | events of one key are published in `seq` order |
//! | `payload`, `content_type` | the body |
//! | `headers` | JSON object of string values |
//! | `traceparent`, `tracestate` | W3C trace context |
//! | `created_at`, `available_at` | creation; not published before `available_at` |
//! | `status` | [`RowStatus`] code |
//! | `attempts` | failed publish attempts so far |
//! | `lease_token`, `lease_until` | the claiming relay's fencing token and lease expiry |
//! | `last_error` | the latest failure, for operators |
//! | `processed_at` | when it was published or dead-lettered |
//!
//! Times are `timestamptz` on PostgreSQL, `DATETIME(6)` in UTC on MySQL/MariaDB and
//! integer microseconds since the Unix epoch on SQLite (which has no time type; integers
//! compare and index exactly).

use std::fmt;

use crate::error::{Error, ErrorKind};

/// The SQL dialects the toolkit supports. More may be added: match with a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL 12 or later.
    Postgres,
    /// MySQL 8 or MariaDB 10.6 or later.
    MySql,
    /// SQLite 3.35 or later.
    Sqlite,
}

/// Default table name.
pub const DEFAULT_TABLE: &str = "outbox_events";

/// The lifecycle state of a row, stored as a small integer in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i16)]
pub enum RowStatus {
    /// Waiting to be published (possibly after `available_at`).
    Pending = 0,
    /// Claimed by a relay under a lease.
    InFlight = 1,
    /// Published; kept until the retention purge.
    Published = 2,
    /// Given up on (permanent error or attempts exhausted); kept for operators.
    Dead = 3,
}

impl RowStatus {
    /// The stored code.
    pub fn code(self) -> i16 {
        self as i16
    }

    /// Reads a stored code.
    pub fn from_code(code: i16) -> Option<RowStatus> {
        match code {
            0 => Some(RowStatus::Pending),
            1 => Some(RowStatus::InFlight),
            2 => Some(RowStatus::Published),
            3 => Some(RowStatus::Dead),
            _ => None,
        }
    }
}

/// A validated table reference: `table` or `schema.table`, each part 1 to 63 characters of
/// ASCII letters, digits and `_`, not starting with a digit. Validation is what makes
/// interpolating it into SQL safe: a name that fails it is an error, never SQL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    table: String,
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableName({self})")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

impl Default for TableName {
    fn default() -> Self {
        TableName {
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
        }
    }
}

/// Checks an SQL identifier (table, schema or column name): 1 to 63 ASCII letters, digits
/// or `_`, not starting with a digit. The error names `what`. Only checked identifiers are
/// ever interpolated into SQL.
pub fn check_identifier(what: &str, ident: &str) -> Result<(), Error> {
    check_ident(what, ident)
}

fn check_ident(what: &str, ident: &str) -> Result<(), Error> {
    let ok = !ident.is_empty()
        && ident.len() <= 63
        && ident
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !ident.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{what} {ident:?} is not a valid identifier: use 1 to 63 ASCII letters, digits or '_', not starting with a digit"
            ),
        ))
    }
}

impl TableName {
    /// Parses `table` or `schema.table`.
    pub fn parse(name: &str) -> Result<TableName, Error> {
        match name.split_once('.') {
            Some((schema, table)) => TableName::with_schema(schema, table),
            None => {
                check_ident("table name", name)?;
                Ok(TableName {
                    schema: None,
                    table: name.to_owned(),
                })
            }
        }
    }

    /// A table in a schema (PostgreSQL schema, MySQL database).
    pub fn with_schema(schema: &str, table: &str) -> Result<TableName, Error> {
        check_ident("schema name", schema)?;
        check_ident("table name", table)?;
        Ok(TableName {
            schema: Some(schema.to_owned()),
            table: table.to_owned(),
        })
    }

    /// The schema, if any.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The bare table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// A derived object name (index, trigger, channel): `<table>_<suffix>`, quoted, in the
    /// table's schema where the dialect scopes such names to one.
    pub fn derived(&self, suffix: &str) -> String {
        format!("{}_{}", self.table, suffix)
    }
}

/// One column of the canonical table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: &'static str,
    /// Type on PostgreSQL.
    pub postgres: &'static str,
    /// Type on MySQL/MariaDB.
    pub mysql: &'static str,
    /// Type on SQLite.
    pub sqlite: &'static str,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Default expression (the same on every dialect), if any.
    pub default: Option<&'static str>,
}

impl Column {
    /// The type on `dialect`.
    pub fn sql_type(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Postgres => self.postgres,
            Dialect::MySql => self.mysql,
            Dialect::Sqlite => self.sqlite,
        }
    }
}

const fn col(
    name: &'static str,
    [postgres, mysql, sqlite]: [&'static str; 3],
    nullable: bool,
    default: Option<&'static str>,
) -> Column {
    Column {
        name,
        postgres,
        mysql,
        sqlite,
        nullable,
        default,
    }
}

/// A time: `TIMESTAMPTZ`, `DATETIME(6)` in UTC, Unix microseconds on SQLite.
const TIME: [&str; 3] = ["TIMESTAMPTZ", "DATETIME(6)", "INTEGER"];
/// A short name (an aggregate or event type, a key).
const NAME: [&str; 3] = ["TEXT", "VARCHAR(255)", "TEXT"];

/// The columns, in table order. `seq` is the identity primary key; its definition differs
/// per dialect and is written by `outbox_sql::create_table_sql`.
pub const COLUMNS: &[Column] = &[
    col("seq", ["BIGINT", "BIGINT", "INTEGER"], false, None),
    col("id", ["UUID", "CHAR(36)", "TEXT"], false, None),
    col("aggregate_type", NAME, false, None),
    col("aggregate_id", NAME, false, None),
    col("event_type", NAME, false, None),
    col("destination", ["TEXT", "VARCHAR(512)", "TEXT"], false, None),
    col("ordering_key", NAME, false, None),
    col("payload", ["BYTEA", "LONGBLOB", "BLOB"], false, None),
    col("content_type", NAME, false, None),
    col("headers", ["TEXT", "TEXT", "TEXT"], false, None),
    col("traceparent", ["TEXT", "VARCHAR(64)", "TEXT"], true, None),
    col("tracestate", ["TEXT", "VARCHAR(512)", "TEXT"], true, None),
    col("created_at", TIME, false, None),
    col("available_at", TIME, false, None),
    col(
        "status",
        ["SMALLINT", "SMALLINT", "INTEGER"],
        false,
        Some("0"),
    ),
    col(
        "attempts",
        ["INTEGER", "INTEGER", "INTEGER"],
        false,
        Some("0"),
    ),
    col("lease_token", ["BIGINT", "BIGINT", "INTEGER"], true, None),
    col("lease_until", TIME, true, None),
    col("last_error", ["TEXT", "TEXT", "TEXT"], true, None),
    col("processed_at", TIME, true, None),
];

/// One index of the canonical table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Index {
    /// Suffix after `<table>_`.
    pub suffix: &'static str,
    /// Indexed columns on PostgreSQL and SQLite (with [`Index::partial`]).
    pub columns: &'static [&'static str],
    /// Indexed columns on MySQL, which has no partial indexes.
    pub mysql_columns: &'static [&'static str],
    /// Unique index.
    pub unique: bool,
    /// Row filter on dialects with partial indexes (PostgreSQL, SQLite); MySQL indexes
    /// every row.
    pub partial: Option<&'static str>,
}

impl Index {
    /// The indexed columns on `dialect`.
    pub fn columns_for(&self, dialect: Dialect) -> &'static [&'static str] {
        match dialect {
            Dialect::MySql => self.mysql_columns,
            Dialect::Postgres | Dialect::Sqlite => self.columns,
        }
    }
}

/// The indexes: the unique event id, unfinished rows in `seq` order (backlog figures, the
/// MySQL lease reaper), the claim's walk over ordering keys, and the retention purge.
///
/// The claim walks the keys that have unfinished rows with one `ORDER BY ... LIMIT 1` probe
/// of the key index per key, which also finds the key's head and its run. On PostgreSQL
/// and SQLite that index is partial (`status < 2`), so it holds the backlog only and stays
/// small however long the published history grows; its filter is not the due index's, so
/// only it can serve a probe that says `status < 2`, whatever the statistics. MySQL has no
/// partial indexes: `status` leads its key index, so a probe for `status = 0` walks pending
/// rows only and never the published history.
pub const INDEXES: &[Index] = &[
    Index {
        suffix: "id_key",
        columns: &["id"],
        mysql_columns: &["id"],
        unique: true,
        partial: None,
    },
    Index {
        suffix: "due_idx",
        columns: &["seq"],
        mysql_columns: &["status", "seq"],
        unique: false,
        partial: Some("status IN (0, 1)"),
    },
    Index {
        suffix: "key_idx",
        columns: &["ordering_key", "seq"],
        mysql_columns: &["status", "ordering_key", "seq"],
        unique: false,
        partial: Some("status < 2"),
    },
    Index {
        suffix: "processed_idx",
        columns: &["status", "processed_at"],
        mysql_columns: &["status", "processed_at"],
        unique: false,
        partial: Some("status IN (2, 3)"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_names_are_refused() {
        for bad in [
            "",
            "a;drop table x",
            "a b",
            "1abc",
            "x\"y",
            "s.t.u",
            "`x`",
            &"a".repeat(64),
        ] {
            let err = TableName::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        let t = TableName::parse("app.outbox_events").expect("valid");
        assert_eq!(t.schema(), Some("app"));
        assert_eq!(t.table(), "outbox_events");
    }

    #[test]
    fn status_codes_round_trip() {
        for s in [
            RowStatus::Pending,
            RowStatus::InFlight,
            RowStatus::Published,
            RowStatus::Dead,
        ] {
            assert_eq!(RowStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(RowStatus::from_code(9), None);
    }
}
