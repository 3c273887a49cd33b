//! Reading a received message back: the event id for the consumer's inbox, and the trace
//! context for the consumer's span.

use outbox_core::transport::{self, EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result, TraceContext};

/// The trace context the relay's `send` span put on `message` (`traceparent`,
/// `tracestate`), if it carries a valid one. With `outbox-core`'s `opentelemetry` feature,
/// [`TraceContext::make_parent_of`] makes the consumer's span its child.
pub fn trace_context(message: &async_nats::Message) -> Option<TraceContext> {
    trace_context_from_headers(message.headers.as_ref())
}

/// [`trace_context`] from a header map (a JetStream message derefs to its `Message`).
pub fn trace_context_from_headers(headers: Option<&async_nats::HeaderMap>) -> Option<TraceContext> {
    let headers = headers?;
    transport::trace_context(
        [transport::TRACEPARENT, transport::TRACESTATE]
            .into_iter()
            .filter_map(|name| headers.get(name).map(|v| (name, v.as_str()))),
    )
}

/// The event id of a message the relay published, from its `outbox-event-id` header (or
/// `Nats-Msg-Id`, which carries the same id). Pass it to the inbox
/// (`outbox_sqlx::inbox::Inbox::record` and its diesel and SeaORM twins).
pub fn event_id(message: &async_nats::Message) -> Result<EventId> {
    event_id_from_headers(message.headers.as_ref())
}

/// [`event_id`] from a header map (a JetStream message derefs to its `Message`).
pub fn event_id_from_headers(headers: Option<&async_nats::HeaderMap>) -> Result<EventId> {
    let headers = headers.ok_or_else(|| {
        Error::new(ErrorKind::Decode, format!("the message has no headers, so no `{EVENT_ID}`: it was not published by the outbox relay"))
    })?;
    for name in [EVENT_ID, "Nats-Msg-Id"] {
        if let Some(v) = headers.get(name) {
            return parse_event_id(name, v.as_str());
        }
    }
    Err(Error::new(
        ErrorKind::Decode,
        format!("the message has no `{EVENT_ID}` header: it was not published by the outbox relay"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_header_and_names_what_is_wrong() {
        let id = EventId::new();
        let mut h = async_nats::HeaderMap::new();
        h.insert(EVENT_ID, id.to_string().as_str());
        assert_eq!(event_id_from_headers(Some(&h)).expect("id"), id);
        let mut only_dedupe = async_nats::HeaderMap::new();
        only_dedupe.insert("Nats-Msg-Id", id.to_string().as_str());
        assert_eq!(event_id_from_headers(Some(&only_dedupe)).expect("id"), id);
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(EVENT_ID, "nope");
        assert!(
            event_id_from_headers(Some(&bad))
                .expect_err("bad")
                .message()
                .contains("nope")
        );
        assert!(event_id_from_headers(None).is_err());
    }

    #[test]
    fn reads_the_trace_context() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = async_nats::HeaderMap::new();
        h.insert("traceparent", parent);
        let t = trace_context_from_headers(Some(&h)).expect("trace");
        assert_eq!((t.traceparent(), t.tracestate()), (parent, None));
        assert_eq!(trace_context_from_headers(None), None);
    }
}
