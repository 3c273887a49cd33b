//! The log-tailing relay: committed transactions from a [`ChangeStream`], in commit order,
//! published through core's [`PublishEngine`] (the engine every relay of the toolkit
//! shares), and the stream's position confirmed only past transactions whose every event
//! the broker acknowledged or that were dead-lettered.
//!
//! - **Checkpoint = the stream's position.** [`ChangeStream::confirm`] is called with a
//!   transaction's end position once it and every transaction before it are settled; on
//!   PostgreSQL that is the slot's confirmed flush LSN. A crash replays from the last
//!   confirmed position: the replayed events carry the same event ids, which the brokers'
//!   dedupe ids absorb.
//! - **Order.** Events are offered to the engine in commit order, so each ordering key
//!   keeps commit order.
//! - **A window, not a queue.** Up to [`CdcRelayConfig::max_in_flight`] events are read
//!   ahead. A retryable failure holds back the later events of its key (and the position,
//!   which cannot pass its transaction) until its back-off ends; the other keys' events,
//!   later transactions' included, keep being published meanwhile.
//! - **Pieces.** A source may hand a long transaction out in pieces ([`CommittedTx::end`]
//!   is `None` on all but the last), so memory is bounded by the window, not by the
//!   largest transaction.
//! - **Ledger.** Before the position moves, the [`Ledger`] learns which events were
//!   published (table mode marks their rows, in bulk) and keeps the dead ones durably
//!   (permanent failures, exhausted retries, events that cannot be decoded).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::engine::{Candidate, Fate, PublishEngine};
use outbox_core::{
    Envelope, Error, EventId, NoMetrics, Publisher, RelayMetrics, Result, RetryPolicy,
};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, warn};

/// A committed transaction as the log delivers it, or a piece of one.
#[derive(Clone, Debug, PartialEq)]
pub struct CommittedTx {
    /// The position just past the transaction's commit, on its last piece (what
    /// [`ChangeStream::confirm`] takes once the transaction is settled); `None` on the
    /// pieces before.
    pub end: Option<u64>,
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
        /// The row's event id, when the source could read that much of it (table mode).
        id: Option<EventId>,
        /// Where it stands in the log.
        position: u64,
        /// What the log held (a message's bytes; empty when the source keeps nothing).
        raw: Vec<u8>,
        /// Why it could not be decoded.
        error: String,
    },
}

/// Where a relay reads committed transactions from.
pub trait ChangeStream: Send {
    /// The next committed transaction (or piece of one), waiting for one; `None` when the
    /// stream ended (a bounded replay, or the source shut down). Must be cancel-safe: the
    /// relay drops a pending call when it has other work, and calls again later.
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
    /// The row's event id when the event could not be decoded but its id could.
    pub row_id: Option<EventId>,
    /// What the log held when it could not be decoded.
    pub raw: Vec<u8>,
    /// Where it stands in the log: its own position if it could not be decoded, else its
    /// transaction's end (`0` for a piece before the last).
    pub position: u64,
    /// Failed attempts.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

impl DeadEvent {
    /// The event's id, when it was decoded or its row's id could be read.
    pub fn id(&self) -> Option<EventId> {
        self.envelope.as_ref().map(Envelope::id).or(self.row_id)
    }
}

/// What the relay writes down before it confirms a position.
pub trait Ledger: Send + Sync {
    /// `ids` were acknowledged by the broker (table mode marks their rows published).
    /// An error stops the relay before it confirms; the events are published again after a
    /// restart.
    fn published(&self, ids: &[EventId]) -> impl Future<Output = Result<()>> + Send;

    /// Keeps `dead` durably; an error stops the relay before it confirms the position.
    fn dead(&self, dead: &[DeadEvent]) -> impl Future<Output = Result<()>> + Send;
}

/// Log-tailing relay settings (`[cdc.<name>.relay]` in the `outbox` binary's config).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdcRelayConfig {
    /// Longest wait for one publish call (default 10 s).
    #[serde(with = "outbox_core::duration_serde")]
    pub publish_timeout: Duration,
    /// Back-off of retryable failures, and the attempts after which an event is dead.
    pub retry: RetryPolicy,
    /// Most events read ahead and not settled yet (default 10 000): the memory bound, and
    /// how far other keys get ahead of a key that waits for a retry.
    pub max_in_flight: usize,
}

