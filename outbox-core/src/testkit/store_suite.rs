//! The store conformance suite.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DurationRound, Utc};

use crate::envelope::{Envelope, EventId, TraceContext};
use crate::error::Result;
use crate::store::{
    DeadLetter, DeadLetterAdmin, DeadLetterFilter, Retention, Retry, Store, StoreStats,
};

use super::step;

/// What a store adapter provides to run the suite against its real database.
pub trait StoreHarness: Send + Sync + 'static {
    /// The store under test, bound to this harness's isolated table.
    type Store: Store + Clone + 'static;

    /// A handle to the store (cheap: a pool clone).
    fn store(&self) -> Self::Store;

    /// Writes `events` in one transaction, then commits it (`commit`) or rolls it back.
    /// Adapters that enqueue in the caller's transaction should also write a business row in
    /// it, as an application does.
    fn transact(
        &self,
        events: Vec<Envelope>,
        commit: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes `events` in one transaction and commits it.
    fn commit(&self, events: Vec<Envelope>) -> impl Future<Output = Result<()>> + Send {
        self.transact(events, true)
    }

    /// Writes `events` in one transaction and rolls it back.
    fn roll_back(&self, events: Vec<Envelope>) -> impl Future<Output = Result<()>> + Send {
        self.transact(events, false)
    }

    /// Overwrites the committed row of event `id` with `headers` that are not a JSON object,
    /// as another tool might, so that it no longer decodes. Returns `false` if the store
    /// cannot hold such a row (the in-memory store keeps envelopes); SQL harnesses must
    /// implement it.
    fn corrupt_headers(&self, id: EventId) -> impl Future<Output = Result<bool>> + Send {
        let _ = id;
        async { Ok(false) }
    }
}

/// An event with times cut to microseconds (what every database keeps), so that a row read
/// back compares equal to what was written.
pub(crate) fn event(key: &str, n: usize, destination: &str) -> Envelope {
    let now = Utc::now()
        .duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or_else(|_| Utc::now());
    Envelope::builder("order", key, "order.updated", destination)
        .with_created_at(now)
        .json(&serde_json::json!({ "key": key, "n": n }))
        .build()
        .expect("test envelope is valid")
}

const LEASE: Duration = Duration::from_millis(600);
const PAST_LEASE: Duration = Duration::from_millis(1000);
const LONG_LEASE: Duration = Duration::from_secs(30);

/// Runs every store check, each on a fresh harness from `make`.
pub async fn run_store_suite<H, F, Fut>(make: F)
where
    H: StoreHarness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    const S: &str = "store conformance";
    step(S, "commit is visible, rollback is not", async {
        commit_visible_rollback_invisible(&make().await).await
    })
    .await;
    step(S, "envelope round trip", async {
        envelope_round_trip(&make().await).await
    })
    .await;
    step(S, "claim respects limit and seq order", async {
        claim_limit_and_order(&make().await).await
    })
    .await;
    step(S, "concurrent claimers never share a row", async {
        concurrent_claimers_disjoint(&make().await).await
    })
    .await;
    step(S, "lease expiry and fencing", async {
        lease_expiry_and_fencing(&make().await).await
    })
    .await;
    step(S, "retry scheduling", async {
        retry_scheduling(&make().await).await
    })
    .await;
    step(S, "dead letter is terminal", async {
        dead_letter_is_terminal(&make().await).await
    })
    .await;
    step(
        S,
        "per-key order; a failing key blocks only itself",
        async { per_key_order(&make().await).await },
    )
    .await;
    step(S, "delayed delivery", async {
        delayed_delivery(&make().await).await
    })
    .await;
    step(S, "release counts no attempt", async {
        release_counts_no_attempt(&make().await).await
    })
    .await;
    step(
        S,
        "a claim takes a key's run, in seq order, up to its first row not due",
        async { claim_takes_runs(&make().await).await },
    )
    .await;
    step(
        S,
        "keys held in flight beyond a claim's key budget do not hide other keys",
        async { held_keys_do_not_hide_others(&make().await).await },
    )
    .await;
}

async fn claim_all<S: Store>(store: &S, lease: Duration) -> crate::store::Claim {
    store.claim(1000, lease).await.expect("claim")
}

fn ids(claim: &crate::store::Claim) -> Vec<EventId> {
    claim.events.iter().map(|e| e.envelope.id()).collect()
}

