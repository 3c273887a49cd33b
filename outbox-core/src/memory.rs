//! In-memory store and publisher, always compiled: for unit tests of relay logic, examples
//! and the conformance suite's self-check. Not durable.
//!
//! Time comes from `tokio::time::Instant`, so tests on a paused tokio clock see leases and
//! retries expire without sleeping.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::envelope::{Envelope, EventId};
use crate::error::{Error, ErrorKind, Result};
use crate::publisher::{PublishOutcome, Publisher};
use crate::schema::RowStatus;
use crate::store::{
    BacklogStats, Claim, ClaimedEvent, DeadEvent, DeadLetter, DeadLetterAdmin, DeadLetterFilter,
    DeadLetterRecord, Lease, LeaseToken, Retention, Retry, Store, StoreStats, WakeUp,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every update is one
    // assignment), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A clock that follows tokio's (pausable) time, anchored to the wall clock at creation.
#[derive(Clone, Copy, Debug)]
struct Clock {
    wall: DateTime<Utc>,
    mono: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            wall: Utc::now(),
            mono: tokio::time::Instant::now(),
        }
    }
    fn now(&self) -> DateTime<Utc> {
        let elapsed = self.mono.elapsed();
        self.wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[derive(Clone, Debug)]
struct Row {
    seq: i64,
    envelope: Envelope,
    status: RowStatus,
    available_at: DateTime<Utc>,
    attempts: u32,
    lease_token: Option<LeaseToken>,
    lease_until: Option<DateTime<Utc>>,
    last_error: Option<String>,
    processed_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct State {
    rows: BTreeMap<i64, Row>,
    by_id: HashMap<EventId, i64>,
    next_seq: i64,
}

impl State {
    /// Deletes at most `limit` rows matching `doomed`, lowest `seq` first; returns how many.
    fn remove_where(&mut self, limit: usize, doomed: impl Fn(&Row) -> bool) -> u64 {
        let gone: Vec<(i64, EventId)> = self
            .rows
            .values()
            .filter(|r| doomed(r))
            .take(limit)
            .map(|r| (r.seq, r.envelope.id()))
            .collect();
        for (seq, id) in &gone {
            self.rows.remove(seq);
            self.by_id.remove(id);
        }
        gone.len() as u64
    }
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
    clock: Clock,
}

impl Inner {
    /// Wakes every waiting relay, and leaves a permit for the next one to wait.
    fn wake(&self) {
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

/// An in-memory outbox table with transactions, leases and fencing, keeping the same
/// contract as the database stores.
#[derive(Clone)]
pub struct InMemoryStore {
    inner: Arc<Inner>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        InMemoryStore::new()
    }
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("rows", &lock(&self.inner.state).rows.len())
            .finish()
    }
}

/// A transaction on an [`InMemoryStore`]: enqueued events become visible on
/// [`commit`](Self::commit); dropping it rolls back.
#[derive(Debug)]
pub struct InMemoryTransaction {
    store: InMemoryStore,
    pending: Vec<Envelope>,
}

impl InMemoryTransaction {
    /// Adds an event to the transaction.
    pub fn enqueue(&mut self, envelope: Envelope) {
        self.pending.push(envelope);
    }

    /// Makes the events visible atomically. Fails (and adds nothing) if an event id is
    /// already in the table or repeated in the transaction, like the unique index does.
    pub fn commit(self) -> Result<()> {
        let mut st = lock(&self.store.inner.state);
        let mut seen = HashSet::new();
        for env in &self.pending {
            if st.by_id.contains_key(&env.id()) || !seen.insert(env.id()) {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    format!("duplicate event id {}", env.id()),
                ));
            }
        }
        let now = self.store.now();
        for env in self.pending {
            st.next_seq += 1;
            let seq = st.next_seq;
            st.by_id.insert(env.id(), seq);
            // The delay is counted on the store's clock, which may be a paused test clock.
            let delay = (env.available_at() - env.created_at()).max(chrono::Duration::zero());
            st.rows.insert(
                seq,
                Row {
                    seq,
                    available_at: now + delay,
                    envelope: env,
                    status: RowStatus::Pending,
                    attempts: 0,
                    lease_token: None,
                    lease_until: None,
                    last_error: None,
                    processed_at: None,
                },
            );
        }
        drop(st);
        self.store.inner.wake();
        Ok(())
    }

    /// Discards the events.
    pub fn rollback(self) {}
}

