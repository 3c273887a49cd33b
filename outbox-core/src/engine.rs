//! The publish engine: the one place that turns a set of events into publish calls and
//! sorts what the broker said into published, retry, dead and released.
//!
//! Every relay of this crate hands its events to [`PublishEngine::publish`]: the outbox
//! relay ([`Relay`](crate::Relay)) with the rows it claimed, the event-table relay
//! ([`LogRelay`](crate::LogRelay)) with the rows it read, and any other source (a
//! log-tailing one) in the same way. What a source does with each [`Fate`] is its own
//! business (mark rows, move a checkpoint); how events are published is decided here, once:
//!
//! - **Calls.** A publisher that keeps one link's order ([`Publisher::ordered_runs`]) gets
//!   all events in one call, several events of a key included. Any other publisher gets
//!   waves: wave `n` holds the `n`-th event of every ordering key, so one call never holds
//!   two events of one key.
//! - **Per key.** Once an event fails with a retryable error, the later events of its key
//!   are not published: they come back [`Fate::Released`], so the key keeps its order and
//!   blocks only itself. With ordered runs they were already sent; one the broker refused is
//!   released, one it stored anyway is [`Fate::Published`] with `out_of_order` set (it is
//!   ahead of the retry; logged and counted).
//! - **Time.** Each call is bounded by the publish timeout and by the deadline (the lease);
//!   a call that times out fails every event it held with [`ErrorKind::Timeout`]
//!   (retryable). Past the deadline, or once `stop` turns true, nothing more is sent and
//!   the rest is released.
//! - **Outcomes.** A publisher must return one outcome per event. Events it reports nothing
//!   for fail with [`ErrorKind::Unavailable`] (retryable: a publisher bug must not drop
//!   events for good); extra outcomes are ignored. Both are logged as errors.
//! - **Retry or dead.** A failure is retried while it is retryable and the
//!   [`RetryPolicy`] has attempts left, else the event is dead.
//! - **Metrics and tracing.** Each call runs in an `outbox.publish` span and reports
//!   [`RelayMetrics::published`]; retries, dead events and out-of-order events are counted
//!   once per [`PublishEngine::publish`]. With the `opentelemetry` feature each event also
//!   gets a `send` span, child of its stored trace context, whose context the message
//!   carries (see [`otel`](crate::otel)).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, error, warn};

use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind};
use crate::metrics::RelayMetrics;
use crate::publisher::{PublishOutcome, Publisher};
use crate::retry::RetryPolicy;

#[cfg(feature = "opentelemetry")]
use crate::otel::SendSpans;

/// Without the `opentelemetry` feature, the `send` spans are nothing.
#[cfg(not(feature = "opentelemetry"))]
struct SendSpans;

#[cfg(not(feature = "opentelemetry"))]
impl SendSpans {
    fn open<P: Publisher + ?Sized>(_: &P, _: &mut [Envelope]) -> Self {
        SendSpans
    }
    fn outcome(&self, _: usize, _: &PublishOutcome) {}
}

/// An event to publish, with the failed attempts it already had.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The event.
    pub envelope: Envelope,
    /// Failed publish attempts before this one.
    pub attempts: u32,
}

/// What became of one [`Candidate`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fate {
    /// The broker acknowledged it.
    Published {
        /// It was acknowledged after an earlier event of its key in the same call failed
        /// (ordered runs only): published, but ahead of that event's retry.
        out_of_order: bool,
    },
    /// It failed and may be tried again after `delay`.
    Retry {
        /// Failed attempts, this one included.
        attempt: u32,
        /// The back-off before the next attempt.
        delay: Duration,
        /// The failure, with its causes.
        error: String,
    },
    /// It failed for good (permanent error, or attempts exhausted).
    Dead {
        /// Failed attempts, this one included.
        attempt: u32,
        /// The failure, with its causes.
        error: String,
    },
    /// Not published and not counted as an attempt: an earlier event of its key failed,
    /// the deadline passed, or the engine was stopped.
    Released,
}

/// Totals of a slice of fates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FateCounts {
    /// [`Fate::Published`], out of order or not.
    pub published: usize,
    /// [`Fate::Published`] with `out_of_order`.
    pub out_of_order: usize,
    /// [`Fate::Retry`].
    pub retried: usize,
    /// [`Fate::Dead`].
    pub dead: usize,
    /// [`Fate::Released`].
    pub released: usize,
}

impl FateCounts {
    /// Counts `fates`.
    pub fn of(fates: &[Fate]) -> Self {
        let mut c = FateCounts::default();
        for f in fates {
            match f {
                Fate::Published { out_of_order } => {
                    c.published += 1;
                    c.out_of_order += usize::from(*out_of_order);
                }
                Fate::Retry { .. } => c.retried += 1,
                Fate::Dead { .. } => c.dead += 1,
                Fate::Released => c.released += 1,
            }
        }
        c
    }
}