/// Committed events are claimable; rolled-back ones never are.
pub async fn commit_visible_rollback_invisible<H: StoreHarness>(h: &H) {
    let committed: Vec<Envelope> = (0..3)
        .map(|i| event(&format!("c{i}"), i, "t.commit"))
        .collect();
    let rolled: Vec<Envelope> = (0..3)
        .map(|i| event(&format!("r{i}"), i, "t.rollback"))
        .collect();
    let rolled_ids: HashSet<EventId> = rolled.iter().map(Envelope::id).collect();
    h.roll_back(rolled).await.expect("roll back");
    h.commit(committed.clone()).await.expect("commit");
    let store = h.store();
    let claim = claim_all(&store, LONG_LEASE).await;
    let got = ids(&claim);
    assert_eq!(
        got,
        committed.iter().map(Envelope::id).collect::<Vec<_>>(),
        "exactly the committed events, in order"
    );
    assert!(
        got.iter().all(|id| !rolled_ids.contains(id)),
        "a rolled-back event was claimed"
    );
}

/// Every field written is read back unchanged.
pub async fn envelope_round_trip<H: StoreHarness>(h: &H) {
    let base = event("rt", 0, "orders.v1");
    let env = Envelope::builder("invoice", "inv-9", "invoice.paid", "billing/invoice.paid")
        .with_created_at(base.created_at())
        .with_ordering_key("customer-42")
        .with_payload(
            Bytes::from_static(&[0, 159, 146, 150, 255, 10]),
            "application/octet-stream",
        )
        .with_header("x-tenant", "acme")
        .with_header("x-unicode", "grüße ✓")
        .with_trace(
            TraceContext::new(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Some("vendor=abc".to_owned()),
            )
            .expect("valid trace"),
        )
        .build()
        .expect("valid");
    h.commit(vec![env.clone()]).await.expect("commit");
    let claim = claim_all(&h.store(), LONG_LEASE).await;
    assert!(claim.undecodable.is_empty(), "{:?}", claim.undecodable);
    assert_eq!(claim.events.len(), 1);
    assert_eq!(
        claim.events[0].envelope, env,
        "read back differs from what was written"
    );
    assert_eq!(claim.events[0].attempts, 0);
}

/// A claim returns at most `limit` rows, lowest `seq` first.
pub async fn claim_limit_and_order<H: StoreHarness>(h: &H) {
    let events: Vec<Envelope> = (0..7)
        .map(|i| event(&format!("k{i}"), i, "t.limit"))
        .collect();
    h.commit(events.clone()).await.expect("commit");
    let store = h.store();
    let first = store.claim(4, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&first),
        events[..4].iter().map(Envelope::id).collect::<Vec<_>>()
    );
    assert!(
        first.events.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq must increase"
    );
    let second = store.claim(4, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&second),
        events[4..].iter().map(Envelope::id).collect::<Vec<_>>()
    );
    assert!(store.claim(4, LONG_LEASE).await.expect("claim").is_empty());
}

/// Eight concurrent claimers drain 200 events; no event is claimed twice, none is missed.
pub async fn concurrent_claimers_disjoint<H: StoreHarness>(h: &H) {
    let events: Vec<Envelope> = (0..200)
        .map(|i| event(&format!("key-{i}"), i, "t.concurrent"))
        .collect();
    for chunk in events.chunks(50) {
        h.commit(chunk.to_vec()).await.expect("commit");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = h.store();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let claim = store.claim(7, LONG_LEASE).await.expect("claim");
                if claim.is_empty() {
                    empty += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    empty = 0;
                    mine.extend(ids(&claim));
                }
            }
            mine
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("claimer task"));
    }
    let unique: HashSet<EventId> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "{} rows were claimed twice",
        all.len() - unique.len()
    );
    let expected: HashSet<EventId> = events.iter().map(Envelope::id).collect();
    assert_eq!(
        unique, expected,
        "every committed event is claimed exactly once"
    );
}

