//! The compact binary form of an [`Envelope`]: what message-mode CDC writes with
//! `pg_logical_emit_message` inside the caller's transaction, and what the CDC relay reads
//! back from the replication stream. Defined once here, so every writer (sqlx, diesel,
//! SeaORM) and every reader agree.
//!
//! Version 1, all integers big-endian:
//!
//! | field | encoding |
//! |---|---|
//! | version | `u8` = 1 |
//! | id | 16 bytes (UUID) |
//! | created_at, available_at | `i64` Unix seconds and `u32` nanoseconds each |
//! | aggregate_type, aggregate_id, event_type, destination, ordering_key, content_type | `u32` length + UTF-8 each |
//! | headers | `u32` count, then name and value as above |
//! | trace | `u8` 0 (none), 1 (traceparent), 2 (traceparent and tracestate), then the strings |
//! | payload | `u32` length + bytes, last |
//!
//! Decoding validates the envelope again ([`EnvelopeParts::into_envelope`]); a reader that
//! meets a version it does not know fails with [`ErrorKind::Decode`] naming it, instead of
//! guessing.
//!
//! ```
//! use outbox_core::{Envelope, ValidationLimits, codec};
//!
//! let event = Envelope::builder("order", "o-1", "order.placed", "orders")
//!     .json(&serde_json::json!({ "total": 4200 }))
//!     .with_header("x-tenant", "acme")
//!     .build()?;
//! let bytes = codec::encode(&event);
//! assert_eq!(codec::decode(&bytes, &ValidationLimits::default())?, event);
//! # Ok::<(), outbox_core::Error>(())
//! ```

use chrono::{DateTime, Utc};

use crate::envelope::{Envelope, EnvelopeParts, EventId, Headers, ValidationLimits};
use crate::error::{Error, ErrorKind, Result};

/// The version [`encode`] writes.
pub const VERSION: u8 = 1;

/// The prefix of the logical decoding messages that carry encoded envelopes
/// (`pg_logical_emit_message(true, 'outbox', ...)`), unless a writer and its relay agree on
/// another.
pub const MESSAGE_PREFIX: &str = "outbox";

/// The envelope in the compact binary form of [`VERSION`].
pub fn encode(e: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.payload().len());
    out.push(VERSION);
    out.extend_from_slice(e.id().as_uuid().as_bytes());
    for t in [e.created_at(), e.available_at()] {
        out.extend_from_slice(&t.timestamp().to_be_bytes());
        out.extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
    }
    for s in [
        e.aggregate_type(),
        e.aggregate_id(),
        e.event_type(),
        e.destination(),
        e.ordering_key(),
        e.content_type(),
    ] {
        put(&mut out, s.as_bytes());
    }
    put_len(&mut out, e.headers().len());
    for (name, value) in e.headers() {
        put(&mut out, name.as_bytes());
        put(&mut out, value.as_bytes());
    }
    match e.trace() {
        None => out.push(0),
        Some(t) => match t.tracestate() {
            None => {
                out.push(1);
                put(&mut out, t.traceparent().as_bytes());
            }
            Some(state) => {
                out.push(2);
                put(&mut out, t.traceparent().as_bytes());
                put(&mut out, state.as_bytes());
            }
        },
    }
    put(&mut out, e.payload());
    out
}

