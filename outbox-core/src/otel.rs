//! OpenTelemetry trace context (feature `opentelemetry`): one trace from the request that
//! wrote an event, through the relay, to the consumer that handles it.
//!
//! Three links make the chain:
//!
//! 1. **Writer.** [`EnvelopeBuilder::build`](crate::EnvelopeBuilder::build) stores the trace
//!    context of the current span (the current `tracing` span under a
//!    `tracing_opentelemetry` layer, else the current OpenTelemetry [`Context`]) when the
//!    builder was given none. [`with_otel_context`](crate::EnvelopeBuilder::with_otel_context)
//!    takes an explicit context; [`without_trace`](crate::EnvelopeBuilder::without_trace)
//!    stores none.
//! 2. **Relay.** The publish engine opens one `send` span per event (name
//!    `send <destination>`, kind producer, with the messaging attributes of the
//!    OpenTelemetry semantic conventions), a *child* of the event's stored context, and the
//!    message carries that span's context in `traceparent`/`tracestate`. The conventions'
//!    batch form (one span per call, linking every message's creation context) would start
//!    a new trace per call; since each event here already has a creation context of its
//!    own (the writer's span), the per-message form keeps writer, relay and consumer in one
//!    trace. The spans have target `outbox::send`, so a filter can leave them out. Without
//!    an OpenTelemetry layer the message carries the stored context unchanged.
//! 3. **Consumer.** Each broker crate's `consumer::trace_context` reads the context back
//!    from a message; [`TraceContext::make_parent_of`] makes the consumer's span its child.
//!
//! ```text
//! writer span ──parent──▶ send <destination> (relay) ──parent──▶ consumer span
//! ```

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::{Envelope, TraceContext};
use crate::publisher::{PublishOutcome, Publisher};

impl TraceContext {
    /// The trace context of `cx`'s span, if it has a valid one.
    pub fn from_otel(cx: &Context) -> Option<TraceContext> {
        TraceContext::from_span_context(cx.span().span_context())
    }

    /// The trace context of an OpenTelemetry span context, if valid.
    pub fn from_span_context(sc: &SpanContext) -> Option<TraceContext> {
        if !sc.is_valid() {
            return None;
        }
        let parent = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        let state = sc.trace_state().header();
        TraceContext::new(parent, (!state.is_empty()).then_some(state)).ok()
    }

    /// The context of the current span: the current `tracing` span's (under a
    /// `tracing_opentelemetry` layer), else the current OpenTelemetry [`Context`]'s.
    pub fn current() -> Option<TraceContext> {
        TraceContext::from_otel(&tracing::Span::current().context())
            .or_else(|| TraceContext::from_otel(&Context::current()))
    }

    /// This context as an OpenTelemetry span context from a remote process (what a span
    /// made from it takes as its parent).
    pub fn span_context(&self) -> SpanContext {
        let mut parts = self.traceparent().split('-').skip(1);
        let trace_id = parts
            .next()
            .and_then(|h| TraceId::from_hex(h).ok())
            .unwrap_or(TraceId::INVALID);
        let span_id = parts
            .next()
            .and_then(|h| SpanId::from_hex(h).ok())
            .unwrap_or(SpanId::INVALID);
        let flags = parts
            .next()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .map_or(TraceFlags::default(), TraceFlags::new);
        let state = self
            .tracestate()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        SpanContext::new(trace_id, span_id, flags, true, state)
    }

    /// An OpenTelemetry [`Context`] whose (remote) span is this one.
    pub fn otel_context(&self) -> Context {
        Context::new().with_remote_span_context(self.span_context())
    }

    /// Makes `span` a child of this context: call it on a consumer's span before the span
    /// is entered. Returns `false` when it could not (no `tracing_opentelemetry` layer, or
    /// the span has already started).
    pub fn make_parent_of(&self, span: &tracing::Span) -> bool {
        span.set_parent(self.otel_context()).is_ok()
    }
}

/// The `send` spans of one publish call, one per event, in the call's order (the engine
/// uses this twin of `engine::NoSpans` when the feature is on).
pub(crate) struct SendSpans(Vec<tracing::Span>);

impl SendSpans {
    /// Opens a span per event of `envelopes`, child of the event's stored context, and
    /// gives each envelope the context of its span (when a layer records them), which the
    /// publisher puts on the message.
    pub(crate) fn open<P: Publisher + ?Sized>(publisher: &P, envelopes: &mut [Envelope]) -> Self {
        let spans = envelopes
            .iter_mut()
            .map(|e| {
                let span = tracing::info_span!(
                    target: "outbox::send",
                    "outbox.send",
                    otel.name = %format_args!("send {}", e.destination()),
                    otel.kind = "producer",
                    messaging.system = publisher.messaging_system(e),
                    messaging.operation.type = "send",
                    messaging.operation.name = "send",
                    messaging.destination.name = e.destination(),
                    messaging.message.id = %e.id(),
                    outbox.event_type = e.event_type(),
                    outbox.ordering_key = e.ordering_key(),
                    error.type = tracing::field::Empty,
                );
                if span.is_disabled() {
                    return span;
                }
                if let Some(stored) = e.trace() {
                    // Fails only without an OpenTelemetry layer; then nothing is exported.
                    let _ = span.set_parent(stored.otel_context());
                }
                if let Some(own) = TraceContext::from_otel(&span.context()) {
                    e.set_trace(Some(own));
                }
                span
            })
            .collect();
        SendSpans(spans)
    }

    /// Records the outcome of the `index`-th event of the call on its span.
    pub(crate) fn outcome(&self, index: usize, outcome: &PublishOutcome) {
        let Some(span) = self.0.get(index) else {
            return;
        };
        match outcome {
            PublishOutcome::Published => span.set_status(Status::Ok),
            PublishOutcome::Failed(err) => {
                span.record("error.type", err.kind().as_str());
                span.set_attribute("outbox.retryable", err.is_retryable());
                span.set_status(Status::error(err.to_string()));
            }
        }
    }
}