/// A lease that expired lets another claimer take the row; the first claimer's marks are
/// then refused, and so are marks under an expired lease nobody took over.
pub async fn lease_expiry_and_fencing<H: StoreHarness>(h: &H) {
    let e = event("lease", 0, "t.lease");
    h.commit(vec![e.clone()]).await.expect("commit");
    let store = h.store();
    let a = store.claim(10, LEASE).await.expect("claim");
    assert_eq!(ids(&a), vec![e.id()]);
    assert!(
        store.claim(10, LEASE).await.expect("claim").is_empty(),
        "a leased row was claimed again"
    );
    tokio::time::sleep(PAST_LEASE).await;
    let b = store.claim(10, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&b),
        vec![e.id()],
        "an expired lease must let the row be claimed again"
    );
    assert_ne!(
        a.lease.token, b.lease.token,
        "every claim needs its own fencing token"
    );
    assert_eq!(
        store
            .mark_published(&a.lease, &[e.id()])
            .await
            .expect("mark"),
        0,
        "a fenced relay marked a row"
    );
    assert_eq!(
        store.release(&a.lease, &[e.id()]).await.expect("release"),
        0,
        "a fenced relay released a row"
    );
    assert_eq!(
        store
            .mark_published(&b.lease, &[e.id()])
            .await
            .expect("mark"),
        1
    );
    assert!(
        claim_all(&store, LONG_LEASE).await.is_empty(),
        "a published row was claimed"
    );

    // Expired but not taken over: still refused.
    let f = event("lease2", 1, "t.lease");
    h.commit(vec![f.clone()]).await.expect("commit");
    let c = store.claim(10, LEASE).await.expect("claim");
    assert_eq!(ids(&c), vec![f.id()]);
    tokio::time::sleep(PAST_LEASE).await;
    assert_eq!(
        store
            .mark_published(&c.lease, &[f.id()])
            .await
            .expect("mark"),
        0,
        "marked under an expired lease"
    );
    assert_eq!(ids(&claim_all(&store, LONG_LEASE).await), vec![f.id()]);
}

