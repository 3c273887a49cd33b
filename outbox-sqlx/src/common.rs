//! What the three stores share: statement text, row decoding, small helpers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use outbox_core::store::{ClaimedEvent, Undecodable};
use outbox_core::{EnvelopeParts, Error, ErrorKind, EventId, ValidationLimits};

/// The columns a claim reads back, in this order.
pub(crate) const SELECT_COLUMNS: &str = "seq, id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
     payload, content_type, headers, traceparent, tracestate, created_at, available_at, attempts, last_error";

/// The columns an enqueue writes, in this order.
pub(crate) const INSERT_COLUMNS: &str = "id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
     payload, content_type, headers, traceparent, tracestate, created_at, available_at";

/// A row as read, before validation.
pub(crate) struct RawRow {
    pub seq: i64,
    pub id: EventId,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub destination: String,
    pub ordering_key: String,
    pub payload: Vec<u8>,
    pub content_type: String,
    pub headers: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub created_at: DateTime<Utc>,
    pub available_at: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

impl RawRow {
    /// Validates the row into a claimed event, or reports it undecodable.
    pub fn into_claimed(self, limits: &ValidationLimits) -> Result<ClaimedEvent, Undecodable> {
        let id = self.id;
        let fail = |e: outbox_core::EnvelopeError| Undecodable {
            id,
            error: Error::new(ErrorKind::Decode, format!("row {id}: {e}")),
        };
        let headers = EnvelopeParts::parse_headers(&self.headers).map_err(fail)?;
        let envelope = EnvelopeParts {
            id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            destination: self.destination,
            ordering_key: Some(self.ordering_key),
            payload: self.payload.into(),
            content_type: self.content_type,
            headers,
            created_at: self.created_at,
            available_at: Some(self.available_at),
            traceparent: self.traceparent,
            tracestate: self.tracestate,
        }
        .into_envelope(limits)
        .map_err(fail)?;
        Ok(ClaimedEvent {
            envelope,
            seq: self.seq,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            last_error: self.last_error,
        })
    }
}

impl RawRow {
    /// The row as a dead letter, dead-lettered at `dead_at`.
    pub fn into_dead_record(
        self,
        dead_at: Option<DateTime<Utc>>,
        limits: &ValidationLimits,
    ) -> outbox_core::Result<outbox_core::DeadLetterRecord> {
        let claimed = self.into_claimed(limits).map_err(|u| u.error)?;
        Ok(outbox_core::DeadLetterRecord {
            envelope: claimed.envelope,
            attempts: claimed.attempts,
            last_error: claimed.last_error,
            dead_at,
        })
    }
}

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
    })
}

/// Splits decoded rows into claimed events (sorted by `seq`) and undecodable ones.
pub(crate) fn split_rows(
    mut rows: Vec<RawRow>,
    limits: &ValidationLimits,
) -> (Vec<ClaimedEvent>, Vec<Undecodable>) {
    rows.sort_by_key(|r| r.seq);
    let mut events = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for r in rows {
        match r.into_claimed(limits) {
            Ok(e) => events.push(e),
            Err(u) => bad.push(u),
        }
    }
    (events, bad)
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
/// `?, ?, ?` with `n` markers.
pub(crate) fn markers(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A statement's text, shared cheaply between calls.
pub(crate) type Sql = Arc<str>;

/// Asserts that statement text built from a validated [`outbox_core::TableName`] and fixed
/// fragments is safe: every value is a bind parameter.
pub(crate) fn sql(text: impl Into<Arc<str>>) -> sqlx::AssertSqlSafe<Arc<str>> {
    sqlx::AssertSqlSafe(text.into())
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