/// Publishes events for a relay; see the module docs.
pub struct PublishEngine<'a, P: ?Sized> {
    publisher: &'a P,
    publish_timeout: Duration,
    retry: &'a RetryPolicy,
    metrics: &'a dyn RelayMetrics,
}

impl<'a, P: Publisher + ?Sized> PublishEngine<'a, P> {
    /// An engine over `publisher`: each call waits at most `publish_timeout`; failures are
    /// retried or dead by `retry`; calls are reported to `metrics`.
    pub fn new(
        publisher: &'a P,
        publish_timeout: Duration,
        retry: &'a RetryPolicy,
        metrics: &'a dyn RelayMetrics,
    ) -> Self {
        PublishEngine {
            publisher,
            publish_timeout,
            retry,
            metrics,
        }
    }

    /// Publishes `events` (in the order they must keep per ordering key) until `deadline`
    /// or until `stop` turns true, and returns one fate per event, in the same order.
    pub async fn publish(
        &self,
        events: &[Candidate],
        deadline: Instant,
        mut stop: Option<watch::Receiver<bool>>,
    ) -> Vec<Fate> {
        let mut fates: Vec<Fate> = vec![Fate::Released; events.len()];
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for call in calls(events, self.publisher.ordered_runs()) {
            // Later events of a key whose earlier event failed wait for it.
            let call: Vec<usize> = call
                .into_iter()
                .filter(|&i| !failed_keys.contains(events[i].envelope.ordering_key()))
                .collect();
            if call.is_empty() {
                continue;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let stopping = stop.as_ref().is_some_and(|s| *s.borrow());
            if stopping || remaining < Duration::from_millis(1) {
                // Stopped, or the lease ran out: what was not sent stays released.
                break;
            }
            let mut envelopes: Vec<Envelope> =
                call.iter().map(|&i| events[i].envelope.clone()).collect();
            let spans = SendSpans::open(self.publisher, &mut envelopes);
            let limit = self.publish_timeout.min(remaining);
            let span = tracing::debug_span!("outbox.publish", events = envelopes.len());
            let started = Instant::now();
            let sent = async {
                match stop.as_mut() {
                    Some(stop) => tokio::select! {
                        r = timeout(limit, self.publisher.publish(&envelopes)) => Some(r),
                        _ = stop.wait_for(|s| *s) => None,
                    },
                    None => Some(timeout(limit, self.publisher.publish(&envelopes)).await),
                }
            }
            .instrument(span)
            .await;
            let outcomes = match sent {
                // Stopped mid-call: this call's events and the rest stay released.
                None => break,
                Some(Err(_)) => {
                    let e = format!("publish did not finish within {limit:?}");
                    envelopes
                        .iter()
                        .map(|_| PublishOutcome::Failed(Error::new(ErrorKind::Timeout, &e)))
                        .collect()
                }
                Some(Ok(o)) => o,
            };
            let latency = started.elapsed();
            if outcomes.len() != envelopes.len() {
                error!(
                    outcomes = outcomes.len(),
                    events = envelopes.len(),
                    "publisher returned the wrong number of outcomes; unreported events are retried"
                );
            }
            let mut outcomes = outcomes.into_iter();
            let mut ok = 0usize;
            for (n, &i) in call.iter().enumerate() {
                let ev = &events[i];
                let env = &ev.envelope;
                let outcome = outcomes.next().unwrap_or_else(|| {
                    PublishOutcome::Failed(Error::new(
                        ErrorKind::Unavailable,
                        "publisher reported no outcome for this event",
                    ))
                });
                spans.outcome(n, &outcome);
                if failed_keys.contains(env.ordering_key()) {
                    // An earlier event of this key in this call failed (ordered runs).
                    if outcome.is_published() {
                        ok += 1;
                        warn!(event_id = %env.id(), key = env.ordering_key(), "the broker acknowledged this event after refusing an earlier one of its key; it is ahead of that event's retry");
                        fates[i] = Fate::Published { out_of_order: true };
                    }
                    continue;
                }
                fates[i] = match outcome {
                    PublishOutcome::Published => {
                        ok += 1;
                        Fate::Published {
                            out_of_order: false,
                        }
                    }
                    PublishOutcome::Failed(err) => {
                        let attempt = ev.attempts.saturating_add(1);
                        if err.is_retryable() && !self.retry.exhausted(attempt) {
                            failed_keys.insert(env.ordering_key());
                            let delay = self.retry.delay(attempt);
                            debug!(event_id = %env.id(), attempt, ?delay, error = %err, "publish failed; will retry");
                            Fate::Retry {
                                attempt,
                                delay,
                                error: err.to_report(),
                            }
                        } else {
                            warn!(event_id = %env.id(), attempt, error = %err, "publish failed for good; dead-lettering");
                            Fate::Dead {
                                attempt,
                                error: err.to_report(),
                            }
                        }
                    }
                };
            }
            self.metrics.published(ok, latency);
        }
        let counts = FateCounts::of(&fates);
        if counts.out_of_order > 0 {
            self.metrics.out_of_order(counts.out_of_order);
        }
        if counts.retried > 0 {
            self.metrics.retried(counts.retried);
        }
        if counts.dead > 0 {
            self.metrics.dead_lettered(counts.dead);
        }
        fates
    }
}

/// Splits events into publish calls (indexes into `events`): all in one call when the
/// publisher keeps runs in order, else waves, where wave `n` holds the `n`-th event of each
/// ordering key.
fn calls(events: &[Candidate], ordered_runs: bool) -> Vec<Vec<usize>> {
    if ordered_runs {
        return vec![(0..events.len()).collect()];
    }
    let mut depth: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let d = depth.entry(ev.envelope.ordering_key()).or_insert(0);
        if out.len() <= *d {
            out.push(Vec::new());
        }
        out[*d].push(i);
        *d += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::InMemoryPublisher;
    use crate::metrics::CountingMetrics;

    fn candidates(keys: &[&str]) -> Vec<Candidate> {
        keys.iter()
            .map(|k| Candidate {
                envelope: Envelope::builder("order", *k, "order.placed", "orders")
                    .build()
                    .expect("valid envelope"),
                attempts: 0,
            })
            .collect()
    }

    #[test]
    fn waves_hold_one_event_per_key() {
        let evs = candidates(&["a", "a", "b", "a", "b"]);
        assert_eq!(calls(&evs, false), vec![vec![0, 2], vec![1, 4], vec![3]]);
        assert_eq!(calls(&evs, true), vec![vec![0, 1, 2, 3, 4]]);
    }

    /// A publisher that reports fewer outcomes than it was given.
    struct Short;
    impl Publisher for Short {
        async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
            events
                .iter()
                .skip(1)
                .map(|_| PublishOutcome::Published)
                .collect()
        }
    }