/// Reads an envelope [`encode`] wrote, and validates it against `limits`.
pub fn decode(bytes: &[u8], limits: &ValidationLimits) -> Result<Envelope> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.take(1, "version")?[0];
    if version != VERSION {
        return Err(Error::new(
            ErrorKind::Decode,
            format!(
                "envelope encoding version {version} is not known (this reader knows {VERSION})"
            ),
        ));
    }
    let id = r.take(16, "id")?;
    let id = EventId::from_uuid(uuid::Uuid::from_slice(id).map_err(|e| bad("id", e))?);
    let created_at = r.time("created_at")?;
    let available_at = r.time("available_at")?;
    let aggregate_type = r.text("aggregate_type")?;
    let aggregate_id = r.text("aggregate_id")?;
    let event_type = r.text("event_type")?;
    let destination = r.text("destination")?;
    let ordering_key = r.text("ordering_key")?;
    let content_type = r.text("content_type")?;
    let mut headers = Headers::new();
    for _ in 0..r.len("headers")? {
        let name = r.text("header name")?;
        let value = r.text("header value")?;
        headers.insert(name, value);
    }
    let (traceparent, tracestate) = match r.take(1, "trace")?[0] {
        0 => (None, None),
        1 => (Some(r.text("traceparent")?), None),
        2 => (Some(r.text("traceparent")?), Some(r.text("tracestate")?)),
        other => return Err(bad("trace", format!("marker {other}"))),
    };
    let payload = r.field("payload")?.to_vec();
    if r.at != bytes.len() {
        return Err(bad("payload", "bytes after the payload"));
    }
    EnvelopeParts {
        id,
        aggregate_type,
        aggregate_id,
        event_type,
        destination,
        ordering_key: Some(ordering_key),
        payload: payload.into(),
        content_type,
        headers,
        created_at,
        available_at: Some(available_at),
        traceparent,
        tracestate,
    }
    .into_envelope(limits)
    .map_err(|e| Error::new(ErrorKind::Decode, "an encoded envelope is not valid").with_source(e))
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Envelopes are validated to far below 4 GiB per field.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!("encoded envelope: `{field}`: {why}"),
    )
}

/// A cursor over the bytes being decoded.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| bad(field, "truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn len(&mut self, field: &str) -> Result<usize> {
        let b = self.take(4, field)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).map_err(|e| bad(field, e))
    }

    fn field(&mut self, field: &str) -> Result<&'a [u8]> {
        let n = self.len(field)?;
        self.take(n, field)
    }

    fn text(&mut self, field: &str) -> Result<String> {
        let b = self.field(field)?;
        String::from_utf8(b.to_vec()).map_err(|e| bad(field, e))
    }

    fn time(&mut self, field: &str) -> Result<DateTime<Utc>> {
        let b = self.take(12, field)?;
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&b[..8]);
        let nanos = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        DateTime::from_timestamp(i64::from_be_bytes(secs), nanos)
            .ok_or_else(|| bad(field, "out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::TraceContext;

    fn full() -> Envelope {
        Envelope::builder("order", "o-1", "order.placed", "orders")
            .with_ordering_key("customer-7")
            .with_header("x-tenant", "acme")
            .with_header("x-empty", "")
            .with_trace(
                TraceContext::new(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    Some("vendor=1".to_owned()),
                )
                .expect("trace"),
            )
            .json(&serde_json::json!({ "total": 4200, "name": "Zoë" }))
            .build()
            .expect("envelope")
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let limits = ValidationLimits::default();
        let plain = Envelope::builder("a", "b", "c", "d")
            .build()
            .expect("envelope");
        for e in [full(), plain] {
            let bytes = encode(&e);
            let back = decode(&bytes, &limits).expect("decode");
            assert_eq!(back.id(), e.id());
            assert_eq!(back.payload(), e.payload());
            assert_eq!(back.headers(), e.headers());
            assert_eq!(back.trace(), e.trace());
            assert_eq!(back.ordering_key(), e.ordering_key());
            assert_eq!(back, e, "every field, times to the nanosecond");
            assert_eq!(encode(&back), bytes, "a decoded envelope encodes the same");
        }
    }

    #[test]
    fn every_truncation_is_an_error_naming_a_field() {
        let bytes = encode(&full());
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut], &ValidationLimits::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode);
            assert!(err.to_string().contains('`') || cut == 0, "{cut}: {err}");
        }
    }

    #[test]
    fn unknown_versions_and_trailing_bytes_are_refused() {
        let mut bytes = encode(&full());
        bytes.push(0);
        let err = decode(&bytes, &ValidationLimits::default()).unwrap_err();
        assert!(err.to_string().contains("after the payload"), "{err}");
        bytes.pop();
        bytes[0] = 9;
        let err = decode(&bytes, &ValidationLimits::default()).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn an_invalid_envelope_is_refused_on_the_way_in() {
        let mut bytes = encode(&full());
        // The aggregate type's first byte (after version, id and two times, and its length)
        // becomes a control character.
        bytes[1 + 16 + 2 * 12 + 4] = 0x07;
        let err = decode(&bytes, &ValidationLimits::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
    }
}