impl Default for CdcRelayConfig {
    fn default() -> Self {
        CdcRelayConfig {
            publish_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_in_flight: 10_000,
        }
    }
}

impl CdcRelayConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.retry.validate()?;
        let invalid = |field: &str| {
            Error::new(
                outbox_core::ErrorKind::InvalidInput,
                format!("CDC relay setting `{field}` must be above zero"),
            )
        };
        if self.publish_timeout.is_zero() {
            return Err(invalid("publish_timeout"));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("max_in_flight"));
        }
        Ok(())
    }
}

/// What a relay did until it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CdcReport {
    /// Transactions with events of this source, settled and confirmed.
    pub transactions: usize,
    /// Events the broker acknowledged.
    pub published: usize,
    /// Failed attempts that were retried.
    pub retried: usize,
    /// Events dead-lettered.
    pub dead: usize,
}

/// A transaction (or piece) in the window.
struct Slot {
    end: Option<u64>,
    /// The last piece of a transaction that had events (what the report counts).
    counts: bool,
    /// Events not settled yet.
    remaining: usize,
    published: Vec<EventId>,
    dead: Vec<DeadEvent>,
}

/// An event in the window, not settled yet.
struct Waiting {
    candidate: Candidate,
    /// The index of its slot, counted from the first slot the relay ever read.
    slot: u64,
    /// Its place in commit order among all events read.
    seq: u64,
    /// Not before this instant (a retry's back-off).
    ready_at: Instant,
}

/// The events read and not settled, and the transactions they belong to.
#[derive(Default)]
struct Window {
    slots: VecDeque<Slot>,
    /// The index of `slots[0]`.
    first: u64,
    waiting: Vec<Waiting>,
    /// The `seq` of the next event read.
    next_seq: u64,
    /// Events in the earlier pieces of the transaction being read.
    open_events: usize,
}

impl Window {
    fn slot(&mut self, index: u64) -> &mut Slot {
        let at = usize::try_from(index - self.first).unwrap_or(usize::MAX);
        &mut self.slots[at]
    }

    fn push(&mut self, tx: CommittedTx) {
        let index = self.first + self.slots.len() as u64;
        let now = Instant::now();
        self.open_events += tx.events.len();
        let counts = tx.end.is_some() && self.open_events > 0;
        if tx.end.is_some() {
            self.open_events = 0;
        }
        let mut slot = Slot {
            end: tx.end,
            counts,
            remaining: 0,
            published: Vec::new(),
            dead: Vec::new(),
        };
        for event in tx.events {
            match event {
                LogEvent::Event(envelope) => {
                    slot.remaining += 1;
                    self.next_seq += 1;
                    self.waiting.push(Waiting {
                        candidate: Candidate {
                            envelope: *envelope,
                            attempts: 0,
                        },
                        slot: index,
                        seq: self.next_seq,
                        ready_at: now,
                    });
                }
                LogEvent::Undecodable {
                    id,
                    position,
                    raw,
                    error,
                } => slot.dead.push(DeadEvent {
                    envelope: None,
                    row_id: id,
                    raw,
                    position,
                    attempts: 0,
                    error,
                }),
            }
        }
        self.slots.push_back(slot);
    }

