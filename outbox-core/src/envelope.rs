//! The event envelope: what an application writes in its transaction and what a publisher
//! sends.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Content type given to payloads built with [`EnvelopeBuilder::json`].
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Header names starting with this prefix (any case) are reserved for the toolkit's own
/// headers (event id, event type, ...), which publishers add to every message.
pub const RESERVED_HEADER_PREFIX: &str = "outbox-";

/// A globally unique, time-ordered event id (UUID version 7).
///
/// It is the consumer's deduplication key, and publishers pass it on as the broker's own
/// dedupe id where one exists.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new UUIDv7 id; ids made in one process are strictly increasing.
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// Wraps an existing UUID (read back from a store or a broker).
    pub fn from_uuid(uuid: Uuid) -> Self {
        EventId(uuid)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0.hyphenated())
    }
}

impl FromStr for EventId {
    type Err = EnvelopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(EventId)
            .map_err(|_| EnvelopeError::InvalidEventId(s.chars().take(64).collect()))
    }
}

/// W3C trace context carried with the event so consumers can continue the producer's trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TraceWire")]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

/// A trace context as it is deserialised, before validation.
#[derive(Deserialize)]
struct TraceWire {
    traceparent: String,
    tracestate: Option<String>,
}

impl TryFrom<TraceWire> for TraceContext {
    type Error = EnvelopeError;
    fn try_from(w: TraceWire) -> Result<Self, EnvelopeError> {
        TraceContext::new(w.traceparent, w.tracestate)
    }
}

