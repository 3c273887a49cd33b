//! Statement text and row decoding shared by the SQL stores (outbox-sqlx, outbox-diesel), so
//! every stack claims, fences and decodes the same way.

use chrono::{DateTime, Utc};

use crate::envelope::{EnvelopeParts, EventId, ValidationLimits};
use crate::error::{Error, ErrorKind};
use crate::schema::{Dialect, TableName};
use crate::store::{ClaimedEvent, Undecodable};

/// Run in a PostgreSQL claim's transaction, before the claim: plan the claim as an ordered
/// walk of the due index that stops at the limit. With statistics taken while the outbox
/// was empty (its usual state), the planner otherwise prefers a bitmap scan plus sort that
/// checks every unfinished row on every claim.
pub const PG_CLAIM_SETTINGS: &str =
    "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)";

/// The columns a claim reads back, in this order.
pub const SELECT_COLUMNS: &str = "seq, id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
     payload, content_type, headers, traceparent, tracestate, created_at, available_at, attempts, last_error";

/// The columns an enqueue writes, in this order.
pub const INSERT_COLUMNS: &str = "id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
     payload, content_type, headers, traceparent, tracestate, created_at, available_at";

/// A row as a store read it, before validation. Each field is the column of that name.
pub struct StoredRow {
    /// Column `seq`.
    pub seq: i64,
    /// Column `id`.
    pub id: EventId,
    /// Column `aggregate_type`.
    pub aggregate_type: String,
    /// Column `aggregate_id`.
    pub aggregate_id: String,
    /// Column `event_type`.
    pub event_type: String,
    /// Column `destination`.
    pub destination: String,
    /// Column `ordering_key`.
    pub ordering_key: String,
    /// Column `payload`.
    pub payload: Vec<u8>,
    /// Column `content_type`.
    pub content_type: String,
    /// Column `headers`.
    pub headers: String,
    /// Column `traceparent`.
    pub traceparent: Option<String>,
    /// Column `tracestate`.
    pub tracestate: Option<String>,
    /// Column `created_at`.
    pub created_at: DateTime<Utc>,
    /// Column `available_at`.
    pub available_at: DateTime<Utc>,
    /// Column `attempts`.
    pub attempts: i32,
    /// Column `last_error`.
    pub last_error: Option<String>,
}

