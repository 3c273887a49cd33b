//! The store: where the outbox rows live, and what the relay asks of it.
//!
//! [`Store`] is the small required surface (claim under a lease, then mark). Optional
//! abilities are separate traits: [`WakeUp`] (notifications instead of polling only),
//! [`Retention`] (purge published history), [`DeadLetterAdmin`] (list, requeue, purge dead
//! letters) and [`StoreStats`] (backlog figures).
//!
//! # The contract every store keeps (the conformance suite checks it)
//!
//! - `claim` returns only committed rows that are pending (or in flight under an expired
//!   lease) and due (`available_at <= now`), each key's rows in `seq` order.
//! - **Per-key order**: a row is claimable only if every row of its ordering key with a
//!   lower `seq` is published or dead, or is claimed in the same batch ahead of it. A key
//!   whose head waits for a retry or a delay blocks only itself.
//! - **Runs and fairness**: a claim may hand out a *run* of a key (its head and the due rows
//!   after it, up to the first one that is not due), so a hot key moves many events per
//!   claim. The SQL stores walk the keys round robin, starting after the key where their
//!   previous claim stopped, and look at a bounded number of keys per claim, so a claim
//!   costs what its batch costs whatever the backlog, and keys held by batches in flight
//!   or waiting for a retry never hide the others for more than a claim or two.
//! - Two claims never hold the same row at once: concurrent claimers get disjoint batches.
//! - Every claim gets a fresh fencing token. `mark_published`, `schedule_retry`,
//!   `dead_letter` and `release` change only rows that are still in flight under that
//!   token **and** whose lease has not expired; they return how many rows they changed.
//!   A relay that lost its lease therefore cannot mark rows.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::envelope::{Envelope, EventId};
use crate::error::{Error, Result};

/// A fencing token: unique per claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseToken(i64);

impl LeaseToken {
    /// A fresh random token (63 bits, positive: it is stored in a signed `BIGINT`).
    pub fn generate() -> Self {
        LeaseToken(fastrand::i64(1..i64::MAX))
    }

    /// Wraps a stored value.
    pub fn from_i64(v: i64) -> Self {
        LeaseToken(v)
    }

    /// The stored value.
    pub fn as_i64(self) -> i64 {
        self.0
    }
}

/// The lease under which a batch was claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Fencing token written on every claimed row.
    pub token: LeaseToken,
    /// The lease ends at this instant (store clock); after it, marks are refused.
    pub until: DateTime<Utc>,
}

/// One claimed row.
#[derive(Clone, Debug)]
pub struct ClaimedEvent {
    /// The event.
    pub envelope: Envelope,
    /// The row's insertion sequence number.
    pub seq: i64,
    /// Failed attempts before this claim.
    pub attempts: u32,
    /// The latest failure, if any.
    pub last_error: Option<String>,
}

/// A claimed row that could not be decoded into a valid envelope (written by another tool,
/// or corrupted). The relay dead-letters it with the error.
#[derive(Debug)]
pub struct Undecodable {
    /// The row's event id.
    pub id: EventId,
    /// Why it could not be decoded.
    pub error: Error,
}

/// A batch claimed under one lease.
#[derive(Debug)]
pub struct Claim {
    /// The lease.
    pub lease: Lease,
    /// Claimed events, in `seq` order.
    pub events: Vec<ClaimedEvent>,
    /// Claimed rows that failed to decode.
    pub undecodable: Vec<Undecodable>,
}

impl Claim {
    /// An empty claim (nothing was due).
    pub fn empty(lease: Lease) -> Self {
        Claim {
            lease,
            events: Vec::new(),
            undecodable: Vec::new(),
        }
    }

    /// Whether nothing was claimed.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.undecodable.is_empty()
    }

    /// Number of rows claimed.
    pub fn len(&self) -> usize {
        self.events.len() + self.undecodable.len()
    }
}

/// A failed event to try again later.
#[derive(Clone, Debug)]
pub struct Retry {
    /// The event.
    pub id: EventId,
    /// Not claimable for this long, counted from the store's own clock when the retry is
    /// recorded (so relay and database clocks need not agree).
    pub delay: Duration,
    /// The failure, stored in `last_error`.
    pub error: String,
}

