//! The publisher: sends envelopes to a broker and reports one outcome per event.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::Error;

/// What happened to one event of a published batch.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishOutcome {
    /// The broker acknowledged the event (durably, as far as the broker promises).
    Published,
    /// The broker did not take the event. [`Error::is_retryable`] decides whether the relay
    /// retries it later or moves it to the dead letters.
    Failed(Error),
}

impl PublishOutcome {
    /// Whether the event was published.
    pub fn is_published(&self) -> bool {
        matches!(self, PublishOutcome::Published)
    }
}

/// Sends events to a broker.
///
/// `publish` receives a batch and returns exactly one outcome per event, in the same order.
/// It should pipeline (many sends in flight, then await the acknowledgements) rather than
/// wait for each event. A failure of the whole batch (connection lost) is reported as a
/// failure of every event.
///
/// # Runs of one key in one call
///
/// By default the relay never hands one call two events of the same ordering key, so an
/// implementation need not order events within a call; a key's run then costs one call,
/// and one broker round trip, per event. A publisher whose broker keeps the order of one
/// link returns `true` from [`ordered_runs`](Publisher::ordered_runs), and the relay hands
/// it a whole batch, runs included, in one call.
///
/// Implementations pass [`Envelope::id`] on as the broker's deduplication id where the broker
/// has one, so that the duplicates at-least-once delivery allows can be dropped.
pub trait Publisher: Send + Sync {
    /// Publishes `events`; returns one outcome per event, in order.
    fn publish(&self, events: &[Envelope]) -> impl Future<Output = Vec<PublishOutcome>> + Send;

    /// Whether one call may carry several events of one ordering key (default `false`).
    ///
    /// Return `true` only if the events of one ordering key in a call reach the broker, and
    /// are stored, in slice order: they travel one ordered link (an AMQP channel, a Kafka
    /// partition's idempotent producer) whose broker stores a later message only after the
    /// earlier ones, or refuses it too, even when the link breaks (a client that resends its
    /// buffer on a new connection after losing what the old one carried does not qualify).
    /// The relay then publishes a key's run with one round trip instead of one per event.
    ///
    /// If an event of a call fails, the relay releases the later events of its key in that
    /// call that failed too, untouched (they go out after its retry). A later event of the
    /// key that the broker acknowledged anyway is already ahead of the retry: the relay keeps
    /// it as published, logs a warning and counts it as out of order
    /// ([`BatchReport::out_of_order`](crate::BatchReport::out_of_order)). Each implementation
    /// documents when its broker can do that.
    fn ordered_runs(&self) -> bool {
        false
    }

    /// The broker's name in OpenTelemetry's `messaging.system` attribute of the relay's
    /// `send` span for `event` (`kafka`, `rabbitmq`, `nats`, `aws_sqs`, ...; default
    /// `other`).
    fn messaging_system(&self, event: &Envelope) -> &'static str {
        let _ = event;
        "other"
    }
}

/// The object-safe twin of [`Publisher`], for choosing a publisher at run time
/// (`Arc<dyn DynPublisher>` is itself a [`Publisher`]).
pub trait DynPublisher: Send + Sync {
    /// See [`Publisher::publish`].
    fn publish_dyn<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Vec<PublishOutcome>>;
    /// See [`Publisher::ordered_runs`].
    fn ordered_runs_dyn(&self) -> bool;
    /// See [`Publisher::messaging_system`].
    fn messaging_system_dyn(&self, event: &Envelope) -> &'static str;
}

impl<P: Publisher> DynPublisher for P {
    fn publish_dyn<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Vec<PublishOutcome>> {
        Box::pin(self.publish(events))
    }
    fn ordered_runs_dyn(&self) -> bool {
        self.ordered_runs()
    }
    fn messaging_system_dyn(&self, event: &Envelope) -> &'static str {
        self.messaging_system(event)
    }
}

impl Publisher for Arc<dyn DynPublisher> {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        (**self).publish_dyn(events).await
    }
    fn ordered_runs(&self) -> bool {
        (**self).ordered_runs_dyn()
    }
    fn messaging_system(&self, event: &Envelope) -> &'static str {
        (**self).messaging_system_dyn(event)
    }
}

/// A shared publisher is a publisher.
impl<P: Publisher> Publisher for Arc<P> {
    fn publish(&self, events: &[Envelope]) -> impl Future<Output = Vec<PublishOutcome>> + Send {
        (**self).publish(events)
    }
    fn ordered_runs(&self) -> bool {
        (**self).ordered_runs()
    }
    fn messaging_system(&self, event: &Envelope) -> &'static str {
        (**self).messaging_system(event)
    }
}
