//! Event-table reads: the condition that selects a checkpoint's read plan.

use outbox_core::event_table::ReadPlan;
use outbox_core::schema::Dialect;

use crate::admin::{Bound, Value};
use crate::quote::quote_ident;

/// A SQL condition on `column` selecting exactly this plan. Positions are integers, so
/// they are written into the text; `column` must already be a quoted identifier.
pub fn read_plan_condition(plan: &ReadPlan, column: &str) -> String {
    let mut terms = Vec::new();
    if let Some(after) = plan.after {
        terms.push(format!("{column} > {after}"));
    }
    for (from, to) in &plan.ranges {
        if from == to {
            terms.push(format!("{column} = {from}"));
        } else {
            terms.push(format!("{column} BETWEEN {from} AND {to}"));
        }
    }
    if !plan.positions.is_empty() {
        let list: Vec<String> = plan.positions.iter().map(i64::to_string).collect();
        terms.push(format!("{column} IN ({})", list.join(", ")));
    }
    if terms.is_empty() {
        "1 = 0".to_owned()
    } else {
        format!("({})", terms.join(" OR "))
    }
}

/// Bind marker number `n` (1-based): `$n` on PostgreSQL, `?` elsewhere.
pub fn marker(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

/// A mapped column read as text (`NULL` when unmapped).
pub fn as_text(dialect: Dialect, col: Option<&str>) -> String {
    mapped(dialect, col, |q| match dialect {
        Dialect::MySql => format!("CAST({q} AS CHAR)"),
        _ => format!("CAST({q} AS TEXT)"),
    })
}

/// `read` of the quoted column, or `NULL` when it is not mapped.
fn mapped(dialect: Dialect, col: Option<&str>, read: impl Fn(String) -> String) -> String {
    col.map_or_else(|| "NULL".to_owned(), |c| read(quote_ident(dialect, c)))
}

/// A mapped time column read as Unix microseconds (`NULL` when unmapped).
pub fn as_micros(dialect: Dialect, col: Option<&str>) -> String {
    mapped(dialect, col, |q| match dialect {
        Dialect::Postgres => format!("CAST(EXTRACT(EPOCH FROM {q}) * 1000000 AS BIGINT)"),
        Dialect::MySql => {
            format!("CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {q}) AS SIGNED)")
        }
        _ => format!(
            "CASE typeof({q}) WHEN 'integer' THEN {q} WHEN 'null' THEN NULL \
             ELSE CAST(ROUND((julianday({q}) - 2440587.5) * 86400000000.0) AS INTEGER) END"
        ),
    })
}

/// A checkpoint as its statements see it: who takes or holds it, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold<'a> {
    /// The checkpoint table, already quoted.
    pub table: String,
    /// The source's name, the checkpoint's key.
    pub name: &'a str,
    /// The relay taking or holding it.
    pub owner: &'a str,
    /// The owner's name without its instance part (`owner_name`).
    pub owner_name: &'a str,
    /// The lease, in microseconds.
    pub lease_us: i64,
}

impl Hold<'_> {
    /// Saves `state` and `high` if the owner still holds the checkpoint, extending its lease;
    /// no row changed means the lease was lost. PostgreSQL and MySQL/MariaDB time the lease
    /// by the server's clock; SQLite, which keeps Unix microseconds, by `now_us`.
    pub fn save(&self, dialect: Dialect, state: &str, high: i64, now_us: i64) -> Bound {
        let t = &self.table;
        let (state, high) = (Value::Text(state.to_owned()), Value::Int(high));
        let (name, owner) = (
            Value::Text(self.name.to_owned()),
            Value::Text(self.owner.to_owned()),
        );
        let lease = Value::Int(self.lease_us);
        let (text, values) = match dialect {
            Dialect::Postgres => (
                format!(
                    "UPDATE {t} SET state = $1, high = $2, \
                     lease_until = now() + make_interval(secs => $3::bigint / 1000000.0), \
                     updated_at = now() WHERE name = $4 AND owner = $5"
                ),
                vec![state, high, lease, name, owner],
            ),
            Dialect::MySql => (
                format!(
                    "UPDATE {t} SET state = ?, high = ?, \
                     lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND, \
                     updated_at = UTC_TIMESTAMP(6) WHERE name = ? AND owner = ?"
                ),
                vec![state, high, lease, name, owner],
            ),
            _ => (
                format!(
                    "UPDATE {t} SET state = ?, high = ?, lease_until = ?, updated_at = ? \
                     WHERE name = ? AND owner = ?"
                ),
                vec![
                    state,
                    high,
                    Value::Int(now_us.saturating_add(self.lease_us)),
                    Value::Int(now_us),
                    name,
                    owner,
                ],
            ),
        };
        Bound { text, values }
    }
}

/// The checkpoint table's DDL (`t` already quoted), idempotent.
pub fn checkpoint_table_sql(t: &str, dialect: Dialect) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "CREATE TABLE IF NOT EXISTS {t} (name TEXT PRIMARY KEY, owner TEXT, owner_name TEXT, lease_until TIMESTAMPTZ, \
             high BIGINT NOT NULL, state TEXT NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ),
        Dialect::MySql => format!(
            "CREATE TABLE IF NOT EXISTS {t} (name VARCHAR(190) NOT NULL PRIMARY KEY, owner VARCHAR(255), owner_name VARCHAR(255), \
             lease_until DATETIME(6), high BIGINT NOT NULL, state LONGTEXT NOT NULL, updated_at DATETIME(6) NOT NULL) \
             ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        ),
        _ => format!(
            "CREATE TABLE IF NOT EXISTS {t} (name TEXT PRIMARY KEY, owner TEXT, owner_name TEXT, lease_until INTEGER, \
             high INTEGER NOT NULL, state TEXT NOT NULL, updated_at INTEGER NOT NULL)"
        ),
    }
}
