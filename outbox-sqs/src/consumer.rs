//! Reading a received message back: the event id for the consumer's inbox.

use outbox_core::transport::{EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result};

/// The event id of a message the relay sent, from its `outbox-event-id` message
/// attribute (receive with `message_attribute_names("All")`). Pass it to the inbox
/// (`outbox_sqlx::inbox::Inbox::record` and its diesel and SeaORM twins).
pub fn event_id(message: &aws_sdk_sqs::types::Message) -> Result<EventId> {
    let value = message
        .message_attributes()
        .and_then(|a| a.get(EVENT_ID))
        .and_then(|v| v.string_value())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "the message has no `{EVENT_ID}` attribute (was it received with message_attribute_names(\"All\")?)"
                ),
            )
        })?;
    parse_event_id(EVENT_ID, value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::{Message, MessageAttributeValue};

    #[test]
    fn reads_the_attribute() {
        let id = outbox_core::EventId::new();
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(id.to_string())
            .build()
            .expect("attribute");
        let m = Message::builder()
            .message_attributes(EVENT_ID, attr)
            .build();
        assert_eq!(event_id(&m).expect("id"), id);
        let err = event_id(&Message::builder().build()).expect_err("none");
        assert!(err.message().contains("message_attribute_names"), "{err}");
    }
}
