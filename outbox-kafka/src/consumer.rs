//! Reading a received message back: the event id for the consumer's inbox.

use outbox_core::transport::{EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result};
use rdkafka::message::{Headers, Message};

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
        let err = event_id(&msg(None)).expect_err("none");
        assert!(err.message().contains("offset 7"), "{err}");
    }
}
