//! What the three stores share: statement text, row decoding, small helpers.

use std::sync::Arc;

use chrono::{DateTime, Utc};

#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use outbox_sql::SELECT_COLUMNS;
pub(crate) use outbox_sql::{INSERT_COLUMNS, StoredRow as RawRow};

/// Backlog figures from a stats row of `pending, in_flight, dead` counts (`BIGINT`) and the
/// oldest unfinished `created_at`, on the stores that read times as `DateTime<Utc>`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn backlog_from_row<R>(row: &R) -> outbox_core::Result<outbox_core::BacklogStats>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    const WHAT: &str = "decoding backlog figures";
    let count = |i: usize| -> outbox_core::Result<u64> {
        let v: i64 = row
            .try_get(i)
            .map_err(|e| crate::error::map_sqlx(WHAT, e))?;
        Ok(u64::try_from(v).unwrap_or(0))
    };
    Ok(outbox_core::BacklogStats {
        pending: count(0)?,
        in_flight: count(1)?,
        dead: count(2)?,
        oldest_unpublished: row
            .try_get(3)
            .map_err(|e| crate::error::map_sqlx(WHAT, e))?,
        published_last_minute: count(4)?,
    })
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
/// `?, ?, ?` with `n` markers.
pub(crate) fn markers(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A statement's text, shared cheaply between calls.
pub(crate) type Sql = Arc<str>;

/// The three forms of a claim walk's next-key probe (`outbox_sql::KeyWalk::next_key`),
/// built from one statement with its key bound left open.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) struct NextKeySql {
    after: Sql,
    between: Sql,
    upto: Sql,
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
impl NextKeySql {
    /// `next(bound)` is the statement with `bound` as its key condition; `[after, between,
    /// upto]` are the conditions for a lower bound, both bounds, and an upper bound.
    pub(crate) fn new(next: impl Fn(&str) -> String, bounds: [&str; 3]) -> Self {
        let [after, between, upto] = bounds.map(|b| Sql::from(next(b)));
        NextKeySql {
            after,
            between,
            upto,
        }
    }

    /// The statement for a probe after `after` (`None`: from the first key) and at most
    /// `upto` (`None`: no bound).
    pub(crate) fn pick(&self, after: Option<&str>, upto: Option<&str>) -> &Sql {
        match (after, upto) {
            (Some(_), Some(_)) => &self.between,
            (None, Some(_)) => &self.upto,
            (_, None) => &self.after,
        }
    }
}

/// Asserts that statement text built from a validated [`outbox_core::TableName`] and fixed
/// fragments is safe: every value is a bind parameter.
pub(crate) fn sql(text: impl Into<Arc<str>>) -> sqlx::AssertSqlSafe<Arc<str>> {
    sqlx::AssertSqlSafe(text.into())
}

/// A row limit as the `BIGINT` the databases take, saturating.
pub(crate) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Microseconds of a duration, saturating.
pub(crate) fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
/// A value bound into a dead-letter filter; each store encodes times its own way.
pub(crate) enum FilterBind {
    Text(String),
    Time(DateTime<Utc>),
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
/// `WHERE` text (with `?` markers) and binds for a dead-letter filter, for the stores whose
/// driver takes `?` markers (MySQL, SQLite).
pub(crate) fn dead_filter(
    filter: &outbox_core::store::DeadLetterFilter,
) -> (String, Vec<FilterBind>) {
    let mut clauses = vec!["status = 3".to_owned()];
    let mut binds = Vec::new();
    if let Some(t) = &filter.event_type {
        clauses.push("event_type = ?".to_owned());
        binds.push(FilterBind::Text(t.clone()));
    }
    if let Some(k) = &filter.ordering_key {
        clauses.push("ordering_key = ?".to_owned());
        binds.push(FilterBind::Text(k.clone()));
    }
    if let Some(s) = filter.dead_since {
        clauses.push("processed_at >= ?".to_owned());
        binds.push(FilterBind::Time(s));
    }
    if let Some(b) = filter.dead_before {
        clauses.push("processed_at < ?".to_owned());
        binds.push(FilterBind::Time(b));
    }
    if let Some(ids) = &filter.ids {
        clauses.push(if ids.is_empty() {
            "1 = 0".to_owned()
        } else {
            format!("id IN ({})", markers(ids.len()))
        });
        binds.extend(ids.iter().map(|id| FilterBind::Text(id.to_string())));
    }
    (clauses.join(" AND "), binds)
}