/// A scheduled retry hides the row until its delay passes, then returns it with the
/// attempt counted and the error kept.
pub async fn retry_scheduling<H: StoreHarness>(h: &H) {
    let e = event("retry", 0, "t.retry");
    h.commit(vec![e.clone()]).await.expect("commit");
    let store = h.store();
    let a = claim_all(&store, LONG_LEASE).await;
    let retry = Retry {
        id: e.id(),
        delay: Duration::from_millis(700),
        error: "unavailable: broker down".to_owned(),
    };
    assert_eq!(
        store
            .schedule_retry(&a.lease, &[retry])
            .await
            .expect("retry"),
        1
    );
    assert!(
        claim_all(&store, LONG_LEASE).await.is_empty(),
        "claimed before its retry time"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = claim_all(&store, LONG_LEASE).await;
    assert_eq!(ids(&b), vec![e.id()]);
    assert_eq!(b.events[0].attempts, 1);
    assert_eq!(
        b.events[0].last_error.as_deref(),
        Some("unavailable: broker down")
    );
}

/// A dead letter is never claimed again, and does not hold back its key.
pub async fn dead_letter_is_terminal<H: StoreHarness>(h: &H) {
    let first = event("dead", 0, "t.dead");
    let second = event("dead", 1, "t.dead");
    h.commit(vec![first.clone()]).await.expect("commit");
    let store = h.store();
    let a = claim_all(&store, LONG_LEASE).await;
    let dead = DeadLetter {
        id: first.id(),
        error: "rejected: too large".to_owned(),
    };
    assert_eq!(store.dead_letter(&a.lease, &[dead]).await.expect("dead"), 1);
    h.commit(vec![second.clone()]).await.expect("commit");
    let b = claim_all(&store, LONG_LEASE).await;
    assert_eq!(
        ids(&b),
        vec![second.id()],
        "the dead letter was claimed, or blocked its key"
    );
}

/// Events of a key come out in order; a key waiting for a retry blocks only itself.
pub async fn per_key_order<H: StoreHarness>(h: &H) {
    let k1: Vec<Envelope> = (0..3).map(|i| event("k1", i, "t.order")).collect();
    let k2 = event("k2", 0, "t.order");
    let mut batch = k1.clone();
    batch.insert(1, k2.clone());
    h.commit(batch).await.expect("commit");
    let store = h.store();
    let a = claim_all(&store, LONG_LEASE).await;
    let got = ids(&a);
    let k1_pos: Vec<usize> = k1
        .iter()
        .filter_map(|e| got.iter().position(|g| *g == e.id()))
        .collect();
    assert!(
        k1_pos.windows(2).all(|w| w[0] < w[1]),
        "a key's events out of order: {k1_pos:?}"
    );
    assert!(got.contains(&k2.id()));
    assert!(
        got.contains(&k1[0].id()),
        "the head of k1 must be claimable"
    );

    // k1's head fails and waits; the rest of k1 is released; k2 is published.
    let retry = Retry {
        id: k1[0].id(),
        delay: Duration::from_secs(30),
        error: "timeout".to_owned(),
    };
    assert_eq!(
        store
            .schedule_retry(&a.lease, &[retry])
            .await
            .expect("retry"),
        1
    );
    let rest: Vec<EventId> = got
        .iter()
        .copied()
        .filter(|id| *id != k1[0].id() && *id != k2.id())
        .collect();
    assert_eq!(
        store.release(&a.lease, &rest).await.expect("release"),
        rest.len() as u64
    );
    assert_eq!(
        store
            .mark_published(&a.lease, &[k2.id()])
            .await
            .expect("mark"),
        1
    );

    let k3 = event("k3", 0, "t.order");
    h.commit(vec![k3.clone()]).await.expect("commit");
    let b = claim_all(&store, LONG_LEASE).await;
    assert_eq!(
        ids(&b),
        vec![k3.id()],
        "k1 must stay blocked behind its failed head; other keys flow"
    );
}

/// An event is not claimable before its `available_at`, and holds back later events of its key.
pub async fn delayed_delivery<H: StoreHarness>(h: &H) {
    let base = event("delay", 0, "t.delay");
    let delayed = Envelope::builder("order", "delay", "order.reminder", "t.delay")
        .with_created_at(base.created_at())
        .with_delay(Duration::from_millis(1200))
        .build()
        .expect("valid");
    let after_it = event("delay", 1, "t.delay");
    h.commit(vec![delayed.clone(), after_it.clone()])
        .await
        .expect("commit");
    let store = h.store();
    assert!(
        claim_all(&store, LONG_LEASE).await.is_empty(),
        "claimed before available_at"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let a = claim_all(&store, LONG_LEASE).await;
    let got = ids(&a);
    // A store may hand out a key's head alone or its run; the head must come first.
    assert_eq!(
        got.first(),
        Some(&delayed.id()),
        "the delayed head comes first once due"
    );
    if got.len() == 1 {
        assert_eq!(
            store
                .mark_published(&a.lease, &[delayed.id()])
                .await
                .expect("mark"),
            1
        );
        let b = claim_all(&store, LONG_LEASE).await;
        assert_eq!(ids(&b), vec![after_it.id()]);
    } else {
        assert_eq!(got, vec![delayed.id(), after_it.id()]);
    }
}

/// A released row is claimable at once, with no attempt counted.
pub async fn release_counts_no_attempt<H: StoreHarness>(h: &H) {
    let e = event("release", 0, "t.release");
    h.commit(vec![e.clone()]).await.expect("commit");
    let store = h.store();
    let a = claim_all(&store, LONG_LEASE).await;
    assert_eq!(
        store.release(&a.lease, &[e.id()]).await.expect("release"),
        1
    );
    let b = claim_all(&store, LONG_LEASE).await;
    assert_eq!(ids(&b), vec![e.id()]);
    assert_eq!(b.events[0].attempts, 0);
}

/// One key's backlog comes out as a run: several events of the key in one claim, in `seq`
/// order, ending before the first event that is not due; another key's head comes too.
pub async fn claim_takes_runs<H: StoreHarness>(h: &H) {
    let hot: Vec<Envelope> = (0..5).map(|i| event("hot", i, "t.run")).collect();
    let later = Envelope::builder("order", "hot", "order.reminder", "t.run")
        .with_created_at(hot[0].created_at())
        .with_delay(Duration::from_secs(60))
        .build()
        .expect("valid");
    let after_later = event("hot", 9, "t.run");
    let cold = event("cold", 0, "t.run");
    let mut batch = hot.clone();
    batch.push(later.clone());
    batch.push(after_later.clone());
    batch.insert(2, cold.clone());
    h.commit(batch).await.expect("commit");
    let store = h.store();
    let a = claim_all(&store, LONG_LEASE).await;
    let got = ids(&a);
    let hot_got: Vec<EventId> = a
        .events
        .iter()
        .filter(|e| e.envelope.ordering_key() == "hot")
        .map(|e| e.envelope.id())
        .collect();
    assert_eq!(
        hot_got,
        hot.iter().map(Envelope::id).collect::<Vec<_>>(),
        "the hot key's run, in seq order, stopping before its delayed event"
    );
    assert!(got.contains(&cold.id()), "the other key's head comes too");
    assert!(
        !got.contains(&later.id()) && !got.contains(&after_later.id()),
        "nothing from the delayed event on"
    );
    // With a small limit, the run is cut at the limit and continues in the next claim.
    let published: Vec<EventId> = got.clone();
    assert_eq!(
        store
            .mark_published(&a.lease, &published)
            .await
            .expect("mark") as usize,
        published.len()
    );
    let more: Vec<Envelope> = (10..16).map(|i| event("hot2", i, "t.run")).collect();
    h.commit(more.clone()).await.expect("commit");
    let b = store.claim(4, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&b),
        more[..4].iter().map(Envelope::id).collect::<Vec<_>>()
    );
    assert!(
        store.claim(4, LONG_LEASE).await.expect("claim").is_empty(),
        "the rest of hot2 waits for its claimed run"
    );
    store
        .mark_published(&b.lease, &ids(&b))
        .await
        .expect("mark");
    let c = store.claim(4, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&c),
        more[4..].iter().map(Envelope::id).collect::<Vec<_>>()
    );
}