impl StoredRow {
    /// Validates the row into a claimed event, or reports it undecodable.
    pub fn into_claimed(self, limits: &ValidationLimits) -> Result<ClaimedEvent, Undecodable> {
        let id = self.id;
        let fail = |e: crate::EnvelopeError| Undecodable {
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

impl StoredRow {
    /// The row as a dead letter, dead-lettered at `dead_at`.
    pub fn into_dead_record(
        self,
        dead_at: Option<DateTime<Utc>>,
        limits: &ValidationLimits,
    ) -> crate::Result<crate::store::DeadLetterRecord> {
        let claimed = self.into_claimed(limits).map_err(|u| u.error)?;
        Ok(crate::store::DeadLetterRecord {
            envelope: claimed.envelope,
            attempts: claimed.attempts,
            last_error: claimed.last_error,
            dead_at,
        })
    }
}

/// Splits decoded rows into claimed events (sorted by `seq`) and undecodable ones.
pub fn split_rows(
    mut rows: Vec<StoredRow>,
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

/// PostgreSQL statement text for a table, shared by the sqlx and diesel stores.
#[derive(Clone, Debug)]
pub struct PgStatements {
    /// Claims the due heads of their keys: binds `$1` limit, `$2` token, `$3` lease in microseconds; returns [`SELECT_COLUMNS`].
    pub claim: String,
    /// Marks held rows published: `$1` ids (`uuid[]`), `$2` token.
    pub mark_published: String,
    /// Reschedules held rows: `$1` ids, `$2` token, `$3` delays in microseconds (`bigint[]`), `$4` errors (`text[]`).
    pub retry: String,
    /// Dead-letters held rows: `$1` ids, `$2` token, `$3` errors.
    pub dead: String,
    /// Releases held rows without an attempt: `$1` ids, `$2` token.
    pub release: String,
    /// Deletes published rows: `$1` cut-off, `$2` limit.
    pub purge: String,
    /// Pending, in-flight and dead counts, and the oldest unfinished `created_at`.
    pub stats: String,
    /// Lists dead letters: `$1`..`$5` the filter (type, key, since, before, ids), `$6` limit.
    pub list_dead: String,
    /// Requeues dead letters matching the filter (`$1`..`$5`).
    pub requeue_dead: String,
    /// Deletes dead letters matching the filter (`$1`..`$5`).
    pub purge_dead: String,
}

impl PgStatements {
    /// The statements for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted(Dialect::Postgres);
        let held = "status = 1 AND lease_token = $2 AND lease_until > now()";
        let dead_filter = "status = 3 AND ($1::text IS NULL OR event_type = $1) AND ($2::text IS NULL OR ordering_key = $2) \
             AND ($3::timestamptz IS NULL OR processed_at >= $3) AND ($4::timestamptz IS NULL OR processed_at < $4) \
             AND ($5::uuid[] IS NULL OR id = ANY($5))";
        PgStatements {
            claim: format!(
                "WITH due AS (SELECT o.seq FROM {t} o \
                 WHERE o.status IN (0, 1) AND o.available_at <= now() \
                   AND (o.status = 0 OR o.lease_until <= now()) \
                   AND o.seq = (SELECT p.seq FROM {t} p WHERE p.ordering_key = o.ordering_key \
                                AND p.status < 2 ORDER BY p.seq LIMIT 1) \
                 ORDER BY o.seq LIMIT $1 FOR UPDATE OF o SKIP LOCKED) \
                 UPDATE {t} AS u SET status = 1, lease_token = $2, \
                   lease_until = now() + make_interval(secs => $3::float8 / 1000000) \
                 FROM due WHERE u.seq = due.seq RETURNING {}",
                SELECT_COLUMNS
                    .split(", ")
                    .map(|c| format!("u.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            mark_published: format!(
                "UPDATE {t} SET status = 2, processed_at = now(), lease_token = NULL, lease_until = NULL \
                 WHERE id = ANY($1) AND {held}"
            ),
            retry: format!(
                "UPDATE {t} AS u SET status = 0, attempts = u.attempts + 1, last_error = d.err, \
                   available_at = now() + make_interval(secs => d.delay_us::float8 / 1000000), \
                   lease_token = NULL, lease_until = NULL \
                 FROM UNNEST($1::uuid[], $3::bigint[], $4::text[]) AS d(id, delay_us, err) \
                 WHERE u.id = d.id AND u.status = 1 AND u.lease_token = $2 AND u.lease_until > now()"
            ),
            dead: format!(
                "UPDATE {t} AS u SET status = 3, attempts = u.attempts + 1, last_error = d.err, processed_at = now(), \
                   lease_token = NULL, lease_until = NULL \
                 FROM UNNEST($1::uuid[], $3::text[]) AS d(id, err) \
                 WHERE u.id = d.id AND u.status = 1 AND u.lease_token = $2 AND u.lease_until > now()"
            ),
            release: format!(
                "UPDATE {t} SET status = 0, lease_token = NULL, lease_until = NULL WHERE id = ANY($1) AND {held}"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE status = 2 AND processed_at < $1 \
                 ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            stats: format!(
                "SELECT count(*) FILTER (WHERE status = 0 OR (status = 1 AND lease_until <= now())), \
                        count(*) FILTER (WHERE status = 1 AND lease_until > now()), \
                        count(*) FILTER (WHERE status = 3), \
                        min(created_at) FILTER (WHERE status IN (0, 1)), \
                        (SELECT count(*) FROM {t} WHERE status = 2 \
                           AND processed_at > now() - interval '1 minute') \
                 FROM {t} WHERE status IN (0, 1, 3)"
            ),
            list_dead: format!(
                "SELECT {SELECT_COLUMNS}, processed_at FROM {t} WHERE {dead_filter} ORDER BY processed_at, seq LIMIT $6"
            ),
            requeue_dead: format!(
                "UPDATE {t} SET status = 0, attempts = 0, available_at = now(), processed_at = NULL WHERE {dead_filter}"
            ),
            purge_dead: format!("DELETE FROM {t} WHERE {dead_filter}"),
        }
    }
}
