//! What the three stores share: statement text, row decoding, small helpers.

use std::sync::Arc;

#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use outbox_sql::SELECT_COLUMNS;
pub(crate) use outbox_sql::{INSERT_COLUMNS, StoredRow as RawRow};

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

/// Binds an envelope's values in [`INSERT_COLUMNS`] order to the query `$q`, the id as
/// text and the two times through `$time` (the stores whose insert binds row by row).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
macro_rules! bind_envelope {
    ($q:expr, $e:expr, $time:expr) => {
        $q.bind($e.id().to_string())
            .bind($e.aggregate_type())
            .bind($e.aggregate_id())
            .bind($e.event_type())
            .bind($e.destination())
            .bind($e.ordering_key())
            .bind($e.payload().as_ref())
            .bind($e.content_type())
            .bind($e.headers_json())
            .bind($e.trace().map(|t| t.traceparent()))
            .bind($e.trace().and_then(|t| t.tracestate()))
            .bind($time($e.created_at()))
            .bind($time($e.available_at()))
    };
}
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use bind_envelope;