/// A row's state as tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowView {
    /// Insertion sequence.
    pub seq: i64,
    /// Lifecycle state.
    pub status: RowStatus,
    /// Failed attempts.
    pub attempts: u32,
    /// Latest failure.
    pub last_error: Option<String>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                clock: Clock::new(),
            }),
        }
    }

    /// Starts a transaction.
    pub fn begin(&self) -> InMemoryTransaction {
        InMemoryTransaction {
            store: self.clone(),
            pending: Vec::new(),
        }
    }

    /// Enqueues events in one committed transaction.
    pub fn enqueue_committed(&self, events: impl IntoIterator<Item = Envelope>) -> Result<()> {
        let mut tx = self.begin();
        for e in events {
            tx.enqueue(e);
        }
        tx.commit()
    }

    /// The state of one row, if it exists.
    pub fn row(&self, id: EventId) -> Option<RowView> {
        let st = lock(&self.inner.state);
        let seq = st.by_id.get(&id)?;
        st.rows.get(seq).map(|r| RowView {
            seq: r.seq,
            status: r.status,
            attempts: r.attempts,
            last_error: r.last_error.clone(),
        })
    }

    /// Every row's id and status, in `seq` order.
    pub fn rows(&self) -> Vec<(EventId, RowStatus)> {
        lock(&self.inner.state)
            .rows
            .values()
            .map(|r| (r.envelope.id(), r.status))
            .collect()
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// Applies `f` to each listed row still in flight under `lease` with the lease unexpired.
    fn fenced_update(
        &self,
        lease: &Lease,
        ids: impl Iterator<Item = EventId>,
        mut f: impl FnMut(&mut Row, DateTime<Utc>),
    ) -> u64 {
        let now = self.now();
        let mut st = lock(&self.inner.state);
        let mut changed = 0;
        for id in ids {
            let Some(seq) = st.by_id.get(&id).copied() else {
                continue;
            };
            let Some(row) = st.rows.get_mut(&seq) else {
                continue;
            };
            let holds = row.status == RowStatus::InFlight
                && row.lease_token == Some(lease.token)
                && row.lease_until.is_some_and(|u| u > now);
            if holds {
                f(row, now);
                row.lease_token = None;
                row.lease_until = None;
                changed += 1;
            }
        }
        changed
    }
}