    /// Takes up to `limit` events that may be published now: ready, and no earlier event
    /// of their key still waiting. The rest stay, in order.
    fn take_ready(&mut self, now: Instant, limit: usize) -> Vec<Waiting> {
        let mut held: HashSet<String> = HashSet::new();
        let mut ready = Vec::new();
        let mut rest = Vec::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            if ready.len() >= limit {
                rest.push(w);
                continue;
            }
            let key = w.candidate.envelope.ordering_key();
            if w.ready_at > now || held.contains(key) {
                held.insert(key.to_owned());
                rest.push(w);
            } else {
                ready.push(w);
            }
        }
        self.waiting = rest;
        ready
    }

    /// Puts back events that are still waiting, keeping commit order.
    fn put_back(&mut self, back: Vec<Waiting>) {
        if back.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.waiting);
        let mut merged = Vec::with_capacity(held.len() + back.len());
        let (mut a, mut b) = (held.into_iter().peekable(), back.into_iter().peekable());
        loop {
            let take_a = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => x.seq < y.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_a { a.next() } else { b.next() };
            merged.extend(next);
        }
        self.waiting = merged;
    }

    /// The earliest back-off end among waiting events.
    fn next_ready(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.ready_at).min()
    }

    /// Removes the settled slots at the front.
    fn settled(&mut self) -> Vec<Slot> {
        let mut out = Vec::new();
        while self.slots.front().is_some_and(|s| s.remaining == 0) {
            out.extend(self.slots.pop_front());
            self.first += 1;
        }
        out
    }
}

/// Moves committed transactions from a [`ChangeStream`] to a [`Publisher`].
pub struct CdcRelay<S, P, L> {
    stream: S,
    publisher: P,
    ledger: L,
    config: CdcRelayConfig,
    metrics: Arc<dyn RelayMetrics>,
}

impl<S: ChangeStream, P: Publisher, L: Ledger> CdcRelay<S, P, L> {
    /// A relay; the settings are checked (the error names the field).
    pub fn new(stream: S, publisher: P, ledger: L, config: CdcRelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(CdcRelay {
            stream,
            publisher,
            ledger,
            config,
            metrics: Arc::new(NoMetrics),
        })
    }

    /// Reports to `metrics` (the same names the other relays use).
    pub fn with_metrics(mut self, metrics: Arc<dyn RelayMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Relays until the stream ends (and everything read is settled) or `shutdown`
    /// completes; transactions not settled when `shutdown` completes are left unconfirmed
    /// (they are read again after a restart).
    ///
    /// Three things overlap: a publish round (up to half the window, in commit order), the
    /// ledger write of the transactions settled before it (then their position is
    /// confirmed), and reading the next transactions. A key with an event in the round
    /// waits for the round's end.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<CdcReport> {
        let CdcRelay {
            mut stream,
            publisher,
            ledger,
            config,
            metrics,
        } = self;
        let engine = PublishEngine::new(
            &publisher,
            config.publish_timeout,
            &config.retry,
            metrics.as_ref(),
        );
        let round_limit = (config.max_in_flight / 2).max(1);
        let mut report = CdcReport::default();
        let mut window = Window::default();
        let mut ended = false;
        let mut round: Option<RoundFuture<'_>> = None;
        let mut in_round = 0usize;
        let mut writing: Option<WriteFuture<'_>> = None;
        tokio::pin!(shutdown);
        loop {
            let room = |window: &Window, in_round: usize, ended: bool| {
                !ended && window.waiting.len() + in_round < config.max_in_flight
            };
            // Read what the stream already holds, up to the window's bound.
            while room(&window, in_round, ended) {
                match timeout(Duration::ZERO, stream.next()).await {
                    Ok(Ok(Some(tx))) => window.push(tx),
                    Ok(Ok(None)) => ended = true,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => break,
                }
            }
            if writing.is_none() {
                writing = write_down(&ledger, window.settled(), &mut report);
            }
            if round.is_none() {
                let ready = window.take_ready(Instant::now(), round_limit);
                if !ready.is_empty() {
                    in_round = ready.len();
                    // The deadline bounds one round; released events simply go round again.
                    let deadline = Instant::now() + config.publish_timeout * 4;
                    round = Some(Box::pin(publish_round(&engine, ready, deadline)));
                }
            }
            if window.slots.is_empty() && ended && round.is_none() && writing.is_none() {
                return Ok(report);
            }
            let reading = room(&window, in_round, ended);
            let wake = window.next_ready().filter(|_| round.is_none());
            let step = tokio::select! {
                _ = &mut shutdown => Step::Stop,
                fates = poll_some(&mut round), if round.is_some() => Step::Published(fates),
                end = poll_some(&mut writing), if writing.is_some() => Step::Written(end),
                tx = stream.next(), if reading => Step::Read(tx),
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => Step::Woke,
            };
            match step {
                Step::Published((ready, fates)) => {
                    round = None;
                    in_round = 0;
                    let back = settle_fates(ready, fates, &mut window, &mut report);
                    window.put_back(back);
                }
                Step::Written(end) => {
                    writing = None;
                    if let Some(end) = end? {
                        debug!(position = end, "confirming the stream's position");
                        stream.confirm(end).await?;
                    }
                }
                Step::Read(tx) => match tx? {
                    Some(tx) => window.push(tx),
                    None => ended = true,
                },
                Step::Woke => {}
                Step::Stop => {
                    // A round in flight is dropped: its events are read again after a
                    // restart. What is settled is written down and confirmed, so a
                    // restart replays no more than it must.
                    drop(round);
                    let mut last = None;
                    let pending = writing.take();
                    let rest = write_down(&ledger, window.settled(), &mut report);
                    for write in [pending, rest].into_iter().flatten() {
                        match timeout(config.publish_timeout, write).await {
                            Ok(end) => last = end?.or(last),
                            Err(_) => {
                                warn!(
                                    limit = ?config.publish_timeout,
                                    "the ledger write did not finish at shutdown; what it held is read again after a restart"
                                );
                                break;
                            }
                        }
                    }
                    if let Some(end) = last {
                        debug!(
                            position = end,
                            "confirming the stream's position on shutdown"
                        );
                        stream.confirm(end).await?;
                    }
                    return Ok(report);
                }
            }
        }
    }
}