/// Forty keys are held by a claim in flight; a key that sorts among them and is committed
/// afterwards is claimed within a few small claims: a claim that visits only held keys
/// leaves the next one to start after them.
pub async fn held_keys_do_not_hide_others<H: StoreHarness>(h: &H) {
    let held: Vec<Envelope> = (0..40)
        .flat_map(|k| (0..2).map(move |i| event(&format!("k{k:02}"), i, "t.held")))
        .collect();
    h.commit(held.clone()).await.expect("commit");
    let store = h.store();
    let a = claim_all(&store, LONG_LEASE).await;
    assert_eq!(a.len(), held.len(), "every run is claimed");
    let late = event("k20x", 0, "t.held");
    h.commit(vec![late.clone()]).await.expect("commit");
    let mut found = None;
    for attempt in 0..4 {
        let c = store.claim(2, LONG_LEASE).await.expect("claim");
        if !c.is_empty() {
            found = Some((attempt, ids(&c)));
            break;
        }
    }
    let (attempt, got) = found.expect("the late key is claimed within four claims");
    assert_eq!(got, vec![late.id()], "only the free key (claim {attempt})");
}

/// A row that no longer decodes is dead-lettered by its id; listing shows it as an
/// undecodable record beside a valid dead letter, and both are requeued and purged by id.
pub async fn undecodable_dead_letters<H>(h: &H)
where
    H: StoreHarness,
    H::Store: DeadLetterAdmin + StoreStats,
{
    let good = event("good", 0, "t.undecodable");
    let bad = event("bad", 0, "t.undecodable");
    h.commit(vec![good.clone(), bad.clone()])
        .await
        .expect("commit");
    if !h.corrupt_headers(bad.id()).await.expect("corrupt") {
        return;
    }
    let store = h.store();
    let claim = claim_all(&store, LONG_LEASE).await;
    assert_eq!(ids(&claim), vec![good.id()]);
    assert_eq!(
        claim.undecodable.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![bad.id()],
        "the corrupted row is claimed as undecodable"
    );
    let dead: Vec<DeadLetter> = [good.id(), bad.id()]
        .into_iter()
        .map(|id| DeadLetter {
            id,
            error: "rejected".to_owned(),
        })
        .collect();
    assert_eq!(
        store.dead_letter(&claim.lease, &dead).await.expect("dead"),
        2
    );
    let listed = store
        .list_dead(&DeadLetterFilter::default(), 10)
        .await
        .expect("listing survives an undecodable row");
    assert_eq!(listed.len(), 2);
    let rb = listed
        .iter()
        .find(|r| r.id == bad.id())
        .expect("bad listed");
    match &rb.event {
        crate::store::DeadEvent::Undecodable(u) => {
            assert!(u.error.contains("header"), "{}", u.error);
            assert_eq!(u.ordering_key, "bad");
            assert_eq!(u.event_type, bad.event_type());
        }
        crate::store::DeadEvent::Event(_) => panic!("the corrupted row decoded"),
    }
    let rg = listed
        .iter()
        .find(|r| r.id == good.id())
        .expect("good listed");
    assert_eq!(rg.envelope(), Some(&good));
    assert!(rg.seq < rb.seq, "seq is reported");

    let by_id = |id: EventId| DeadLetterFilter {
        ids: Some(vec![id]),
        ..DeadLetterFilter::default()
    };
    assert_eq!(
        store
            .requeue_dead(&by_id(good.id()))
            .await
            .expect("requeue"),
        1
    );
    assert_eq!(store.purge_dead(&by_id(bad.id())).await.expect("purge"), 1);
    let again = claim_all(&store, LONG_LEASE).await;
    assert_eq!(ids(&again), vec![good.id()]);
    assert!(again.undecodable.is_empty());
    assert_eq!(store.stats().await.expect("stats").dead, 0);
}