/// An event to give up on.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The event.
    pub id: EventId,
    /// The failure, stored in `last_error`.
    pub error: String,
}

/// The store the relay works against. Implementations are cheap to share (`Send + Sync`);
/// see the module docs for the contract.
pub trait Store: Send + Sync {
    /// Claims up to `limit` due rows under a new lease lasting `lease_for`.
    fn claim(
        &self,
        limit: usize,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Marks rows published. Returns how many rows changed (fenced rows do not).
    fn mark_published(
        &self,
        lease: &Lease,
        ids: &[EventId],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Returns rows to pending with `attempts + 1`, `last_error` and
    /// `available_at = now + delay` (store clock).
    fn schedule_retry(
        &self,
        lease: &Lease,
        retries: &[Retry],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Moves rows to the dead letters with `attempts + 1` and `last_error`.
    fn dead_letter(
        &self,
        lease: &Lease,
        dead: &[DeadLetter],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Returns rows to pending untouched (no attempt counted), e.g. on shutdown or when an
    /// earlier event of the same key failed in the same batch.
    fn release(&self, lease: &Lease, ids: &[EventId]) -> impl Future<Output = Result<u64>> + Send;
}

/// Wake-ups: resolves when new rows may have been committed (PostgreSQL `LISTEN`, an
/// in-process signal). The relay still polls as a fallback, so a lost wake-up only costs
/// latency.
pub trait WakeUp: Send + Sync {
    /// Waits for the next wake-up. A wake-up that arrived while nobody waited is kept, so
    /// none is lost between a claim and the next wait.
    fn wait(&self) -> impl Future<Output = Result<()>> + Send;
}

/// Retention: deletes published rows, in bounded batches so no purge holds long locks.
pub trait Retention: Send + Sync {
    /// Deletes at most `limit` rows published before `before`; returns how many.
    fn purge_published(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// Which dead letters an admin operation applies to. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only these event types.
    pub event_type: Option<String>,
    /// Only this ordering key.
    pub ordering_key: Option<String>,
    /// Only rows dead-lettered at or after this instant.
    pub dead_since: Option<DateTime<Utc>>,
    /// Only rows dead-lettered before this instant.
    pub dead_before: Option<DateTime<Utc>>,
    /// Only these ids.
    pub ids: Option<Vec<EventId>>,
}

/// A dead letter as operators see it: the event, or what could be read of a row that does
/// not decode into one (written by another tool, or corrupted). Both kinds are requeued and
/// purged by id like any other.
#[derive(Clone, Debug)]
pub struct DeadLetterRecord {
    /// The row's event id.
    pub id: EventId,
    /// The row's insertion sequence number.
    pub seq: i64,
    /// The event, or the undecodable row.
    pub event: DeadEvent,
    /// Failed attempts.
    pub attempts: u32,
    /// The final failure.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
}

impl DeadLetterRecord {
    /// The event, if the row decodes into one.
    pub fn envelope(&self) -> Option<&Envelope> {
        match &self.event {
            DeadEvent::Event(e) => Some(e),
            DeadEvent::Undecodable(_) => None,
        }
    }
}

/// What a dead-lettered row holds.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum DeadEvent {
    /// A valid event.
    Event(Envelope),
    /// A row that does not decode into a valid event.
    Undecodable(UndecodableRow),
}

/// What could be read of a row that does not decode into a valid event; each text field
/// is the column of that name as stored.
#[derive(Clone, Debug)]
pub struct UndecodableRow {
    /// Column `aggregate_type`.
    pub aggregate_type: String,
    /// Column `aggregate_id`.
    pub aggregate_id: String,
    /// Column `event_type`.
    pub event_type: String,
    /// Column `destination`.
    pub destination: String,
    /// Column `ordering_key`.
    pub ordering_key: String,
    /// Column `content_type`.
    pub content_type: String,
    /// Column `headers`, as stored.
    pub headers: String,
    /// Size of the payload in bytes.
    pub payload_len: usize,
    /// Column `created_at`.
    pub created_at: DateTime<Utc>,
    /// Why it does not decode.
    pub error: String,
}

/// Dead-letter administration.
pub trait DeadLetterAdmin: Send + Sync {
    /// Lists at most `limit` dead letters matching `filter`, oldest first.
    fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetterRecord>>> + Send;

    /// Returns matching dead letters to pending with attempts reset; returns how many.
    fn requeue_dead(&self, filter: &DeadLetterFilter) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes matching dead letters; returns how many.
    fn purge_dead(&self, filter: &DeadLetterFilter) -> impl Future<Output = Result<u64>> + Send;
}

/// Backlog figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BacklogStats {
    /// Rows waiting to be published (including delayed and retrying ones).
    pub pending: u64,
    /// Rows claimed by a relay right now.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
    /// `created_at` of the oldest pending or in-flight row.
    pub oldest_unpublished: Option<DateTime<Utc>>,
    /// Rows marked published in the last 60 seconds, by the store's clock.
    pub published_last_minute: u64,
}

/// Reports backlog figures.
pub trait StoreStats: Send + Sync {
    /// Counts rows by state.
    fn stats(&self) -> impl Future<Output = Result<BacklogStats>> + Send;
}

/// Calls `$then!` with the four fenced marks of [`Store`]: each one's name,
/// the name of its object-safe twin, and the item it takes a slice of. The
/// shims below (`DynStore`, `Arc<dyn DynStore>`, `Arc<S>`) are written once
/// over this list.
macro_rules! with_marks {
    ($then:ident) => {
        $then! {
            mark_published / mark_published_dyn: EventId,
            schedule_retry / schedule_retry_dyn: Retry,
            dead_letter / dead_letter_dyn: DeadLetter,
            release / release_dyn: EventId,
        }
    };
}

macro_rules! dyn_mark_decls {
    ($($name:ident / $dyn:ident: $item:ty,)*) => {$(
        #[doc = concat!("See [`Store::", stringify!($name), "`].")]
        fn $dyn<'a>(&'a self, lease: &'a Lease, items: &'a [$item])
            -> BoxFuture<'a, Result<u64>>;
    )*};
}

macro_rules! dyn_mark_impls {
    ($($name:ident / $dyn:ident: $item:ty,)*) => {$(
        fn $dyn<'a>(&'a self, lease: &'a Lease, items: &'a [$item])
            -> BoxFuture<'a, Result<u64>> {
            Box::pin(self.$name(lease, items))
        }
    )*};
}

