//! Reading a received message back: the event id for the consumer's inbox.

use outbox_core::transport::{EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result};

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
}
