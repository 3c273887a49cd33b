//! The publisher: sends envelopes to a broker and reports one outcome per event.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::envelope::Envelope;
use crate::error::Error;

/// What happened to one event of a published batch.
#[derive(Debug)]
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
/// failure of every event. The relay never hands one call two events of the same ordering
/// key, so an implementation need not order events within a call.
///
/// Implementations pass [`Envelope::id`] on as the broker's deduplication id where the broker
/// has one, so that the duplicates at-least-once delivery allows can be dropped.
pub trait Publisher: Send + Sync {
    /// Publishes `events`; returns one outcome per event, in order.
    fn publish(&self, events: &[Envelope]) -> impl Future<Output = Vec<PublishOutcome>> + Send;
}

/// The object-safe twin of [`Publisher`], for choosing a publisher at run time
/// (`Arc<dyn DynPublisher>` is itself a [`Publisher`]).
pub trait DynPublisher: Send + Sync {
    /// See [`Publisher::publish`].
    fn publish_dyn<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Vec<PublishOutcome>>;
}

impl<P: Publisher> DynPublisher for P {
    fn publish_dyn<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Vec<PublishOutcome>> {
        Box::pin(self.publish(events))
    }
}

impl Publisher for Arc<dyn DynPublisher> {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        (**self).publish_dyn(events).await
    }
}

/// A shared publisher is a publisher.
impl<P: Publisher> Publisher for Arc<P> {
    fn publish(&self, events: &[Envelope]) -> impl Future<Output = Vec<PublishOutcome>> + Send {
        (**self).publish(events)
    }
}