/// Runs the operations checks (backlog figures, dead-letter administration, retention) for
/// stores that implement those traits, each on a fresh harness from `make`.
pub async fn run_operations_suite<H, F, Fut>(make: F)
where
    H: StoreHarness,
    H::Store: Retention + DeadLetterAdmin + StoreStats,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    const S: &str = "store operations";
    step(S, "backlog figures follow the rows", async {
        backlog_figures(&make().await).await
    })
    .await;
    step(S, "dead letters: list, filter, requeue, purge", async {
        dead_letter_admin(&make().await).await
    })
    .await;
    step(
        S,
        "an undecodable dead letter is listed as one, requeued and purged by id",
        async { undecodable_dead_letters(&make().await).await },
    )
    .await;
    step(
        S,
        "retention purges published rows only, in bounded batches",
        async { retention_purge(&make().await).await },
    )
    .await;
}

/// Pending, in-flight and dead counts, and the oldest unpublished row.
pub async fn backlog_figures<H>(h: &H)
where
    H: StoreHarness,
    H::Store: StoreStats,
{
    let store = h.store();
    let empty = store.stats().await.expect("stats");
    assert_eq!((empty.pending, empty.in_flight, empty.dead), (0, 0, 0));
    assert_eq!(empty.oldest_unpublished, None);
    assert_eq!(empty.published_last_minute, 0);
    let a0 = event("a", 0, "t.stats");
    let a1 = event("a", 1, "t.stats");
    let b0 = event("b", 0, "t.stats");
    h.commit(vec![a0.clone(), a1.clone(), b0.clone()])
        .await
        .expect("commit");
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.in_flight, s.dead), (3, 0, 0), "{s:?}");
    assert_eq!(s.oldest_unpublished, Some(a0.created_at()), "{s:?}");
    // Head-only stores claim a0 and b0; stores that claim runs may take a1 too.
    let claim = claim_all(&store, LONG_LEASE).await;
    let got = ids(&claim);
    assert!(
        got.contains(&a0.id()) && got.contains(&b0.id()),
        "the heads"
    );
    let n = got.len() as u64;
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.in_flight, s.dead), (3 - n, n, 0), "{s:?}");
    let dead = DeadLetter {
        id: b0.id(),
        error: "rejected".to_owned(),
    };
    assert_eq!(
        store
            .dead_letter(&claim.lease, &[dead])
            .await
            .expect("dead"),
        1
    );
    assert_eq!(
        store
            .mark_published(&claim.lease, &[a0.id()])
            .await
            .expect("mark"),
        1
    );
    if got.contains(&a1.id()) {
        store
            .release(&claim.lease, &[a1.id()])
            .await
            .expect("release");
    }
    let s = store.stats().await.expect("stats");
    assert_eq!((s.pending, s.in_flight, s.dead), (1, 0, 1), "{s:?}");
    assert_eq!(s.published_last_minute, 1, "a0 was just published: {s:?}");
    assert_eq!(s.oldest_unpublished, Some(a1.created_at()), "{s:?}");
}

