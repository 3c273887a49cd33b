//! Event-table reads: the condition that selects a checkpoint's read plan.

use outbox_core::event_table::ReadPlan;
use outbox_core::schema::Dialect;

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
    match col {
        None => "NULL".to_owned(),
        Some(c) => {
            let q = quote_ident(dialect, c);
            match dialect {
                Dialect::MySql => format!("CAST({q} AS CHAR)"),
                _ => format!("CAST({q} AS TEXT)"),
            }
        }
    }
}

/// A mapped time column read as Unix microseconds (`NULL` when unmapped).
pub fn as_micros(dialect: Dialect, col: Option<&str>) -> String {
    match col {
        None => "NULL".to_owned(),
        Some(c) => {
            let q = quote_ident(dialect, c);
            match dialect {
                Dialect::Postgres => format!("CAST(EXTRACT(EPOCH FROM {q}) * 1000000 AS BIGINT)"),
                Dialect::MySql => {
                    format!(
                        "CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {q}) AS SIGNED)"
                    )
                }
                _ => format!(
                    "CASE typeof({q}) WHEN 'integer' THEN {q} WHEN 'null' THEN NULL \
                     ELSE CAST(ROUND((julianday({q}) - 2440587.5) * 86400000000.0) AS INTEGER) END"
                ),
            }
        }
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
