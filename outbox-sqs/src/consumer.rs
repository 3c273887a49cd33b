//! Reading a received message back: the event id for the consumer's inbox, and the trace
//! context for the consumer's span.

use std::collections::BTreeMap;

use outbox_core::transport::{self, EVENT_ID, parse_event_id};
use outbox_core::{Error, ErrorKind, EventId, Result, TraceContext};

use crate::message::META;

/// The trace context the relay's `send` span put on a message (`traceparent` and
/// `tracestate` in its `outbox-meta` attribute; receive with
/// `message_attribute_names("All")`), if it carries a valid one. With `outbox-core`'s
/// `opentelemetry` feature, [`TraceContext::make_parent_of`] makes the consumer's span its
/// child.
pub fn trace_context(message: &aws_sdk_sqs::types::Message) -> Option<TraceContext> {
    let meta = message.message_attributes()?.get(META)?.string_value()?;
    let meta: BTreeMap<String, String> = serde_json::from_str(meta).ok()?;
    transport::trace_context(meta.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

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
        assert_eq!(trace_context(&m), None);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let meta = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(serde_json::json!({ "traceparent": parent }).to_string())
            .build()
            .expect("attribute");
        let m = Message::builder().message_attributes(META, meta).build();
        assert_eq!(trace_context(&m).expect("trace").traceparent(), parent);
        let err = event_id(&Message::builder().build()).expect_err("none");
        assert!(err.message().contains("message_attribute_names"), "{err}");
    }
}
