//! How an envelope travels as an SQS message, and how a consumer reads it back.
//!
//! SQS allows at most 10 message attributes, so the toolkit's metadata travels in two:
//! `outbox-event-id` (plain, to filter on) and `outbox-meta` (a JSON object of the other
//! transport headers: type, aggregate, key, creation time, content type, trace). User headers
//! go as attributes of their own when there are at most 8, otherwise together as a JSON
//! object in `outbox-headers`. A body that is not valid SQS text (binary payloads) is sent
//! base64-encoded, flagged by `outbox-body=base64`, which also counts against the limit, so
//! then at most 7 user headers go separately.

use std::collections::BTreeMap;

use base64::Engine as _;
use outbox_core::{Envelope, EventId, Headers, transport};

/// Attribute carrying the event id.
pub const EVENT_ID: &str = transport::EVENT_ID;
/// Attribute carrying the other transport headers as a JSON object.
pub const META: &str = "outbox-meta";
/// Attribute carrying the user headers as a JSON object, when they do not fit one by one.
pub const HEADERS: &str = "outbox-headers";
/// Attribute present (`base64`) when the body is the base64 of the payload.
pub const BODY: &str = "outbox-body";

/// SQS's attribute limit per message.
const MAX_ATTRIBUTES: usize = 10;

/// A message ready to send: body and string attributes.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub body: String,
    pub attributes: Vec<(String, String)>,
}

impl Outgoing {
    /// Bytes SQS counts against its size limit: body, attribute names, types and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

/// Characters SQS accepts in a body: #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD |
/// #x10000 to #x10FFFF.
fn sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
    })
}

pub(crate) fn encode(e: &Envelope) -> Outgoing {
    let mut attributes = Vec::new();
    let (body, binary) = match std::str::from_utf8(e.payload()) {
        Ok(text) if sqs_text(text) => (text.to_owned(), false),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(e.payload()),
            true,
        ),
    };
    attributes.push((EVENT_ID.to_owned(), e.id().to_string()));
    let meta: BTreeMap<&str, String> = transport::message_headers(e)
        .into_iter()
        .filter(|(k, _)| transport::is_toolkit_header(k) && *k != EVENT_ID)
        .collect();
    attributes.push((
        META.to_owned(),
        serde_json::to_string(&meta).unwrap_or_else(|_| "{}".to_owned()),
    ));
    if binary {
        attributes.push((BODY.to_owned(), "base64".to_owned()));
    }
    let room = MAX_ATTRIBUTES - attributes.len();
    if e.headers().len() <= room {
        attributes.extend(e.headers().iter().map(|(k, v)| (k.clone(), v.clone())));
    } else {
        attributes.push((
            HEADERS.to_owned(),
            serde_json::to_string(e.headers()).unwrap_or_else(|_| "{}".to_owned()),
        ));
    }
    Outgoing { body, attributes }
}

/// What a consumer reads back from a message's body and string attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The event id.
    pub event_id: Option<EventId>,
    /// The payload (base64-decoded when it was sent so).
    pub payload: Vec<u8>,
    /// The transport headers (`outbox-event-type`, `content-type`, `traceparent`, ...).
    pub meta: BTreeMap<String, String>,
    /// The user headers.
    pub headers: Headers,
}

/// Decodes a received message from its body and `(name, string value)` attributes.
pub fn decode_attributes<'a>(
    body: &str,
    attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Decoded {
    let mut out = Decoded {
        event_id: None,
        payload: body.as_bytes().to_vec(),
        meta: BTreeMap::new(),
        headers: Headers::new(),
    };
    let mut base64 = false;
    for (k, v) in attributes {
        match k {
            EVENT_ID => out.event_id = v.parse().ok(),
            META => out.meta = serde_json::from_str(v).unwrap_or_default(),
            HEADERS => out
                .headers
                .extend(serde_json::from_str::<Headers>(v).unwrap_or_default()),
            BODY => base64 = v == "base64",
            _ => {
                out.headers.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    if base64 && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(body) {
        out.payload = bytes;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(o: &Outgoing) -> Vec<(&str, &str)> {
        o.attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn round_trips_text_binary_and_many_headers() {
        let mut b = Envelope::builder("order", "o-1", "order.placed", "q")
            .json(&serde_json::json!({"a": 1}));
        for i in 0..12 {
            b = b.with_header(format!("x-h{i}"), i.to_string());
        }
        let e = b.build().expect("valid");
        let o = encode(&e);
        assert!(o.attributes.len() <= MAX_ATTRIBUTES);
        let d = decode_attributes(&o.body, attrs(&o));
        assert_eq!(d.event_id, Some(e.id()));
        assert_eq!(d.payload, e.payload().to_vec());
        assert_eq!(&d.headers, e.headers());
        assert_eq!(
            d.meta.get("outbox-event-type").map(String::as_str),
            Some("order.placed")
        );

        let bin = Envelope::builder("order", "o-1", "order.placed", "q")
            .with_payload(vec![0u8, 159, 146, 150, 1], "application/octet-stream")
            .with_header("x-one", "1")
            .build()
            .expect("valid");
        let o = encode(&bin);
        assert!(o.attributes.iter().any(|(k, v)| k == BODY && v == "base64"));
        let d = decode_attributes(&o.body, attrs(&o));
        assert_eq!(d.payload, bin.payload().to_vec());
        assert_eq!(&d.headers, bin.headers());
    }
}
