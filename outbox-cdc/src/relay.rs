//! The log-tailing relay: committed transactions from a [`ChangeStream`], in commit order,
//! published through core's [`PublishEngine`] (the engine every relay of the toolkit
//! shares), and the stream's position confirmed only past transactions whose every event
//! the broker acknowledged or that were dead-lettered.
//!
//! - **Checkpoint = the stream's position.** [`ChangeStream::confirm`] is called with a
//!   transaction's end position once all its events are settled; on PostgreSQL that is the
//!   slot's confirmed flush LSN. A crash replays from the last confirmed position: the
//!   replayed events carry the same event ids, which the brokers' dedupe ids absorb.
//! - **Order.** Transactions are taken in commit order and one at a time, so events keep
//!   commit order across keys and within each key.
//! - **Failures.** A retryable failure is retried with the [`RetryPolicy`]'s back-off; the
//!   engine holds back the later events of that key, and the position does not move past
//!   the transaction until it is settled. (Transactions behind it wait too: this relay does
//!   not yet publish past a blocked key.) A permanent failure, an exhausted retry or an
//!   event that cannot be decoded goes to the [`DeadLetters`] before the position moves.

use std::future::Future;
use std::time::Duration;

use outbox_core::engine::{Candidate, Fate, PublishEngine};
use outbox_core::{
    Envelope, Error, EventId, NoMetrics, Publisher, RelayMetrics, Result, RetryPolicy,
};
use tokio::time::{Instant, sleep};
use tracing::warn;

/// A committed transaction, as the log delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedTx {
    /// The position just past the transaction's commit: what [`ChangeStream::confirm`]
    /// takes once the transaction is settled.
    pub end: u64,
    /// Its events, in the order they were written.
    pub events: Vec<LogEvent>,
}

/// One event of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEvent {
    /// A decoded envelope.
    Event(Box<Envelope>),
    /// Something the source could not decode into an envelope: dead-lettered as is.
    Undecodable {
        /// Where it stands in the log.
        position: u64,
        /// Why it could not be decoded.
        error: String,
    },
}

/// Where a relay reads committed transactions from.
pub trait ChangeStream: Send {
    /// The next committed transaction, waiting for one; `None` when the stream ended (a
    /// bounded replay, or the source shut down).
    fn next(&mut self) -> impl Future<Output = Result<Option<CommittedTx>>> + Send;

    /// Everything up to `position` is settled (published or dead-lettered): the source may
    /// forget it, and a restart resumes after it.
    fn confirm(&mut self, position: u64) -> impl Future<Output = Result<()>> + Send;
}

/// An event the relay gave up on.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadEvent {
    /// The event, when it was decoded.
    pub envelope: Option<Envelope>,
    /// Where it stands in the log: its own position if it could not be decoded, else its
    /// transaction's end.
    pub position: u64,
    /// Failed attempts.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

impl DeadEvent {
    /// The event's id, when it was decoded.
    pub fn id(&self) -> Option<EventId> {
        self.envelope.as_ref().map(Envelope::id)
    }
}

/// Where dead events go before the position moves past them.
pub trait DeadLetters: Send + Sync {
    /// Keeps `dead` durably; an error stops the relay before it confirms the position.
    fn record(&self, dead: &[DeadEvent]) -> impl Future<Output = Result<()>> + Send;
}

/// Log-tailing relay settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CdcRelayConfig {
    /// Longest wait for one publish call (default 10 s).
    pub publish_timeout: Duration,
    /// Back-off of retryable failures, and the attempts after which an event is dead.
    pub retry: RetryPolicy,
}