impl Store for InMemoryStore {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        let now = self.now();
        let lease = Lease {
            token: LeaseToken::generate(),
            until: after(now, lease_for),
        };
        let mut st = lock(&self.inner.state);
        let mut blocked: HashSet<String> = HashSet::new();
        let mut events = Vec::new();
        for row in st.rows.values_mut() {
            if events.len() >= limit {
                break;
            }
            let key = row.envelope.ordering_key();
            let expired =
                row.status == RowStatus::InFlight && row.lease_until.is_some_and(|u| u <= now);
            let claimable =
                (row.status == RowStatus::Pending || expired) && row.available_at <= now;
            match row.status {
                RowStatus::Published | RowStatus::Dead => continue,
                _ if blocked.contains(key) => continue,
                _ if !claimable => {
                    // An unfinished row that is not due (or leased) holds back its key.
                    blocked.insert(key.to_owned());
                    continue;
                }
                _ => {}
            }
            row.status = RowStatus::InFlight;
            row.lease_token = Some(lease.token);
            row.lease_until = Some(lease.until);
            events.push(ClaimedEvent {
                envelope: row.envelope.clone(),
                seq: row.seq,
                attempts: row.attempts,
                last_error: row.last_error.clone(),
            });
        }
        Ok(Claim {
            lease,
            events,
            undecodable: Vec::new(),
        })
    }

    async fn mark_published(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        Ok(self.fenced_update(lease, ids.iter().copied(), |row, now| {
            row.status = RowStatus::Published;
            row.processed_at = Some(now);
        }))
    }

    async fn schedule_retry(&self, lease: &Lease, retries: &[Retry]) -> Result<u64> {
        let by_id: HashMap<EventId, &Retry> = retries.iter().map(|r| (r.id, r)).collect();
        Ok(
            self.fenced_update(lease, retries.iter().map(|r| r.id), |row, now| {
                if let Some(r) = by_id.get(&row.envelope.id()) {
                    row.status = RowStatus::Pending;
                    row.attempts = row.attempts.saturating_add(1);
                    row.available_at = after(now, r.delay);
                    row.last_error = Some(r.error.clone());
                }
            }),
        )
    }

    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        let by_id: HashMap<EventId, &DeadLetter> = dead.iter().map(|d| (d.id, d)).collect();
        Ok(
            self.fenced_update(lease, dead.iter().map(|d| d.id), |row, now| {
                if let Some(d) = by_id.get(&row.envelope.id()) {
                    row.status = RowStatus::Dead;
                    row.attempts = row.attempts.saturating_add(1);
                    row.last_error = Some(d.error.clone());
                    row.processed_at = Some(now);
                }
            }),
        )
    }

    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        Ok(self.fenced_update(lease, ids.iter().copied(), |row, _| {
            row.status = RowStatus::Pending;
        }))
    }
}

impl WakeUp for InMemoryStore {
    async fn wait(&self) -> Result<()> {
        self.inner.notify.notified().await;
        Ok(())
    }
}

impl Retention for InMemoryStore {
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        Ok(lock(&self.inner.state).remove_where(limit, |r| {
            r.status == RowStatus::Published && r.processed_at.is_some_and(|p| p < before)
        }))
    }
}

fn matches(filter: &DeadLetterFilter, row: &Row) -> bool {
    row.status == RowStatus::Dead
        && filter
            .event_type
            .as_deref()
            .is_none_or(|t| row.envelope.event_type() == t)
        && filter
            .ordering_key
            .as_deref()
            .is_none_or(|k| row.envelope.ordering_key() == k)
        && filter
            .dead_since
            .is_none_or(|s| row.processed_at.is_some_and(|p| p >= s))
        && filter
            .dead_before
            .is_none_or(|b| row.processed_at.is_some_and(|p| p < b))
        && filter
            .ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&row.envelope.id()))
}

impl DeadLetterAdmin for InMemoryStore {
    async fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        let st = lock(&self.inner.state);
        Ok(st
            .rows
            .values()
            .filter(|r| matches(filter, r))
            .take(limit)
            .map(|r| DeadLetterRecord {
                id: r.envelope.id(),
                seq: r.seq,
                event: DeadEvent::Event(r.envelope.clone()),
                attempts: r.attempts,
                last_error: r.last_error.clone(),
                dead_at: r.processed_at,
            })
            .collect())
    }

    async fn requeue_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let now = self.now();
        let mut st = lock(&self.inner.state);
        let mut n = 0;
        for row in st.rows.values_mut().filter(|r| matches(filter, r)) {
            row.status = RowStatus::Pending;
            row.attempts = 0;
            row.available_at = now;
            row.processed_at = None;
            n += 1;
        }
        drop(st);
        if n > 0 {
            self.inner.wake();
        }
        Ok(n)
    }

    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        Ok(lock(&self.inner.state).remove_where(usize::MAX, |r| matches(filter, r)))
    }
}