/// Dead letters are listed with their failure, filtered, requeued (attempts reset) and purged.
pub async fn dead_letter_admin<H>(h: &H)
where
    H: StoreHarness,
    H::Store: DeadLetterAdmin + StoreStats,
{
    let store = h.store();
    let x = event("x", 0, "t.admin");
    let y = event("y", 0, "t.admin");
    h.commit(vec![x.clone(), y.clone()]).await.expect("commit");
    let claim = claim_all(&store, LONG_LEASE).await;
    let dead: Vec<DeadLetter> = [&x, &y]
        .iter()
        .map(|e| DeadLetter {
            id: e.id(),
            error: format!("rejected {}", e.ordering_key()),
        })
        .collect();
    assert_eq!(
        store.dead_letter(&claim.lease, &dead).await.expect("dead"),
        2
    );

    let all = store
        .list_dead(&DeadLetterFilter::default(), 10)
        .await
        .expect("list");
    assert_eq!(all.len(), 2);
    let rx = all.iter().find(|r| r.id == x.id()).expect("x listed");
    assert_eq!(
        rx.envelope(),
        Some(&x),
        "the listed envelope is the written one"
    );
    assert_eq!(rx.attempts, 1);
    assert_eq!(rx.last_error.as_deref(), Some("rejected x"));
    assert!(rx.dead_at.is_some(), "dead_at is recorded");
    let limited = store
        .list_dead(&DeadLetterFilter::default(), 1)
        .await
        .expect("list");
    assert_eq!(limited.len(), 1, "the limit holds");

    let by_key = DeadLetterFilter {
        ordering_key: Some("y".to_owned()),
        ..DeadLetterFilter::default()
    };
    let only_y = store.list_dead(&by_key, 10).await.expect("list");
    assert_eq!(
        only_y.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![y.id()]
    );
    let other_type = DeadLetterFilter {
        event_type: Some("no.such.type".to_owned()),
        ..DeadLetterFilter::default()
    };
    assert!(
        store
            .list_dead(&other_type, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let later = DeadLetterFilter {
        dead_since: Some(Utc::now() + chrono::Duration::hours(1)),
        ..DeadLetterFilter::default()
    };
    assert!(store.list_dead(&later, 10).await.expect("list").is_empty());
    let no_ids = DeadLetterFilter {
        ids: Some(Vec::new()),
        ..DeadLetterFilter::default()
    };
    assert!(store.list_dead(&no_ids, 10).await.expect("list").is_empty());

    // Requeue x only: it is claimable again with attempts reset; y stays dead.
    let just_x = DeadLetterFilter {
        ids: Some(vec![x.id()]),
        ..DeadLetterFilter::default()
    };
    assert_eq!(store.requeue_dead(&just_x).await.expect("requeue"), 1);
    let again = claim_all(&store, LONG_LEASE).await;
    assert_eq!(ids(&again), vec![x.id()]);
    assert_eq!(again.events[0].attempts, 0, "requeue resets attempts");
    assert_eq!(store.stats().await.expect("stats").dead, 1);

    assert_eq!(
        store
            .purge_dead(&DeadLetterFilter::default())
            .await
            .expect("purge"),
        1
    );
    assert!(
        store
            .list_dead(&DeadLetterFilter::default(), 10)
            .await
            .expect("list")
            .is_empty()
    );
}

/// Only published rows older than the cut-off go, at most `limit` per call.
pub async fn retention_purge<H>(h: &H)
where
    H: StoreHarness,
    H::Store: Retention + StoreStats,
{
    let store = h.store();
    let done: Vec<Envelope> = (0..3)
        .map(|i| event(&format!("p{i}"), 0, "t.retention"))
        .collect();
    h.commit(done.clone()).await.expect("commit");
    let claim = claim_all(&store, LONG_LEASE).await;
    let published: Vec<EventId> = done.iter().map(Envelope::id).collect();
    assert_eq!(
        store
            .mark_published(&claim.lease, &published)
            .await
            .expect("mark"),
        3
    );
    let waiting = event("w", 0, "t.retention");
    h.commit(vec![waiting.clone()]).await.expect("commit");

    let long_ago = Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        store.purge_published(long_ago, 10).await.expect("purge"),
        0,
        "rows published after the cut-off stay"
    );
    let soon = Utc::now() + chrono::Duration::minutes(5);
    assert_eq!(store.purge_published(soon, 2).await.expect("purge"), 2);
    assert_eq!(store.purge_published(soon, 10).await.expect("purge"), 1);
    assert_eq!(store.purge_published(soon, 10).await.expect("purge"), 0);
    let left = claim_all(&store, LONG_LEASE).await;
    assert_eq!(ids(&left), vec![waiting.id()], "unpublished rows are kept");
}
