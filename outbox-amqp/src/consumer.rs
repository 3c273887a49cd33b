//! Reading a received message back: the event id for the consumer's inbox, and the trace
//! context for the consumer's span.

use lapin::types::AMQPValue;
use outbox_core::transport::{self, EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result, TraceContext};

/// The trace context the relay's `send` span put on a delivery (headers `traceparent`,
/// `tracestate`), if it carries a valid one. With `outbox-core`'s `opentelemetry` feature,
/// [`TraceContext::make_parent_of`] makes the consumer's span its child.
pub fn trace_context(properties: &lapin::BasicProperties) -> Option<TraceContext> {
    let table = properties.headers().as_ref()?;
    let text = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    let pairs: Vec<(String, String)> = table
        .inner()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), text(v)?)))
        .collect();
    transport::trace_context(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// The event id of a delivery the relay published: its AMQP `message_id`, or else its
/// `outbox-event-id` header. Pass it to the inbox (`outbox_sqlx::inbox::Inbox::record`
/// and its diesel and SeaORM twins).
pub fn event_id(properties: &lapin::BasicProperties) -> Result<EventId> {
    if let Some(id) = properties.message_id() {
        return parse_event_id("message_id", id.as_str());
    }
    let header = properties
        .headers()
        .as_ref()
        .and_then(|t| {
            t.inner()
                .iter()
                .find(|(k, _)| k.as_str().eq_ignore_ascii_case(EVENT_ID))
        })
        .map(|(_, v)| v);
    match header {
        Some(AMQPValue::LongString(s)) => {
            parse_event_id(EVENT_ID, &String::from_utf8_lossy(s.as_bytes()))
        }
        Some(AMQPValue::ShortString(s)) => parse_event_id(EVENT_ID, s.as_str()),
        Some(other) => Err(Error::new(
            ErrorKind::Decode,
            format!("header `{EVENT_ID}` is not a string but {other:?}"),
        )),
        None => Err(Error::new(
            ErrorKind::Decode,
            format!(
                "the message has no message_id and no `{EVENT_ID}` header: it was not published by the outbox relay"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn message_id_then_header() {
        let id = outbox_core::EventId::new();
        let p = lapin::BasicProperties::default().with_message_id(id.to_string().into());
        assert_eq!(event_id(&p).expect("id"), id);
        let mut t = FieldTable::default();
        t.insert(
            EVENT_ID.into(),
            AMQPValue::LongString(id.to_string().into()),
        );
        let p = lapin::BasicProperties::default().with_headers(t);
        assert_eq!(event_id(&p).expect("id"), id);
        let err = event_id(&lapin::BasicProperties::default()).expect_err("none");
        assert!(err.message().contains("message_id"), "{err}");
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut t = FieldTable::default();
        t.insert("traceparent".into(), AMQPValue::LongString(parent.into()));
        let p = lapin::BasicProperties::default().with_headers(t);
        let trace = trace_context(&p).expect("trace");
        assert_eq!(trace.traceparent(), parent);
        assert_eq!(trace_context(&lapin::BasicProperties::default()), None);
        let p = lapin::BasicProperties::default().with_message_id("x".into());
        assert!(
            event_id(&p)
                .expect_err("bad")
                .message()
                .contains("message_id")
        );
    }
}