impl StoreStats for InMemoryStore {
    async fn stats(&self) -> Result<BacklogStats> {
        let now = self.now();
        let st = lock(&self.inner.state);
        let mut s = BacklogStats::default();
        for r in st.rows.values() {
            let leased = r.status == RowStatus::InFlight && r.lease_until.is_some_and(|u| u > now);
            match r.status {
                RowStatus::Pending => s.pending += 1,
                RowStatus::InFlight if leased => s.in_flight += 1,
                RowStatus::InFlight => s.pending += 1,
                RowStatus::Dead => s.dead += 1,
                RowStatus::Published => {
                    if r.processed_at
                        .is_some_and(|p| now - p <= chrono::Duration::seconds(60))
                    {
                        s.published_last_minute += 1;
                    }
                    continue;
                }
            }
            if r.status != RowStatus::Dead {
                let created = r.envelope.created_at();
                s.oldest_unpublished =
                    Some(s.oldest_unpublished.map_or(created, |o| o.min(created)));
            }
        }
        Ok(s)
    }
}

/// A failure the [`InMemoryPublisher`] is told to produce.
#[derive(Clone, Debug)]
enum Rule {
    /// The next `calls` publish calls fail every event.
    NextCalls { calls: u32, kind: ErrorKind },
    /// This event fails its next `times` publishes.
    Event {
        id: EventId,
        times: u32,
        kind: ErrorKind,
    },
    /// Every event to this destination fails.
    Destination {
        destination: String,
        kind: ErrorKind,
    },
}

/// One event as the in-memory publisher received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The envelope.
    pub envelope: Envelope,
    /// Which publish call (0-based) carried it.
    pub call: u64,
}

#[derive(Default)]
struct PubState {
    deliveries: Vec<Delivery>,
    rules: VecDeque<Rule>,
    calls: u64,
    random_failure: Option<(f64, ErrorKind, fastrand::Rng)>,
    dedupe: bool,
    seen: HashSet<EventId>,
    latency: Duration,
    ordered: Option<Ordered>,
}

/// How an in-memory publisher with ordered runs treats the events after a failed one.
#[derive(Clone, Copy)]
enum Ordered {
    /// A key's later events in the call fail too, as on an ordered link.
    RefuseRest,
    /// They are accepted: the broker misbehaviour the relay counts as out of order.
    AcceptRest,
}

/// A publisher that records what it is given and fails on command. It can also drop
/// repeated event ids, as a broker with a dedupe window does.
#[derive(Clone, Default)]
pub struct InMemoryPublisher {
    state: Arc<Mutex<PubState>>,
}

impl std::fmt::Debug for InMemoryPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryPublisher")
            .field("deliveries", &lock(&self.state).deliveries.len())
            .finish()
    }
}

impl InMemoryPublisher {
    /// A publisher that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops events whose id it has already stored (reporting them published), like a broker
    /// with a deduplication window.
    pub fn with_dedupe(self) -> Self {
        lock(&self.state).dedupe = true;
        self
    }

    /// Takes several events of one ordering key per call ([`Publisher::ordered_runs`] is
    /// `true`), in slice order. With `refuse_after_failure`, an event whose key already had
    /// a retryable failure in the same call fails too, as on an ordered link whose broker
    /// refuses what follows a refused message; without it the later events are accepted,
    /// which is the rare broker behaviour the relay reports as out of order.
    pub fn with_ordered_runs(self, refuse_after_failure: bool) -> Self {
        lock(&self.state).ordered = Some(if refuse_after_failure {
            Ordered::RefuseRest
        } else {
            Ordered::AcceptRest
        });
        self
    }

    /// Each publish call waits this long first.
    pub fn with_latency(self, latency: Duration) -> Self {
        lock(&self.state).latency = latency;
        self
    }

    /// Each event fails with probability `p` (error `kind`), drawn from a seeded generator.
    pub fn with_random_failures(self, p: f64, kind: ErrorKind, seed: u64) -> Self {
        lock(&self.state).random_failure = Some((p, kind, fastrand::Rng::with_seed(seed)));
        self
    }

