//! Property tests of the relay against the in-memory parts: random publish failures
//! (retryable and permanent), relays crashing mid-batch and restarting, several relays at
//! once, transactions that roll back. Afterwards, whatever happened:
//!
//! - every committed event is published, or dead-lettered only for a permanent failure;
//! - nothing rolled back is ever published;
//! - per ordering key, events first reach the broker in commit order;
//! - every duplicate delivery carries the same event id and the same envelope.
//!
//! Each scenario runs with a publisher that takes one event of a key per call (waves) or a
//! key's whole run in one call (ordered runs, refusing what follows a failed event).
//!
//! Cases: 256 by default; `PROPTEST_CASES` overrides (the CI test script uses 512).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox_core::{
    Envelope, ErrorKind, EventId, InMemoryPublisher, InMemoryStore, Relay, RelayConfig,
    RetryPolicy, RowStatus,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Tx {
    keys: Vec<u8>,
    commit: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    txs: Vec<Tx>,
    relays: usize,
    crash_at_ms: Vec<Vec<u64>>,
    batch_size: usize,
    concurrency: usize,
    fail_rate: f64,
    permanent: Vec<bool>,
    latency_ms: u64,
    seed: u64,
    /// The publisher takes a key's run in one call (refusing what follows a failure).
    ordered_runs: bool,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let transactions = prop::collection::vec(
        (
            prop::collection::vec(0u8..5, 1..5),
            prop::bool::weighted(0.8),
        ),
        1..14,
    );
    // The relays: one to three, each crashing at up to three instants, and their batch
    // size and concurrency.
    let relays = (
        1usize..=3,
        prop::collection::vec(prop::collection::vec(0u64..4000, 0..4), 3),
        1usize..8,
        1usize..3,
    );
    // How the broker behaves.
    let broker = (
        0.0f64..0.5,
        prop::collection::vec(prop::bool::weighted(0.07), 60),
        0u64..40,
        any::<u64>(),
        any::<bool>(),
    );
    (transactions, relays, broker).prop_map(
        |(txs, (relays, crash_at_ms, batch_size, concurrency), broker)| {
            let (fail_rate, permanent, latency_ms, seed, ordered_runs) = broker;
            Scenario {
                txs: txs
                    .into_iter()
                    .map(|(keys, commit)| Tx { keys, commit })
                    .collect(),
                relays,
                crash_at_ms,
                batch_size,
                concurrency,
                fail_rate,
                permanent,
                latency_ms,
                seed,
                ordered_runs,
            }
        },
    )
}

fn config(s: &Scenario) -> RelayConfig {
    RelayConfig {
        batch_size: s.batch_size,
        concurrency: s.concurrency,
        lease: Duration::from_millis(800),
        publish_timeout: Duration::from_millis(300),
        poll_interval: Duration::from_millis(5),
        max_poll_interval: Duration::from_millis(100),
        shutdown_timeout: Duration::from_millis(200),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: 0.5,
            // Retryable failures never exhaust here, so only permanent ones may dead-letter.
            max_attempts: u32::MAX,
        },
    }
}

struct Outcome {
    committed: Vec<Envelope>,
    rolled_back: HashSet<EventId>,
    permanent: HashSet<EventId>,
    store: InMemoryStore,
    publisher: InMemoryPublisher,
}