impl Default for CdcRelayConfig {
    fn default() -> Self {
        CdcRelayConfig {
            publish_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

/// What a relay did until it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CdcReport {
    /// Transactions settled and confirmed.
    pub transactions: usize,
    /// Events the broker acknowledged.
    pub published: usize,
    /// Failed attempts that were retried.
    pub retried: usize,
    /// Events dead-lettered.
    pub dead: usize,
}

/// Moves committed transactions from a [`ChangeStream`] to a [`Publisher`].
pub struct CdcRelay<S, P, D> {
    stream: S,
    publisher: P,
    dead: D,
    config: CdcRelayConfig,
    metrics: Box<dyn RelayMetrics>,
}

impl<S: ChangeStream, P: Publisher, D: DeadLetters> CdcRelay<S, P, D> {
    /// A relay; the settings are checked (the error names the field).
    pub fn new(stream: S, publisher: P, dead: D, config: CdcRelayConfig) -> Result<Self> {
        config.retry.validate()?;
        if config.publish_timeout.is_zero() {
            return Err(Error::new(
                outbox_core::ErrorKind::InvalidInput,
                "CDC relay setting `publish_timeout` must be above zero",
            ));
        }
        Ok(CdcRelay {
            stream,
            publisher,
            dead,
            config,
            metrics: Box::new(NoMetrics),
        })
    }

    /// Reports to `metrics` (the same names the other relays use).
    pub fn with_metrics(mut self, metrics: impl RelayMetrics + 'static) -> Self {
        self.metrics = Box::new(metrics);
        self
    }

    /// Relays until the stream ends or `shutdown` completes; a transaction being published
    /// when `shutdown` completes is left unconfirmed (it is read again after a restart).
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<CdcReport> {
        let mut report = CdcReport::default();
        tokio::pin!(shutdown);
        loop {
            let tx = tokio::select! {
                _ = &mut shutdown => return Ok(report),
                tx = self.stream.next() => tx?,
            };
            let Some(tx) = tx else { return Ok(report) };
            tokio::select! {
                _ = &mut shutdown => return Ok(report),
                settled = self.settle(&tx, &mut report) => settled?,
            }
            self.stream.confirm(tx.end).await?;
            report.transactions += 1;
        }
    }

    /// Publishes a transaction until every event is published or dead, and records the
    /// dead ones.
    async fn settle(&self, tx: &CommittedTx, report: &mut CdcReport) -> Result<()> {
        let mut dead = Vec::new();
        let mut pending: Vec<Candidate> = Vec::new();
        for event in &tx.events {
            match event {
                LogEvent::Event(envelope) => pending.push(Candidate {
                    envelope: Envelope::clone(envelope),
                    attempts: 0,
                }),
                LogEvent::Undecodable { position, error } => dead.push(DeadEvent {
                    envelope: None,
                    position: *position,
                    attempts: 0,
                    error: error.clone(),
                }),
            }
        }
        let engine = PublishEngine::new(
            &self.publisher,
            self.config.publish_timeout,
            &self.config.retry,
            self.metrics.as_ref(),
        );
        while !pending.is_empty() {
            // The deadline bounds one round; released events simply go round again.
            let deadline = Instant::now() + self.config.publish_timeout * 4;
            let fates = engine.publish(&pending, deadline, None).await;
            let mut wait: Option<Duration> = None;
            let mut next = Vec::new();
            for (candidate, fate) in pending.into_iter().zip(fates) {
                match fate {
                    Fate::Published { .. } => report.published += 1,
                    Fate::Dead { attempt, error } => dead.push(DeadEvent {
                        envelope: Some(candidate.envelope),
                        position: tx.end,
                        attempts: attempt,
                        error,
                    }),
                    Fate::Retry { attempt, delay, .. } => {
                        report.retried += 1;
                        wait = Some(wait.map_or(delay, |w| w.min(delay)));
                        next.push(Candidate {
                            envelope: candidate.envelope,
                            attempts: attempt,
                        });
                    }
                    // Not attempted (a key's earlier event failed): same attempts.
                    _ => next.push(candidate),
                }
            }
            pending = next;
            if let Some(delay) = wait {
                warn!(
                    events = pending.len(),
                    ?delay,
                    "publish failed; the transaction's position waits for the retry"
                );
                sleep(delay).await;
            }
        }
        if !dead.is_empty() {
            report.dead += dead.len();
            self.dead.record(&dead).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use outbox_core::testkit::order_event;
    use outbox_core::{ErrorKind, InMemoryPublisher};

    use super::*;

    /// Transactions handed out in order; confirmed positions recorded.
    #[derive(Default)]
    struct Log {
        txs: VecDeque<CommittedTx>,
        confirmed: Arc<Mutex<Vec<u64>>>,
    }

    impl ChangeStream for Log {
        async fn next(&mut self) -> Result<Option<CommittedTx>> {
            Ok(self.txs.pop_front())
        }
        async fn confirm(&mut self, position: u64) -> Result<()> {
            self.confirmed.lock().expect("lock").push(position);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Dead(Arc<Mutex<Vec<DeadEvent>>>);

    impl DeadLetters for Dead {
        async fn record(&self, dead: &[DeadEvent]) -> Result<()> {
            self.0.lock().expect("lock").extend_from_slice(dead);
            Ok(())
        }
    }

    fn tx(end: u64, keys: &[&str]) -> (CommittedTx, Vec<Envelope>) {
        let events: Vec<Envelope> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| order_event("orders", k, n))
            .collect();
        let tx = CommittedTx {
            end,
            events: events
                .iter()
                .map(|e| LogEvent::Event(Box::new(e.clone())))
                .collect(),
        };
        (tx, events)
    }

    fn config() -> CdcRelayConfig {
        CdcRelayConfig {
            publish_timeout: Duration::from_secs(1),
            retry: RetryPolicy::backoff(Duration::from_millis(5), Duration::from_millis(20), 3),
        }
    }

    /// Runs a relay over `txs` until the stream ends (or `stop`); the report and the
    /// positions confirmed.
    async fn relay(
        txs: Vec<CommittedTx>,
        publisher: &InMemoryPublisher,
        dead: &Dead,
        cfg: CdcRelayConfig,
        stop: impl Future<Output = ()> + Send,
    ) -> (CdcReport, Vec<u64>) {
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let log = Log {
            txs: txs.into(),
            confirmed: Arc::clone(&confirmed),
        };
        let report = CdcRelay::new(log, publisher.clone(), dead.clone(), cfg)
            .expect("relay")
            .run_until(stop)
            .await
            .expect("run");
        let confirmed = confirmed.lock().expect("lock").clone();
        (report, confirmed)
    }

    #[tokio::test]
    async fn transactions_publish_in_commit_order_and_confirm_one_by_one() {
        let (a, a_events) = tx(10, &["k1", "k2"]);
        let (b, b_events) = tx(20, &["k1"]);
        let publisher = InMemoryPublisher::new();
        let dead = Dead::default();
        let (report, confirmed) = relay(
            vec![a, b],
            &publisher,
            &dead,
            config(),
            std::future::pending(),
        )
        .await;
        assert_eq!(report.transactions, 2);
        assert_eq!(report.published, 3);
        let want: Vec<EventId> = a_events.iter().chain(&b_events).map(Envelope::id).collect();
        assert_eq!(publisher.delivered_ids(), want);
        assert_eq!(confirmed, vec![10, 20]);
    }

    #[tokio::test]
    async fn a_retryable_failure_holds_its_key_and_the_position_until_it_succeeds() {
        let (a, events) = tx(10, &["k1", "k1", "k2"]);
        let publisher = InMemoryPublisher::new();
        publisher.fail_event(events[0].id(), 2, ErrorKind::Unavailable);
        let (report, confirmed) = relay(
            vec![a],
            &publisher,
            &Dead::default(),
            config(),
            std::future::pending(),
        )
        .await;
        assert_eq!(report.published, 3);
        assert_eq!(report.retried, 2);
        let delivered = publisher.delivered_ids();
        let at = |id: EventId| delivered.iter().position(|d| *d == id).expect("delivered");
        assert!(
            at(events[0].id()) < at(events[1].id()),
            "k1 keeps its order"
        );
        assert_eq!(confirmed, vec![10]);
    }

    #[tokio::test]
    async fn permanent_failures_and_undecodable_events_are_dead_before_the_position_moves() {
        let (mut a, events) = tx(10, &["k1", "k2"]);
        a.events.push(LogEvent::Undecodable {
            position: 9,
            error: "not an envelope".into(),
        });
        let publisher = InMemoryPublisher::new();
        publisher.fail_event(events[0].id(), 1, ErrorKind::Rejected);
        let dead = Dead::default();
        let (report, confirmed) =
            relay(vec![a], &publisher, &dead, config(), std::future::pending()).await;
        assert_eq!((report.published, report.dead), (1, 2));
        let recorded = dead.0.lock().expect("lock").clone();
        assert_eq!(recorded.len(), 2);
        assert!(recorded.iter().any(|d| d.id() == Some(events[0].id())));
        assert!(
            recorded
                .iter()
                .any(|d| d.id().is_none() && d.error == "not an envelope")
        );
        assert_eq!(confirmed, vec![10]);
    }

    #[tokio::test]
    async fn a_shutdown_mid_transaction_leaves_it_unconfirmed() {
        let (a, events) = tx(10, &["k1"]);
        let publisher = InMemoryPublisher::new();
        publisher.fail_event(events[0].id(), 1000, ErrorKind::Unavailable);
        let mut cfg = config();
        cfg.retry.max_attempts = 1000;
        let stop = sleep(Duration::from_millis(100));
        let (report, confirmed) = relay(vec![a], &publisher, &Dead::default(), cfg, stop).await;
        assert_eq!(report.transactions, 0);
        assert!(confirmed.is_empty());
    }

    #[test]
    fn settings_are_checked() {
        let err = CdcRelay::new(
            Log::default(),
            InMemoryPublisher::new(),
            Dead::default(),
            CdcRelayConfig {
                publish_timeout: Duration::ZERO,
                ..CdcRelayConfig::default()
            },
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("`publish_timeout`"), "{err}");
    }
}