    /// The next `calls` publish calls fail every event with `kind`.
    pub fn fail_next_calls(&self, calls: u32, kind: ErrorKind) {
        lock(&self.state)
            .rules
            .push_back(Rule::NextCalls { calls, kind });
    }

    /// Event `id` fails its next `times` publishes with `kind`.
    pub fn fail_event(&self, id: EventId, times: u32, kind: ErrorKind) {
        lock(&self.state)
            .rules
            .push_back(Rule::Event { id, times, kind });
    }

    /// Every event sent to `destination` fails with `kind` (e.g. a missing topic).
    pub fn fail_destination(&self, destination: impl Into<String>, kind: ErrorKind) {
        lock(&self.state).rules.push_back(Rule::Destination {
            destination: destination.into(),
            kind,
        });
    }

    /// Removes every scripted and random failure.
    pub fn heal(&self) {
        let mut st = lock(&self.state);
        st.rules.clear();
        st.random_failure = None;
    }

    /// Everything delivered so far, in order (duplicates included unless deduped).
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state).deliveries.clone()
    }

    /// How many deliveries so far (duplicates included unless deduped), without copying
    /// them: for polling loops.
    pub fn delivered_count(&self) -> usize {
        lock(&self.state).deliveries.len()
    }

    /// The ids delivered so far, in order.
    pub fn delivered_ids(&self) -> Vec<EventId> {
        lock(&self.state)
            .deliveries
            .iter()
            .map(|d| d.envelope.id())
            .collect()
    }

    fn scripted_failure(
        st: &mut PubState,
        env: &Envelope,
        call_kind: Option<ErrorKind>,
    ) -> Option<ErrorKind> {
        if let Some(kind) = call_kind {
            return Some(kind);
        }
        for rule in st.rules.iter_mut() {
            match rule {
                Rule::Event { id, times, kind } if *id == env.id() && *times > 0 => {
                    *times -= 1;
                    return Some(*kind);
                }
                Rule::Destination { destination, kind } if destination == env.destination() => {
                    return Some(*kind);
                }
                _ => {}
            }
        }
        if let Some((p, kind, rng)) = st.random_failure.as_mut()
            && rng.f64() < *p
        {
            return Some(*kind);
        }
        None
    }
}

impl Publisher for InMemoryPublisher {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        let latency = lock(&self.state).latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut st = lock(&self.state);
        let call = st.calls;
        st.calls += 1;
        // A call-wide failure consumes one call from the first NextCalls rule.
        let mut call_kind = None;
        if let Some(Rule::NextCalls { calls, kind }) = st
            .rules
            .iter_mut()
            .find(|r| matches!(r, Rule::NextCalls { calls, .. } if *calls > 0))
        {
            *calls -= 1;
            call_kind = Some(*kind);
        }
        let refuse_rest = matches!(st.ordered, Some(Ordered::RefuseRest));
        let mut refused: HashMap<String, ErrorKind> = HashMap::new();
        events
            .iter()
            .map(|env| {
                let failure = match refused.get(env.ordering_key()) {
                    Some(kind) => Some(*kind),
                    None => Self::scripted_failure(&mut st, env, call_kind),
                };
                if let Some(kind) = failure
                    && refuse_rest
                    && kind.is_retryable()
                {
                    refused.insert(env.ordering_key().to_owned(), kind);
                }
                match failure {
                    Some(kind) => PublishOutcome::Failed(Error::new(
                        kind,
                        format!("scripted {kind} failure for {}", env.id()),
                    )),
                    None => {
                        if !st.dedupe || st.seen.insert(env.id()) {
                            st.deliveries.push(Delivery {
                                envelope: env.clone(),
                                call,
                            });
                        }
                        PublishOutcome::Published
                    }
                }
            })
            .collect()
    }

    fn ordered_runs(&self) -> bool {
        lock(&self.state).ordered.is_some()
    }
}