async fn run(s: Scenario) -> Outcome {
    let store = InMemoryStore::new();
    let publisher = if s.ordered_runs {
        InMemoryPublisher::new().with_ordered_runs(true)
    } else {
        InMemoryPublisher::new()
    };
    let publisher = publisher
        .with_random_failures(s.fail_rate, ErrorKind::Unavailable, s.seed)
        .with_latency(Duration::from_millis(s.latency_ms));
    let cfg = config(&s);

    // Relays: each slot runs incarnations that crash (are aborted) at the given times.
    let mut slots = Vec::new();
    for slot in 0..s.relays {
        let mut crashes = s.crash_at_ms[slot].clone();
        crashes.sort_unstable();
        let (store, publisher, cfg) = (store.clone(), publisher.clone(), cfg.clone());
        slots.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for crash in crashes {
                let relay = Relay::new(store.clone(), publisher.clone(), cfg.clone())
                    .expect("valid config")
                    .with_name(format!("relay-{slot}"));
                let task = tokio::spawn(relay.run_until(std::future::pending()));
                tokio::time::sleep_until(start + Duration::from_millis(crash)).await;
                task.abort(); // a crash: no shutdown, leases left to expire
                let _ = task.await;
            }
            let relay =
                Relay::new(store.clone(), publisher.clone(), cfg.clone()).expect("valid config");
            relay
                .run_until(tokio::time::sleep_until(
                    start + Duration::from_millis(4500),
                ))
                .await;
        }));
    }

    // The application: transactions over time, some rolled back.
    let mut committed = Vec::new();
    let mut rolled_back = HashSet::new();
    let mut permanent = HashSet::new();
    let mut n = 0usize;
    for tx_spec in &s.txs {
        let mut tx = store.begin();
        let mut these = Vec::new();
        for key in &tx_spec.keys {
            let e = Envelope::builder("acct", format!("k{key}"), "acct.changed", "ledger")
                .json(&serde_json::json!({ "n": n }))
                .build()
                .expect("valid");
            if tx_spec.commit && s.permanent[n % s.permanent.len()] {
                publisher.fail_event(e.id(), u32::MAX, ErrorKind::Rejected);
                permanent.insert(e.id());
            }
            n += 1;
            these.push(e.clone());
            tx.enqueue(e);
        }
        if tx_spec.commit {
            tx.commit().expect("commit");
            committed.extend(these);
        } else {
            tx.rollback();
            rolled_back.extend(these.iter().map(Envelope::id));
        }
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    for slot in slots {
        slot.await.expect("relay slot");
    }

    // Recovery: the broker heals; one relay finishes whatever is left once leases expire.
    publisher.heal();
    for (id, _) in store.rows() {
        if permanent.contains(&id) {
            publisher.fail_event(id, u32::MAX, ErrorKind::Rejected);
        }
    }
    let relay = Relay::new(store.clone(), publisher.clone(), cfg).expect("valid config");
    for _ in 0..40 {
        relay.drain().await.expect("drain");
        if store
            .rows()
            .iter()
            .all(|(_, st)| matches!(st, RowStatus::Published | RowStatus::Dead))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Outcome {
        committed,
        rolled_back,
        permanent,
        store,
        publisher,
    }
}

fn check(o: &Outcome) -> Result<(), TestCaseError> {
    let rows: HashMap<EventId, RowStatus> = o.store.rows().into_iter().collect();
    let deliveries = o.publisher.deliveries();
    let delivered: HashSet<EventId> = deliveries.iter().map(|d| d.envelope.id()).collect();

    // Nothing lost; dead only for a permanent failure.
    for e in &o.committed {
        let status = rows.get(&e.id()).copied();
        if o.permanent.contains(&e.id()) {
            prop_assert_eq!(
                status,
                Some(RowStatus::Dead),
                "permanent failure {} not dead-lettered",
                e.id()
            );
        } else {
            prop_assert_eq!(
                status,
                Some(RowStatus::Published),
                "committed event {} not published",
                e.id()
            );
            prop_assert!(
                delivered.contains(&e.id()),
                "event {} marked published but never delivered",
                e.id()
            );
        }
    }
    // Nothing rolled back published.
    for id in &o.rolled_back {
        prop_assert!(
            !delivered.contains(id),
            "rolled-back event {} was published",
            id
        );
        prop_assert!(
            !rows.contains_key(id),
            "rolled-back event {} is in the table",
            id
        );
    }
    // Per-key order of first deliveries = commit order.
    let commit_pos: HashMap<EventId, usize> = o
        .committed
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id(), i))
        .collect();
    let mut first_seen = HashSet::new();
    let mut last_by_key: HashMap<String, usize> = HashMap::new();
    let mut originals: HashMap<EventId, &Envelope> = HashMap::new();
    for d in &deliveries {
        let id = d.envelope.id();
        // Duplicates carry the same id and the same envelope.
        if let Some(orig) = originals.get(&id) {
            prop_assert_eq!(*orig, &d.envelope, "a duplicate of {} differs", id);
            continue;
        }
        originals.insert(id, &d.envelope);
        first_seen.insert(id);
        let pos = commit_pos[&id];
        let key = d.envelope.ordering_key().to_owned();
        if let Some(prev) = last_by_key.get(&key) {
            prop_assert!(
                *prev < pos,
                "key {} delivered commit #{} after #{}",
                key,
                pos,
                prev
            );
        }
        last_by_key.insert(key, pos);
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn relay_keeps_its_guarantees_under_failures_crashes_and_concurrency(s in scenario()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let outcome = rt.block_on(run(s));
        check(&outcome)?;
    }
}