macro_rules! mark_forwards {
    ($($name:ident / $dyn:ident: $item:ty,)*) => {$(
        async fn $name(&self, lease: &Lease, items: &[$item]) -> Result<u64> {
            (**self).$dyn(lease, items).await
        }
    )*};
}

macro_rules! shared_marks {
    ($($name:ident / $dyn:ident: $item:ty,)*) => {$(
        fn $name(&self, lease: &Lease, items: &[$item])
            -> impl Future<Output = Result<u64>> + Send {
            (**self).$name(lease, items)
        }
    )*};
}

/// The object-safe twin of [`Store`], for choosing a store at run time
/// (`Arc<dyn DynStore>` is itself a [`Store`]). Every `Store` is a `DynStore`.
pub trait DynStore: Send + Sync {
    /// See [`Store::claim`].
    fn claim_dyn(&self, limit: usize, lease_for: Duration) -> BoxFuture<'_, Result<Claim>>;
    with_marks!(dyn_mark_decls);
}

impl<S: Store> DynStore for S {
    fn claim_dyn(&self, limit: usize, lease_for: Duration) -> BoxFuture<'_, Result<Claim>> {
        Box::pin(self.claim(limit, lease_for))
    }
    with_marks!(dyn_mark_impls);
}

impl Store for Arc<dyn DynStore> {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        (**self).claim_dyn(limit, lease_for).await
    }
    with_marks!(mark_forwards);
}

/// The object-safe twin of [`WakeUp`].
pub trait DynWakeUp: Send + Sync {
    /// See [`WakeUp::wait`].
    fn wait_dyn(&self) -> BoxFuture<'_, Result<()>>;
}

impl<W: WakeUp> DynWakeUp for W {
    fn wait_dyn(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.wait())
    }
}

/// A shared store is a store (so a relay and an admin task can use one pool).
impl<S: Store> Store for Arc<S> {
    fn claim(
        &self,
        limit: usize,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send {
        (**self).claim(limit, lease_for)
    }
    with_marks!(shared_marks);
}
