//! How an envelope travels as a broker message: the header names every publisher adapter
//! writes, so consumers of any broker read the same metadata.
//!
//! The body is the payload, untouched. Alongside it go the user headers, then the toolkit's
//! own headers (all prefixed `outbox-`, a prefix users cannot take), `content-type`, and
//! the W3C trace context. Brokers with native fields carry the event id there too
//! (`Nats-Msg-Id`, AMQP `message_id`, SQS `MessageDeduplicationId`, the Kafka key for
//! ordering), but [`EVENT_ID`] is always present.

use crate::envelope::{Envelope, EventId, Headers, RESERVED_HEADER_PREFIX, TraceContext};

/// The event id (UUIDv7, hyphenated).
pub const EVENT_ID: &str = "outbox-event-id";
/// The event type.
pub const EVENT_TYPE: &str = "outbox-event-type";
/// The aggregate type.
pub const AGGREGATE_TYPE: &str = "outbox-aggregate-type";
/// The aggregate id.
pub const AGGREGATE_ID: &str = "outbox-aggregate-id";
/// The ordering key.
pub const ORDERING_KEY: &str = "outbox-ordering-key";
/// When the event was created (RFC 3339, microseconds, UTC).
pub const CREATED_AT: &str = "outbox-created-at";
/// The payload's media type.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// Every header of `envelope`'s message: user headers first, then the toolkit's. A user
/// header the toolkit sets itself (`content-type`; `traceparent` and `tracestate` when the
/// event has a trace; names in any case) is left out, so a broker that keeps repeated
/// headers (Kafka) never carries two, and a consumer reading the first gets the toolkit's.
pub fn message_headers(envelope: &Envelope) -> Vec<(&str, String)> {
    let trace = envelope.trace();
    let set_here = |name: &str| {
        name.eq_ignore_ascii_case(CONTENT_TYPE)
            || (trace.is_some()
                && (name.eq_ignore_ascii_case(TRACEPARENT)
                    || name.eq_ignore_ascii_case(TRACESTATE)))
    };
    let mut out: Vec<(&str, String)> = envelope
        .headers()
        .iter()
        .filter(|(k, _)| !set_here(k))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    out.extend([
        (EVENT_ID, envelope.id().to_string()),
        (EVENT_TYPE, envelope.event_type().to_owned()),
        (AGGREGATE_TYPE, envelope.aggregate_type().to_owned()),
        (AGGREGATE_ID, envelope.aggregate_id().to_owned()),
        (ORDERING_KEY, envelope.ordering_key().to_owned()),
        (
            CREATED_AT,
            envelope
                .created_at()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        (CONTENT_TYPE, envelope.content_type().to_owned()),
    ]);
    if let Some(t) = trace {
        out.push((TRACEPARENT, t.traceparent().to_owned()));
        if let Some(s) = t.tracestate() {
            out.push((TRACESTATE, s.to_owned()));
        }
    }
    out
}

/// Whether a received header is the toolkit's (not a user header).
pub fn is_toolkit_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(RESERVED_HEADER_PREFIX)
        || lower == CONTENT_TYPE
        || lower == TRACEPARENT
        || lower == TRACESTATE
}

/// The user headers among received `(name, value)` pairs.
pub fn user_headers<'a>(received: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
    received
        .into_iter()
        .filter(|(k, _)| !is_toolkit_header(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The event id among received `(name, value)` pairs, if present and valid.
pub fn event_id<'a>(received: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<EventId> {
    received
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(EVENT_ID))
        .and_then(|(_, v)| v.parse().ok())
}

/// The W3C trace context among received `(name, value)` pairs: `traceparent` and
/// `tracestate` (any case). `None` when there is no `traceparent` or it is not valid: a
/// consumer goes on without the producer's trace rather than refuse the message.
pub fn trace_context<'a>(
    received: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<TraceContext> {
    let mut parent = None;
    let mut state = None;
    for (k, v) in received {
        if k.eq_ignore_ascii_case(TRACEPARENT) {
            parent = Some(v);
        } else if k.eq_ignore_ascii_case(TRACESTATE) {
            state = Some(v);
        }
    }
    TraceContext::new(parent?.trim(), state.map(str::to_owned)).ok()
}

/// Parses an event id read from a broker field named `field`.
pub fn parse_event_id(field: &str, value: &str) -> Result<EventId, crate::Error> {
    value.trim().parse().map_err(|_| {
        crate::Error::new(
            crate::ErrorKind::Decode,
            format!("message field `{field}` = {value:?} is not an event id (a UUID)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::TraceContext;

    #[test]
    fn a_user_header_the_toolkit_sets_is_not_sent_twice() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with_headers = |trace: Option<TraceContext>| {
            let mut b = Envelope::builder("order", "o-1", "order.placed", "orders")
                .with_header("Content-Type", "text/plain")
                .with_header("TraceParent", "00-nothex-01")
                .with_header("tracestate", "theirs=1")
                .with_header("x-tenant", "acme")
                .json(&serde_json::json!({}));
            b = match trace {
                Some(t) => b.with_trace(t),
                None => b.without_trace(),
            };
            b.build().expect("valid")
        };
        let count = |h: &[(&str, String)], name: &str| {
            h.iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .count()
        };

        let traced = with_headers(Some(TraceContext::new(parent, None).expect("valid")));
        let h = message_headers(&traced);
        assert_eq!(count(&h, CONTENT_TYPE), 1);
        assert_eq!(count(&h, TRACEPARENT), 1);
        assert_eq!(
            count(&h, TRACESTATE),
            0,
            "another trace's state is not carried"
        );
        let pairs = h.iter().map(|(k, v)| (*k, v.as_str()));
        assert_eq!(
            trace_context(pairs).map(|t| t.traceparent().to_owned()),
            Some(parent.into())
        );
        assert_eq!(count(&h, "x-tenant"), 1);

        // Without a trace of its own, the toolkit leaves the user's trace headers alone.
        let untraced = with_headers(None);
        let h = message_headers(&untraced);
        assert_eq!((count(&h, TRACEPARENT), count(&h, TRACESTATE)), (1, 1));
        assert_eq!(count(&h, CONTENT_TYPE), 1);
    }

    #[test]
    fn trace_context_reads_both_headers_in_any_case() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = trace_context([("TraceParent", parent), ("tracestate", "v=1")]).expect("trace");
        assert_eq!((t.traceparent(), t.tracestate()), (parent, Some("v=1")));
        assert_eq!(trace_context([("tracestate", "v=1")]), None);
        assert_eq!(trace_context([("traceparent", "00-nothex-01")]), None);
    }

    #[test]
    fn headers_round_trip() {
        let trace = TraceContext::new(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=1".to_owned()),
        )
        .expect("valid trace");
        let e = Envelope::builder("order", "o-1", "order.placed", "orders")
            .with_header("x-tenant", "acme")
            .with_trace(trace)
            .json(&serde_json::json!({"a": 1}))
            .build()
            .expect("valid");
        let h = message_headers(&e);
        let pairs = h.iter().map(|(k, v)| (*k, v.as_str()));
        assert_eq!(event_id(pairs.clone()), Some(e.id()));
        let user = user_headers(pairs);
        assert_eq!(&user, e.headers());
        assert!(h.iter().any(|(k, v)| *k == TRACESTATE && v == "vendor=1"));
        assert!(
            h.iter()
                .any(|(k, v)| *k == CONTENT_TYPE && v == "application/json")
        );
    }
}