/// A publish round in flight: the events it took, and their fates.
type RoundFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = (Vec<Waiting>, Vec<Fate>)> + Send + 'a>>;

/// A ledger write in flight: the position to confirm once it is done.
type WriteFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Option<u64>>> + Send + 'a>>;

/// What woke the relay.
enum Step {
    Published((Vec<Waiting>, Vec<Fate>)),
    Written(Result<Option<u64>>),
    Read(Result<Option<CommittedTx>>),
    Woke,
    Stop,
}

/// Awaits the future in `slot`, which the caller checked is there.
async fn poll_some<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Publishes `ready` (in commit order) through `engine`; hands the events back with their
/// fates.
async fn publish_round<P: Publisher>(
    engine: &PublishEngine<'_, P>,
    ready: Vec<Waiting>,
    deadline: Instant,
) -> (Vec<Waiting>, Vec<Fate>) {
    // The candidates move out for the engine and back in: no copy of the envelopes.
    let (places, candidates): (Vec<_>, Vec<Candidate>) = ready
        .into_iter()
        .map(|w| ((w.slot, w.seq, w.ready_at), w.candidate))
        .unzip();
    let fates = engine.publish(&candidates, deadline, None).await;
    let ready = places
        .into_iter()
        .zip(candidates)
        .map(|((slot, seq, ready_at), candidate)| Waiting {
            candidate,
            slot,
            seq,
            ready_at,
        })
        .collect();
    (ready, fates)
}

/// Settles what a round published or gave up on, and returns the events that wait on.
fn settle_fates(
    ready: Vec<Waiting>,
    fates: Vec<Fate>,
    window: &mut Window,
    report: &mut CdcReport,
) -> Vec<Waiting> {
    let now = Instant::now();
    let mut back = Vec::new();
    let mut retried = 0usize;
    let mut first_error = None;
    let mut fates = fates.into_iter();
    for mut w in ready {
        match fates.next().unwrap_or(Fate::Released) {
            Fate::Published { .. } => {
                report.published += 1;
                let slot = window.slot(w.slot);
                slot.remaining -= 1;
                slot.published.push(w.candidate.envelope.id());
            }
            Fate::Dead { attempt, error } => {
                let slot = window.slot(w.slot);
                slot.remaining -= 1;
                let position = slot.end.unwrap_or(0);
                slot.dead.push(DeadEvent {
                    envelope: Some(w.candidate.envelope),
                    row_id: None,
                    raw: Vec::new(),
                    position,
                    attempts: attempt,
                    error,
                });
            }
            Fate::Retry {
                attempt,
                delay,
                error,
            } => {
                report.retried += 1;
                retried += 1;
                if first_error.is_none() {
                    first_error = Some((w.candidate.envelope.id(), error));
                }
                w.candidate.attempts = attempt;
                w.ready_at = now + delay;
                back.push(w);
            }
            // Not attempted (a key's earlier event failed): same attempts.
            _ => back.push(w),
        }
    }
    if let Some((event_id, error)) = first_error {
        warn!(
            events = retried,
            %event_id,
            %error,
            "publish failed; those keys and the position wait for the retry"
        );
    }
    back
}