impl TraceContext {
    /// Validates a `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`) and an optional `tracestate`.
    pub fn new(
        traceparent: impl Into<String>,
        tracestate: Option<String>,
    ) -> Result<Self, EnvelopeError> {
        let traceparent = traceparent.into();
        if !valid_traceparent(&traceparent) {
            return Err(EnvelopeError::InvalidTraceParent(
                traceparent.chars().take(80).collect(),
            ));
        }
        if let Some(state) = &tracestate
            && (state.len() > 512 || state.chars().any(|c| c.is_control()))
        {
            return Err(EnvelopeError::InvalidTraceState);
        }
        Ok(TraceContext {
            traceparent,
            tracestate,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
}

fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// Message headers: name to value, sorted by name.
pub type Headers = BTreeMap<String, String>;

/// Bounds that envelopes are validated against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationLimits {
    /// Largest payload accepted, in bytes (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Most headers accepted (default 64).
    pub max_headers: usize,
    /// Longest header value, in bytes (default 4096).
    pub max_header_value_bytes: usize,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        ValidationLimits {
            max_payload_bytes: 1024 * 1024,
            max_headers: 64,
            max_header_value_bytes: 4096,
        }
    }
}

/// Longest aggregate type, aggregate id, event type, ordering key or content type.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest destination.
pub const MAX_DESTINATION_BYTES: usize = 512;
/// Longest header name.
pub const MAX_HEADER_NAME_BYTES: usize = 128;

/// Why an envelope was refused. Every variant names the field or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required field was empty.
    #[error("envelope field `{field}` must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A field was longer than allowed.
    #[error("envelope field `{field}` is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field held a control character (newline, NUL, ...), which brokers and logs mangle.
    #[error("envelope field `{field}` contains a control character")]
    ControlCharacter {
        /// The field.
        field: &'static str,
    },
    /// The payload was larger than [`ValidationLimits::max_payload_bytes`].
    #[error("payload is {size} bytes; the limit is {max} bytes")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More headers than [`ValidationLimits::max_headers`].
    #[error("envelope has {count} headers; the limit is {max}")]
    TooManyHeaders {
        /// Number of headers.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A header name that some broker would reject.
    #[error("header name {name:?} is invalid: {reason}")]
    InvalidHeaderName {
        /// The name (cut to 64 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header value that some broker would reject.
    #[error("value of header {name:?} is invalid: {reason}")]
    InvalidHeaderValue {
        /// The header name.
        name: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A `traceparent` that is not W3C trace-context version 00 syntax.
    #[error("traceparent {0:?} is not `00-<32 hex>-<16 hex>-<2 hex>`")]
    InvalidTraceParent(String),
    /// A `tracestate` longer than 512 bytes or holding control characters.
    #[error("tracestate is longer than 512 bytes or contains control characters")]
    InvalidTraceState,
    /// `available_at` is earlier than `created_at`.
    #[error("available_at ({available_at}) is earlier than created_at ({created_at})")]
    AvailableBeforeCreated {
        /// When the event was created.
        created_at: DateTime<Utc>,
        /// When it was to become available.
        available_at: DateTime<Utc>,
    },
    /// A string that is not a UUID where an event id was expected.
    #[error("event id {0:?} is not a UUID")]
    InvalidEventId(String),
    /// The payload could not be serialised to JSON.
    #[error("payload could not be serialised as JSON: {0}")]
    Serialize(String),
}

/// An event, validated, ready to be written to the outbox table in the caller's transaction.
///
/// Build one with [`Envelope::builder`]; read its fields with the accessors. A store reads
/// rows back with [`EnvelopeParts::into_envelope`], which validates again; deserialising
/// one (from JSON, say) validates it the same way, with the default [`ValidationLimits`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EnvelopeWire")]
pub struct Envelope {
    id: EventId,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    destination: String,
    ordering_key: String,
    payload: Bytes,
    content_type: String,
    headers: Headers,
    created_at: DateTime<Utc>,
    available_at: DateTime<Utc>,
    trace: Option<TraceContext>,
}

/// An envelope as it is deserialised, before validation.
#[derive(Deserialize)]
struct EnvelopeWire {
    id: EventId,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    destination: String,
    ordering_key: String,
    payload: Bytes,
    content_type: String,
    headers: Headers,
    created_at: DateTime<Utc>,
    available_at: DateTime<Utc>,
    trace: Option<TraceContext>,
}

impl TryFrom<EnvelopeWire> for Envelope {
    type Error = EnvelopeError;
    fn try_from(w: EnvelopeWire) -> Result<Self, EnvelopeError> {
        let (traceparent, tracestate) = match w.trace {
            Some(t) => (Some(t.traceparent), t.tracestate),
            None => (None, None),
        };
        EnvelopeParts {
            id: w.id,
            aggregate_type: w.aggregate_type,
            aggregate_id: w.aggregate_id,
            event_type: w.event_type,
            destination: w.destination,
            ordering_key: Some(w.ordering_key),
            payload: w.payload,
            content_type: w.content_type,
            headers: w.headers,
            created_at: w.created_at,
            available_at: Some(w.available_at),
            traceparent,
            tracestate,
        }
        .into_envelope(&ValidationLimits::default())
    }
}

impl fmt::Debug for Envelope {
    // The payload may hold personal data: Debug shows its size, not its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("aggregate_type", &self.aggregate_type)
            .field("aggregate_id", &self.aggregate_id)
            .field("event_type", &self.event_type)
            .field("destination", &self.destination)
            .field("ordering_key", &self.ordering_key)
            .field("payload_bytes", &self.payload.len())
            .field("content_type", &self.content_type)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("created_at", &self.created_at)
            .field("available_at", &self.available_at)
            .field("trace", &self.trace)
            .finish()
    }
}

impl Envelope {
    /// Starts an envelope for an event of `event_type` about aggregate
    /// `aggregate_type`/`aggregate_id`, sent to `destination`.
    ///
    /// The destination is one string that the publisher interprets: a Kafka topic, a NATS
    /// subject, an SQS queue name or URL, an AMQP `exchange/routing-key`.
    pub fn builder(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        destination: impl Into<String>,
    ) -> EnvelopeBuilder {
        EnvelopeBuilder {
            parts: EnvelopeParts {
                id: EventId::new(),
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                event_type: event_type.into(),
                destination: destination.into(),
                ordering_key: None,
                payload: Bytes::new(),
                content_type: JSON_CONTENT_TYPE.to_owned(),
                headers: Headers::new(),
                created_at: Utc::now(),
                available_at: None,
                traceparent: None,
                tracestate: None,
            },
            limits: ValidationLimits::default(),
            deferred: None,
            trace_from_span: true,
        }
    }

    /// The event id.
    pub fn id(&self) -> EventId {
        self.id
    }
    /// The aggregate's type, e.g. `order`.
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// The aggregate's id.
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// The event's type, e.g. `order.placed`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// Where the publisher sends it.
    pub fn destination(&self) -> &str {
        &self.destination
    }
    /// Events with the same ordering key are published in the order they were written.
    pub fn ordering_key(&self) -> &str {
        &self.ordering_key
    }
    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// The payload's MIME type.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }
    /// User headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// When the event was created.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    /// Not published before this instant (delayed delivery).
    pub fn available_at(&self) -> DateTime<Utc> {
        self.available_at
    }
    /// W3C trace context, if the producer had one.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }
    /// Replaces the trace context (the publish engine gives each message its `send`
    /// span's context).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn set_trace(&mut self, trace: Option<TraceContext>) {
        self.trace = trace;
    }

    /// Takes the envelope apart, e.g. to bind its fields in an insert.
    pub fn into_parts(self) -> EnvelopeParts {
        EnvelopeParts {
            id: self.id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            destination: self.destination,
            ordering_key: Some(self.ordering_key),
            payload: self.payload,
            content_type: self.content_type,
            headers: self.headers,
            created_at: self.created_at,
            available_at: Some(self.available_at),
            traceparent: self.trace.as_ref().map(|t| t.traceparent.clone()),
            tracestate: self.trace.and_then(|t| t.tracestate),
        }
    }

    /// The headers as the JSON text stored in the `headers` column.
    pub fn headers_json(&self) -> String {
        // A map of strings always serialises.
        serde_json::to_string(&self.headers).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// The raw fields of an envelope, unvalidated: what a store reads from a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeParts {
    /// Event id.
    pub id: EventId,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Event type.
    pub event_type: String,
    /// Destination.
    pub destination: String,
    /// Ordering key; `None` means the aggregate id.
    pub ordering_key: Option<String>,
    /// Payload.
    pub payload: Bytes,
    /// Payload MIME type.
    pub content_type: String,
    /// Headers.
    pub headers: Headers,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Delayed delivery time; `None` means `created_at`.
    pub available_at: Option<DateTime<Utc>>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
}

impl EnvelopeParts {
    /// Parses the JSON text of the `headers` column.
    pub fn parse_headers(json: &str) -> Result<Headers, EnvelopeError> {
        serde_json::from_str(json).map_err(|e| EnvelopeError::InvalidHeaderValue {
            name: "<headers column>".to_owned(),
            reason: format!("not a JSON object of strings: {e}"),
        })
    }

    /// Moves a valid W3C `traceparent` header (and its `tracestate`, names in any case) out
    /// of [`headers`](Self::headers) into the trace fields, when those are empty. A source
    /// whose rows keep the trace among their headers (an event table's JSON column) thereby
    /// joins the writer's trace like an outbox row does. A `traceparent` that is not valid
    /// stays a plain header and the event has no trace: a malformed trace never costs the
    /// event.
    pub fn take_trace_from_headers(&mut self) {
        use crate::transport::{TRACEPARENT, TRACESTATE, trace_context};
        if self.traceparent.is_some() {
            return;
        }
        let pairs = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let Some(trace) = trace_context(pairs) else {
            return;
        };
        self.headers.retain(|k, _| {
            !k.eq_ignore_ascii_case(TRACEPARENT) && !k.eq_ignore_ascii_case(TRACESTATE)
        });
        self.traceparent = Some(trace.traceparent().to_owned());
        self.tracestate = trace.tracestate().map(str::to_owned);
    }

    /// Validates the parts against `limits` and builds the envelope.
    pub fn into_envelope(self, limits: &ValidationLimits) -> Result<Envelope, EnvelopeError> {
        check_name("aggregate_type", &self.aggregate_type, MAX_NAME_BYTES)?;
        check_name("aggregate_id", &self.aggregate_id, MAX_NAME_BYTES)?;
        check_name("event_type", &self.event_type, MAX_NAME_BYTES)?;
        check_name("destination", &self.destination, MAX_DESTINATION_BYTES)?;
        check_name("content_type", &self.content_type, MAX_NAME_BYTES)?;
        let ordering_key = self
            .ordering_key
            .unwrap_or_else(|| self.aggregate_id.clone());
        check_name("ordering_key", &ordering_key, MAX_NAME_BYTES)?;
        if self.payload.len() > limits.max_payload_bytes {
            return Err(EnvelopeError::PayloadTooLarge {
                size: self.payload.len(),
                max: limits.max_payload_bytes,
            });
        }
        if self.headers.len() > limits.max_headers {
            return Err(EnvelopeError::TooManyHeaders {
                count: self.headers.len(),
                max: limits.max_headers,
            });
        }
        for (name, value) in &self.headers {
            check_header(name, value, limits)?;
        }
        let available_at = self.available_at.unwrap_or(self.created_at);
        if available_at < self.created_at {
            return Err(EnvelopeError::AvailableBeforeCreated {
                created_at: self.created_at,
                available_at,
            });
        }
        let trace = match self.traceparent {
            Some(tp) => Some(TraceContext::new(tp, self.tracestate)?),
            None => None,
        };
        Ok(Envelope {
            id: self.id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            destination: self.destination,
            ordering_key,
            payload: self.payload,
            content_type: self.content_type,
            headers: self.headers,
            created_at: self.created_at,
            available_at,
            trace,
        })
    }
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), EnvelopeError> {
    if value.trim().is_empty() {
        return Err(EnvelopeError::Empty { field });
    }
    if value.len() > max {
        return Err(EnvelopeError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(EnvelopeError::ControlCharacter { field });
    }
    Ok(())
}

/// Header names are held to the intersection of what Kafka, AMQP, NATS and SQS accept:
/// 1 to 128 characters of `A-Z a-z 0-9 - _ .`, no leading, trailing or doubled `.`, not
/// starting with `AWS.` or `Amazon.` (SQS), and not in the toolkit's reserved `outbox-`
/// namespace.
fn check_header(name: &str, value: &str, limits: &ValidationLimits) -> Result<(), EnvelopeError> {
    let bad = |reason: &'static str| EnvelopeError::InvalidHeaderName {
        name: name.chars().take(64).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_HEADER_NAME_BYTES {
        return Err(bad("it is longer than 128 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(
            "only ASCII letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err(bad("'.' may not lead, trail or repeat"));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("aws.") || lower.starts_with("amazon.") {
        return Err(bad(
            "names starting with 'AWS.' or 'Amazon.' are reserved by SQS",
        ));
    }
    if lower.starts_with(RESERVED_HEADER_PREFIX) {
        return Err(bad(
            "names starting with 'outbox-' are reserved for the toolkit",
        ));
    }
    if value.len() > limits.max_header_value_bytes {
        return Err(EnvelopeError::InvalidHeaderValue {
            name: name.to_owned(),
            reason: format!(
                "it is {} bytes long; the limit is {}",
                value.len(),
                limits.max_header_value_bytes
            ),
        });
    }
    if value.chars().any(char::is_control) {
        return Err(EnvelopeError::InvalidHeaderValue {
            name: name.to_owned(),
            reason: "it contains a control character".to_owned(),
        });
    }
    Ok(())
}

/// Builds an [`Envelope`]; [`EnvelopeBuilder::build`] validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct EnvelopeBuilder {
    parts: EnvelopeParts,
    limits: ValidationLimits,
    deferred: Option<EnvelopeError>,
    /// Whether [`build`](Self::build) may take the current span's trace context.
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    trace_from_span: bool,
}

impl EnvelopeBuilder {
    /// Uses this event id instead of a fresh one (e.g. when the id is known upstream).
    pub fn with_id(mut self, id: EventId) -> Self {
        self.parts.id = id;
        self
    }
    /// Orders by this key instead of the aggregate id.
    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        self.parts.ordering_key = Some(key.into());
        self
    }
    /// Raw payload bytes and their MIME type.
    pub fn with_payload(
        mut self,
        payload: impl Into<Bytes>,
        content_type: impl Into<String>,
    ) -> Self {
        self.parts.payload = payload.into();
        self.parts.content_type = content_type.into();
        self
    }
    /// Serialises `value` as the JSON payload (`application/json`). A serialisation error
    /// is reported by [`build`](Self::build).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => {
                self.parts.payload = Bytes::from(bytes);
                self.parts.content_type = JSON_CONTENT_TYPE.to_owned();
            }
            Err(e) => self.deferred = Some(EnvelopeError::Serialize(e.to_string())),
        }
        self
    }
    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parts.headers.insert(name.into(), value.into());
        self
    }
    /// Sets the creation time (default: now).
    pub fn with_created_at(mut self, at: DateTime<Utc>) -> Self {
        self.parts.created_at = at;
        self
    }
    /// Delays publication until `at`.
    pub fn with_available_at(mut self, at: DateTime<Utc>) -> Self {
        self.parts.available_at = Some(at);
        self
    }
    /// Delays publication by `delay` from the creation time.
    pub fn with_delay(mut self, delay: std::time::Duration) -> Self {
        match chrono::Duration::from_std(delay) {
            Ok(d) => self.parts.available_at = Some(self.parts.created_at + d),
            Err(_) => {
                self.deferred = Some(EnvelopeError::TooLong {
                    field: "available_at",
                    len: usize::MAX,
                    max: i64::MAX as usize,
                })
            }
        }
        self
    }
    /// Attaches W3C trace context.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.parts.traceparent = Some(trace.traceparent);
        self.parts.tracestate = trace.tracestate;
        self
    }
    /// Attaches the trace context of `cx`'s span (feature `opentelemetry`); a context
    /// without a valid span stores none.
    #[cfg(feature = "opentelemetry")]
    pub fn with_otel_context(self, cx: &opentelemetry::Context) -> Self {
        match TraceContext::from_otel(cx) {
            Some(trace) => self.with_trace(trace),
            None => self.without_trace(),
        }
    }
    /// Stores no trace context, not even the current span's (with the `opentelemetry`
    /// feature, [`build`](Self::build) otherwise takes it).
    pub fn without_trace(mut self) -> Self {
        self.parts.traceparent = None;
        self.parts.tracestate = None;
        self.trace_from_span = false;
        self
    }
    /// Validates against these limits instead of the defaults.
    pub fn with_limits(mut self, limits: ValidationLimits) -> Self {
        self.limits = limits;
        self
    }
    /// Validates and builds the envelope.
    ///
    /// With the `opentelemetry` feature, an envelope given no trace context (and not
    /// [`without_trace`](Self::without_trace)) takes the current span's, if there is one:
    /// see [`otel`](crate::otel).
    #[cfg_attr(not(feature = "opentelemetry"), allow(unused_mut))]
    pub fn build(mut self) -> Result<Envelope, EnvelopeError> {
        if let Some(err) = self.deferred {
            return Err(err);
        }
        #[cfg(feature = "opentelemetry")]
        if self.trace_from_span
            && self.parts.traceparent.is_none()
            && let Some(trace) = TraceContext::current()
        {
            self = self.with_trace(trace);
        }
        self.parts.into_envelope(&self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> EnvelopeBuilder {
        Envelope::builder("order", "o-1", "order.placed", "orders")
    }

    #[test]
    fn json_payload_and_defaults() {
        #[derive(Serialize)]
        struct Placed {
            total: u32,
        }
        let env = base().json(&Placed { total: 42 }).build().expect("valid");
        assert_eq!(env.payload().as_ref(), br#"{"total":42}"#);
        assert_eq!(env.content_type(), JSON_CONTENT_TYPE);
        assert_eq!(env.ordering_key(), "o-1");
        assert_eq!(env.available_at(), env.created_at());
        assert_eq!(env.id().as_uuid().get_version_num(), 7);
    }

    #[test]
    fn a_valid_trace_header_becomes_the_trace() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let parts = |headers: &[(&str, &str)]| {
            let mut p = base().without_trace().build().expect("valid").into_parts();
            p.headers = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            p.take_trace_from_headers();
            p
        };

        let p = parts(&[("TraceParent", parent), ("tracestate", "v=1"), ("x", "y")]);
        assert_eq!(p.traceparent.as_deref(), Some(parent));
        assert_eq!(p.tracestate.as_deref(), Some("v=1"));
        assert_eq!(p.headers.keys().collect::<Vec<_>>(), ["x"]);
        let env = p
            .into_envelope(&ValidationLimits::default())
            .expect("valid");
        assert_eq!(env.trace().map(TraceContext::traceparent), Some(parent));

        // Not valid: it stays a header and the event has no trace.
        let p = parts(&[("traceparent", "00-nothex-01"), ("tracestate", "v=1")]);
        assert_eq!((p.traceparent, p.headers.len()), (None, 2));

        // A trace already set wins over a header.
        let mut p = parts(&[]);
        p.traceparent = Some(parent.replace("b7ad", "c7ad"));
        p.headers.insert("traceparent".into(), parent.into());
        p.take_trace_from_headers();
        assert_eq!(p.headers.len(), 1);
        assert!(p.traceparent.is_some_and(|t| t.contains("c7ad")));
    }

    #[test]
    fn ids_are_time_ordered() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn empty_destination_is_named() {
        let err = Envelope::builder("order", "o-1", "order.placed", " ")
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::Empty {
                field: "destination"
            }
        );
        assert!(err.to_string().contains("`destination`"));
    }

    #[test]
    fn header_names_brokers_reject_are_refused() {
        for name in [
            "",
            "has space",
            "colon:",
            "a..b",
            ".lead",
            "AWS.trace",
            "amazon.x",
            "Outbox-Event-Id",
            "nüm",
        ] {
            let err = base().with_header(name, "v").build().unwrap_err();
            assert!(
                matches!(err, EnvelopeError::InvalidHeaderName { .. }),
                "{name:?}: {err}"
            );
        }
        let err = base()
            .with_header("x-ok", "line\nbreak")
            .build()
            .unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidHeaderValue { .. }));
        base()
            .with_header("x-tenant_id.v2", "acme")
            .build()
            .expect("valid header");
    }

    #[test]
    fn payload_limit_is_configurable() {
        let limits = ValidationLimits {
            max_payload_bytes: 4,
            ..ValidationLimits::default()
        };
        let err = base()
            .with_payload(vec![0u8; 5], "application/octet-stream")
            .with_limits(limits.clone())
            .build()
            .unwrap_err();
        assert_eq!(err, EnvelopeError::PayloadTooLarge { size: 5, max: 4 });
        base()
            .with_payload(vec![0u8; 4], "application/octet-stream")
            .with_limits(limits)
            .build()
            .expect("at the limit");
    }

    #[test]
    fn trace_context_is_validated() {
        let ok = TraceContext::new(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        );
        assert!(ok.is_ok());
        for bad in [
            "",
            "00-xyz-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::new(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn delayed_delivery_and_parts_round_trip() {
        let env = base()
            .with_delay(std::time::Duration::from_secs(60))
            .with_ordering_key("customer-9")
            .with_header("x-a", "1")
            .build()
            .expect("valid");
        assert_eq!(
            env.available_at() - env.created_at(),
            chrono::Duration::seconds(60)
        );
        let again = env
            .clone()
            .into_parts()
            .into_envelope(&ValidationLimits::default())
            .expect("valid");
        assert_eq!(env, again);
        let headers = EnvelopeParts::parse_headers(&env.headers_json()).expect("json");
        assert_eq!(&headers, env.headers());
    }

    #[test]
    fn debug_hides_the_payload() {
        let env = base()
            .with_payload(&b"secret-card-number"[..], "text/plain")
            .build()
            .expect("valid");
        let dbg = format!("{env:?}");
        assert!(!dbg.contains("secret"));
        assert!(dbg.contains("payload_bytes: 18"));
    }

    #[test]
    fn deserialising_validates() {
        let env = base().build().expect("valid");
        let json = serde_json::to_value(&env).expect("serialise");
        let back: Envelope = serde_json::from_value(json.clone()).expect("round trip");
        assert_eq!(back, env);
        let mut bad = json.clone();
        bad["event_type"] = serde_json::Value::String(String::new());
        let err = serde_json::from_value::<Envelope>(bad).expect_err("empty event type");
        assert!(err.to_string().contains("event_type"), "{err}");
        let mut bad = json;
        bad["trace"] = serde_json::json!({ "traceparent": "nope", "tracestate": null });
        let err = serde_json::from_value::<Envelope>(bad).expect_err("bad traceparent");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
