//! Reading a received message back: the event id for the consumer's inbox.

use lapin::types::AMQPValue;
use outbox_core::transport::{EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result};

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
        let p = lapin::BasicProperties::default().with_message_id("x".into());
        assert!(
            event_id(&p)
                .expect_err("bad")
                .message()
                .contains("message_id")
        );
    }
}