/// Starts writing down the settled transactions `settled` (dead letters, then published
/// marks); the future returns the position to confirm after. `None` when nothing settled.
fn write_down<'a, L: Ledger>(
    ledger: &'a L,
    settled: Vec<Slot>,
    report: &mut CdcReport,
) -> Option<WriteFuture<'a>> {
    if settled.is_empty() {
        return None;
    }
    let mut published = Vec::new();
    let mut dead = Vec::new();
    let mut end = None;
    for slot in settled {
        published.extend(slot.published);
        dead.extend(slot.dead);
        if slot.end.is_some() {
            end = slot.end;
        }
        report.transactions += usize::from(slot.counts);
    }
    report.dead += dead.len();
    Some(Box::pin(async move {
        if !dead.is_empty() {
            ledger.dead(&dead).await?;
        }
        if !published.is_empty() {
            ledger.published(&published).await?;
        }
        Ok(end)
    }))
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
        /// The relay's publisher, to record the most events handed out and not delivered.
        probe: Option<(InMemoryPublisher, Arc<Mutex<usize>>)>,
        handed_out: usize,
    }

    impl ChangeStream for Log {
        async fn next(&mut self) -> Result<Option<CommittedTx>> {
            let tx = self.txs.pop_front();
            if let Some(tx) = &tx {
                self.handed_out += tx.events.len();
            }
            if let Some((publisher, most)) = &self.probe {
                let ahead = self.handed_out - publisher.delivered_count();
                let mut most = most.lock().expect("lock");
                *most = (*most).max(ahead);
            }
            Ok(tx)
        }
        async fn confirm(&mut self, position: u64) -> Result<()> {
            self.confirmed.lock().expect("lock").push(position);
            Ok(())
        }
    }

    /// What the relay wrote down.
    #[derive(Clone, Default)]
    struct Dead(Arc<Mutex<Vec<DeadEvent>>>, Arc<Mutex<Vec<EventId>>>);

    impl Ledger for Dead {
        async fn published(&self, ids: &[EventId]) -> Result<()> {
            self.1.lock().expect("lock").extend_from_slice(ids);
            Ok(())
        }
        async fn dead(&self, dead: &[DeadEvent]) -> Result<()> {
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
            end: Some(end),
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
            max_in_flight: 100,
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
            ..Log::default()
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
    async fn transactions_publish_in_commit_order_and_the_position_follows() {
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
        // Both were read at once, settled together, and confirmed once.
        assert_eq!(confirmed, vec![20]);
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
            id: None,
            position: 9,
            raw: b"junk".to_vec(),
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
                .any(|d| d.id().is_none() && d.error == "not an envelope" && d.raw == b"junk")
        );
        assert_eq!(*dead.1.lock().expect("lock"), vec![events[1].id()]);
        assert_eq!(confirmed, vec![10]);
    }

    #[tokio::test]
    async fn a_shutdown_mid_transaction_leaves_it_unconfirmed() {
        let (a, events) = tx(10, &["k1"]);
        let publisher = InMemoryPublisher::new();
        publisher.fail_event(events[0].id(), 1000, ErrorKind::Unavailable);
        let mut cfg = config();
        cfg.retry.max_attempts = 1000;
        let stop = tokio::time::sleep(Duration::from_millis(100));
        let (report, confirmed) = relay(vec![a], &publisher, &Dead::default(), cfg, stop).await;
        assert_eq!(report.transactions, 0);
        assert!(confirmed.is_empty());
    }

    #[tokio::test]
    async fn a_key_waiting_for_a_retry_holds_the_position_but_not_later_transactions() {
        let (a, a_events) = tx(10, &["k1"]);
        let (b, b_events) = tx(20, &["k2"]);
        let (c, c_events) = tx(30, &["k1"]);
        let publisher = InMemoryPublisher::new();
        publisher.fail_event(a_events[0].id(), 2, ErrorKind::Unavailable);
        let mut cfg = config();
        cfg.retry = RetryPolicy::backoff(Duration::from_millis(50), Duration::from_millis(50), 5);
        let dead = Dead::default();
        let (report, confirmed) = relay(
            vec![a, b, c],
            &publisher,
            &dead,
            cfg,
            std::future::pending(),
        )
        .await;
        assert_eq!((report.transactions, report.published), (3, 3));
        let delivered = publisher.delivered_ids();
        let at = |id: EventId| delivered.iter().position(|d| *d == id).expect("delivered");
        assert!(
            at(b_events[0].id()) < at(a_events[0].id()),
            "k2's later transaction did not wait for k1's retry: {delivered:?}"
        );
        assert!(
            at(a_events[0].id()) < at(c_events[0].id()),
            "k1 keeps commit order"
        );
        // B settled first, but the position only moves once A is settled too.
        assert!(confirmed.iter().all(|p| *p >= 20), "{confirmed:?}");
        assert_eq!(confirmed.last(), Some(&30));
        let mut marked = dead.1.lock().expect("lock").clone();
        marked.sort();
        let mut want: Vec<EventId> = [&a_events, &b_events, &c_events]
            .iter()
            .flat_map(|e| e.iter().map(Envelope::id))
            .collect();
        want.sort();
        assert_eq!(marked, want, "every published event written down once");
    }

    #[tokio::test]
    async fn pieces_of_a_transaction_confirm_only_its_end() {
        let (mut first, first_events) = tx(0, &["k1", "k2"]);
        first.end = None;
        let (last, last_events) = tx(40, &["k1"]);
        let publisher = InMemoryPublisher::new();
        let (report, confirmed) = relay(
            vec![first, last],
            &publisher,
            &Dead::default(),
            config(),
            std::future::pending(),
        )
        .await;
        assert_eq!((report.transactions, report.published), (1, 3));
        assert_eq!(confirmed, vec![40]);
        let want: Vec<EventId> = first_events
            .iter()
            .chain(&last_events)
            .map(Envelope::id)
            .collect();
        assert_eq!(publisher.delivered_ids(), want);
    }

    #[tokio::test]
    async fn the_window_bounds_what_is_read_ahead() {
        let txs: Vec<CommittedTx> = (0..20).map(|n| tx(n + 1, &["k"]).0).collect();
        let publisher = InMemoryPublisher::new();
        let most = Arc::new(Mutex::new(0usize));
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let log = Log {
            txs: txs.into(),
            confirmed: Arc::clone(&confirmed),
            probe: Some((publisher.clone(), Arc::clone(&most))),
            handed_out: 0,
        };
        let mut cfg = config();
        cfg.max_in_flight = 3;
        let report = CdcRelay::new(log, publisher.clone(), Dead::default(), cfg)
            .expect("relay")
            .run_until(std::future::pending())
            .await
            .expect("run");
        assert_eq!(report.transactions, 20);
        let confirmed = confirmed.lock().expect("lock").clone();
        assert_eq!(confirmed.last(), Some(&20));
        assert!(confirmed.windows(2).all(|w| w[0] < w[1]), "{confirmed:?}");
        let most = *most.lock().expect("lock");
        assert!(
            (1..=3).contains(&most),
            "at most 3 events read and not published at once, not {most}"
        );
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
        let err = CdcRelayConfig {
            max_in_flight: 0,
            ..CdcRelayConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("`max_in_flight`"), "{err}");
    }
}