    /// One publish of `evs` with the default retry policy, a 1 s call timeout and a 5 s
    /// deadline.
    async fn publish_once<P: Publisher>(
        publisher: &P,
        evs: &[Candidate],
        metrics: &CountingMetrics,
    ) -> Vec<Fate> {
        let retry = RetryPolicy::default();
        PublishEngine::new(publisher, Duration::from_secs(1), &retry, metrics)
            .publish(evs, Instant::now() + Duration::from_secs(5), None)
            .await
    }

    #[tokio::test]
    async fn a_missing_outcome_is_retried_not_dead() {
        let evs = candidates(&["a", "b"]);
        let metrics = CountingMetrics::default();
        let fates = publish_once(&Short, &evs, &metrics).await;
        assert!(matches!(fates[0], Fate::Published { .. }), "{fates:?}");
        assert!(
            matches!(&fates[1], Fate::Retry { attempt: 1, error, .. } if error.contains("no outcome")),
            "{fates:?}"
        );
        assert_eq!(metrics.snapshot().retried, 1);
    }

    #[tokio::test]
    async fn a_failed_key_releases_its_later_events_only() {
        let evs = candidates(&["a", "a", "b"]);
        let publisher = InMemoryPublisher::new();
        publisher.fail_event(evs[0].envelope.id(), 1, ErrorKind::Unavailable);
        let metrics = CountingMetrics::default();
        let fates = publish_once(&publisher, &evs, &metrics).await;
        assert!(matches!(fates[0], Fate::Retry { .. }), "{fates:?}");
        assert_eq!(fates[1], Fate::Released);
        assert_eq!(
            fates[2],
            Fate::Published {
                out_of_order: false
            }
        );
        let c = FateCounts::of(&fates);
        assert_eq!((c.published, c.retried, c.released), (1, 1, 1));
    }

    #[tokio::test]
    async fn past_the_deadline_nothing_is_sent() {
        let evs = candidates(&["a"]);
        let publisher = InMemoryPublisher::new();
        let retry = RetryPolicy::default();
        let engine = PublishEngine::new(
            &publisher,
            Duration::from_secs(1),
            &retry,
            &crate::NoMetrics,
        );
        let fates = engine.publish(&evs, Instant::now(), None).await;
        assert_eq!(fates, vec![Fate::Released]);
        assert!(publisher.delivered_ids().is_empty());
    }
}
