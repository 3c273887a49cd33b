//! Reading a received message back: the event id for the consumer's inbox, and the trace
//! context for the consumer's span.

use outbox_core::transport::{self, EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result, TraceContext};
use rdkafka::message::{Headers, Message};

/// The trace context the relay's `send` span put on a record (headers `traceparent`,
/// `tracestate`), if it carries a valid one. With `outbox-core`'s `opentelemetry` feature,
/// [`TraceContext::make_parent_of`] makes the consumer's span its child.
pub fn trace_context<M: Message>(message: &M) -> Option<TraceContext> {
    let headers = message.headers()?;
    transport::trace_context(headers.iter().filter_map(|h| {
        let value = std::str::from_utf8(h.value?).ok()?;
        Some((h.key, value))
    }))
}

/// The event id of a record the relay produced, from its `outbox-event-id` header. Pass it
/// to the inbox (`outbox_sqlx::inbox::Inbox::record` and its diesel and SeaORM twins).
pub fn event_id<M: Message>(message: &M) -> Result<EventId> {
    let missing = || {
        Error::new(
            ErrorKind::Decode,
            format!(
                "the record at partition {} offset {} has no `{EVENT_ID}` header: it was not produced by the outbox relay",
                message.partition(),
                message.offset()
            ),
        )
    };
    let headers = message.headers().ok_or_else(missing)?;
    let header = headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(EVENT_ID))
        .ok_or_else(missing)?;
    let value = header.value.unwrap_or_default();
    let text = std::str::from_utf8(value).map_err(|_| {
        Error::new(
            ErrorKind::Decode,
            format!("header `{EVENT_ID}` is not UTF-8"),
        )
    })?;
    parse_event_id(EVENT_ID, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn msg(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            7,
            headers,
        )
    }

    #[test]
    fn reads_the_header_and_names_the_offset() {
        let id = outbox_core::EventId::new();
        let text = id.to_string();
        let h = OwnedHeaders::new().insert(Header {
            key: EVENT_ID,
            value: Some(text.as_str()),
        });
        assert_eq!(event_id(&msg(Some(h))).expect("id"), id);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(parent),
        });
        let trace = trace_context(&msg(Some(h))).expect("trace");
        assert_eq!(trace.traceparent(), parent);
        assert_eq!(trace_context(&msg(None)), None);
        let err = event_id(&msg(None)).expect_err("none");
        assert!(err.message().contains("offset 7"), "{err}");
    }
}
