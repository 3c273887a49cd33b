//! The canonical table's columns as statements list them, and decoding a stored row.

use chrono::{DateTime, Utc};

use outbox_core::envelope::{EnvelopeParts, EventId, ValidationLimits};
use outbox_core::error::{Error, ErrorKind};
use outbox_core::store::{ClaimedEvent, Undecodable};

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

impl StoredRow {
    /// The row as a dead letter, dead-lettered at `dead_at`: its event, or what could be
    /// read of it with the decode error when it is not a valid event.
    pub fn into_dead_record(
        self,
        dead_at: Option<DateTime<Utc>>,
        limits: &ValidationLimits,
    ) -> outbox_core::store::DeadLetterRecord {
        use outbox_core::store::{DeadEvent, DeadLetterRecord, UndecodableRow};
        let (id, seq) = (self.id, self.seq);
        let attempts = u32::try_from(self.attempts).unwrap_or(0);
        let last_error = self.last_error.clone();
        let raw = UndecodableRow {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            event_type: self.event_type.clone(),
            destination: self.destination.clone(),
            ordering_key: self.ordering_key.clone(),
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
            payload_len: self.payload.len(),
            created_at: self.created_at,
            error: String::new(),
        };
        let event = match self.into_claimed(limits) {
            Ok(c) => DeadEvent::Event(c.envelope),
            Err(u) => DeadEvent::Undecodable(UndecodableRow {
                error: u.error.to_string(),
                ..raw
            }),
        };
        DeadLetterRecord {
            id,
            seq,
            event,
            attempts,
            last_error,
            dead_at,
        }
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
