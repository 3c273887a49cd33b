//! Relay behaviour against the in-memory store and publisher, on a paused tokio clock.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    CountingMetrics, DeadLetterAdmin, DeadLetterFilter, Envelope, ErrorKind, EventId,
    InMemoryPublisher, InMemoryStore, Relay, RelayConfig, RetryPolicy, RowStatus, Store,
};

fn ev(key: &str, n: u32) -> Envelope {
    outbox_core::testkit::order_event("orders", key, n as usize)
}

fn ids(events: &[Envelope]) -> Vec<EventId> {
    events.iter().map(Envelope::id).collect()
}

/// The ids of `events` the publisher delivered, in delivery order (repeats included).
fn delivered_of(publisher: &InMemoryPublisher, events: &[Envelope]) -> Vec<EventId> {
    let wanted = ids(events);
    publisher
        .delivered_ids()
        .into_iter()
        .filter(|id| wanted.contains(id))
        .collect()
}

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 10,
        concurrency: 2,
        lease: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(10),
        max_poll_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(3),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            max_attempts: 4,
        },
    }
}

#[tokio::test(start_paused = true)]
async fn publishes_committed_events_only_and_marks_them() {
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new();
    let committed: Vec<Envelope> = (0..25).map(|i| ev(&format!("k{}", i % 5), i)).collect();
    store.enqueue_committed(committed.clone()).expect("commit");
    let mut tx = store.begin();
    tx.enqueue(ev("ghost", 0));
    tx.rollback();

    let relay = Relay::new(store.clone(), publisher.clone(), config()).expect("relay");
    let report = relay.drain().await.expect("drain");
    assert_eq!(report.published, 25);
    let delivered = publisher.delivered_ids();
    let mut expected: Vec<EventId> = committed.iter().map(Envelope::id).collect();
    let mut sorted = delivered.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "exactly the committed events, once each");
    assert!(store.rows().iter().all(|(_, s)| *s == RowStatus::Published));
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_back_off_then_succeed() {
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new();
    let e = ev("a", 0);
    publisher.fail_event(e.id(), 2, ErrorKind::Unavailable);
    store.enqueue_committed([e.clone()]).expect("commit");
    let relay = Relay::new(store.clone(), publisher.clone(), config()).expect("relay");

    assert_eq!(relay.run_once().await.expect("run").retried, 1);
    assert_eq!(
        relay.run_once().await.expect("run").claimed,
        0,
        "claimed before its backoff"
    );
    tokio::time::advance(Duration::from_millis(110)).await;
    assert_eq!(relay.run_once().await.expect("run").retried, 1);
    // Second backoff is 200 ms.
    tokio::time::advance(Duration::from_millis(150)).await;
    assert_eq!(relay.run_once().await.expect("run").claimed, 0);
    tokio::time::advance(Duration::from_millis(60)).await;
    assert_eq!(relay.run_once().await.expect("run").published, 1);
    let row = store.row(e.id()).expect("row");
    assert_eq!(row.status, RowStatus::Published);
    assert_eq!(row.attempts, 2);
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|m| m.contains("unavailable")),
        "{row:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_and_exhausted_attempts_are_dead_lettered() {
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new();
    let too_big = ev("a", 0);
    let flaky = ev("b", 0);
    let fine = ev("c", 0);
    publisher.fail_event(too_big.id(), 1, ErrorKind::TooLarge);
    publisher.fail_event(flaky.id(), 100, ErrorKind::Timeout);
    store
        .enqueue_committed([too_big.clone(), flaky.clone(), fine.clone()])
        .expect("commit");
    let relay = Relay::new(store.clone(), publisher.clone(), config()).expect("relay");
    for _ in 0..10 {
        relay.drain().await.expect("drain");
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(
        store.row(too_big.id()).expect("row").status,
        RowStatus::Dead
    );
    assert_eq!(store.row(too_big.id()).expect("row").attempts, 1);
    let flaky_row = store.row(flaky.id()).expect("row");
    assert_eq!(flaky_row.status, RowStatus::Dead);
    assert_eq!(flaky_row.attempts, 4, "max_attempts");
    assert_eq!(
        store.row(fine.id()).expect("row").status,
        RowStatus::Published
    );

    // Operators requeue; once the broker heals, the dead letters go out.
    let dead = store
        .list_dead(&DeadLetterFilter::default(), 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 2);
    publisher.heal();
    assert_eq!(
        store
            .requeue_dead(&DeadLetterFilter::default())
            .await
            .expect("requeue"),
        2
    );
    assert_eq!(relay.drain().await.expect("drain").published, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_blocks_only_itself() {
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new();
    let a: Vec<Envelope> = (0..3).map(|i| ev("a", i)).collect();
    let b: Vec<Envelope> = (0..3).map(|i| ev("b", i)).collect();
    publisher.fail_event(a[0].id(), 2, ErrorKind::Unavailable);
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(a[i].clone());
        all.push(b[i].clone());
    }
    store.enqueue_committed(all).expect("commit");
    let relay = Relay::new(store.clone(), publisher.clone(), config()).expect("relay");
    let first = relay.run_once().await.expect("run");
    assert_eq!(first.published, 3, "key b flows");
    assert_eq!(first.retried, 1);
    assert_eq!(first.released, 2, "a's later events wait for a's head");
    let delivered = publisher.delivered_ids();
    assert_eq!(delivered, ids(&b));
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        relay.drain().await.expect("drain");
    }
    assert_eq!(delivered_of(&publisher, &a), ids(&a));
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_lost_its_lease_cannot_mark() {
    let store = InMemoryStore::new();
    // Slower than the lease, but within the publish timeout.
    let slow = InMemoryPublisher::new().with_latency(Duration::from_millis(1500));
    let fast = InMemoryPublisher::new();
    let e = ev("a", 0);
    store.enqueue_committed([e.clone()]).expect("commit");
    let cfg = RelayConfig {
        lease: Duration::from_secs(1),
        publish_timeout: Duration::from_millis(900),
        ..config()
    };
    // The slow relay's publish is cut at the deadline of its lease: nothing marked.
    let slow_relay = Relay::new(store.clone(), slow.clone(), cfg.clone()).expect("relay");
    let r = slow_relay.run_once().await.expect("run");
    assert_eq!(r.published, 0);
    assert_eq!(r.retried, 1, "timeout is retryable");

    // Now a zombie: claims, stalls past its lease while another relay takes over.
    tokio::time::advance(Duration::from_secs(2)).await;
    let zombie_claim = store
        .claim(10, Duration::from_secs(1))
        .await
        .expect("claim");
    assert_eq!(zombie_claim.events.len(), 1);
    tokio::time::advance(Duration::from_millis(1100)).await;
    let fast_relay = Relay::new(store.clone(), fast.clone(), cfg).expect("relay");
    assert_eq!(fast_relay.run_once().await.expect("run").published, 1);
    assert_eq!(
        store
            .mark_published(&zombie_claim.lease, &[e.id()])
            .await
            .expect("mark"),
        0
    );
    assert_eq!(store.row(e.id()).expect("row").status, RowStatus::Published);
}

#[tokio::test(start_paused = true)]
async fn run_until_wakes_on_commit_and_shuts_down_gracefully() {
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new();
    let metrics = Arc::new(CountingMetrics::default());
    let cfg = RelayConfig {
        poll_interval: Duration::from_secs(10),
        max_poll_interval: Duration::from_secs(60),
        ..config()
    };
    let relay = Relay::new(store.clone(), publisher.clone(), cfg)
        .expect("relay")
        .with_metrics(metrics.clone())
        .with_wakeup(Arc::new(store.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(relay.run_until(async {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = ev("w", 0);
    let started = tokio::time::Instant::now();
    store.enqueue_committed([e.clone()]).expect("commit");
    while publisher.delivered_ids().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the wake-up should beat the 10 s poll"
    );
    let _ = tx.send(());
    let report = handle.await.expect("relay task");
    assert_eq!(report.published, 1);
    assert_eq!(metrics.snapshot().published, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_releases_unfinished_batches() {
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new().with_latency(Duration::from_secs(60));
    let cfg = RelayConfig {
        lease: Duration::from_secs(120),
        publish_timeout: Duration::from_secs(90),
        shutdown_timeout: Duration::from_millis(500),
        ..config()
    };
    let events: Vec<Envelope> = (0..5).map(|i| ev(&format!("k{i}"), i)).collect();
    store.enqueue_committed(events.clone()).expect("commit");
    let relay = Relay::new(store.clone(), publisher.clone(), cfg).expect("relay");
    let report = relay
        .run_until(tokio::time::sleep(Duration::from_millis(100)))
        .await;
    assert_eq!(report.released, 5, "{report:?}");
    assert!(
        store.rows().iter().all(|(_, s)| *s == RowStatus::Pending),
        "released rows are pending again at once, not waiting for the lease"
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_claim_behind_its_own_batch_waits_for_that_batch_not_the_back_off() {
    // One key, so while a batch of it is in flight the next claim comes back empty. The
    // relay must claim again when that batch finishes, not sleep out its idle back-off.
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new().with_latency(Duration::from_millis(50));
    let metrics = Arc::new(CountingMetrics::default());
    let cfg = RelayConfig {
        batch_size: 10,
        concurrency: 2,
        poll_interval: Duration::from_millis(100),
        max_poll_interval: Duration::from_secs(2),
        lease: Duration::from_secs(30),
        publish_timeout: Duration::from_secs(5),
        ..config()
    };
    store
        .enqueue_committed((0..30).map(|i| ev("hot", i)))
        .expect("commit");
    let relay = Relay::new(store.clone(), publisher.clone(), cfg)
        .expect("relay")
        .with_metrics(metrics.clone());
    let started = tokio::time::Instant::now();
    let watched = store.clone();
    let report = relay
        .run_until(async move {
            while !watched
                .rows()
                .iter()
                .all(|(_, s)| *s == RowStatus::Published)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    let took = started.elapsed();
    assert_eq!(report.published, 30, "{report:?}");
    // 30 events of one key are 30 sequential publishes of 50 ms: 1.5 s of work. With the
    // back-off (100, 200, 400, 800 ms ...) between batches it took 1.9 s.
    assert!(
        took < Duration::from_millis(1600),
        "three batches of 0.5 s took {took:?}"
    );
    let claims = metrics.snapshot().claims;
    assert!(claims <= 20, "no busy loop: {claims} claims");
    let mut delivered = publisher.delivered_ids();
    assert_eq!(delivered.len(), 30);
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 30, "each once");
}

#[tokio::test(start_paused = true)]
async fn ordered_runs_go_out_in_one_call_and_waves_in_one_call_per_event_of_a_key() {
    let events: Vec<Envelope> = (0..8)
        .map(|i| ev("hot", i))
        .chain((0..4).map(|i| ev(&format!("cold{i}"), i)))
        .collect();
    let hot: Vec<EventId> = events[..8].iter().map(Envelope::id).collect();
    for (ordered, calls) in [(true, 1), (false, 8)] {
        let store = InMemoryStore::new();
        let publisher = if ordered {
            InMemoryPublisher::new().with_ordered_runs(true)
        } else {
            InMemoryPublisher::new()
        };
        store.enqueue_committed(events.clone()).expect("commit");
        let cfg = RelayConfig {
            batch_size: 12,
            ..config()
        };
        let relay = Relay::new(store.clone(), publisher.clone(), cfg).expect("relay");
        let report = relay.run_once().await.expect("run");
        assert_eq!(report.published, 12, "ordered={ordered}: {report:?}");
        let deliveries = publisher.deliveries();
        let used: std::collections::BTreeSet<u64> = deliveries.iter().map(|d| d.call).collect();
        assert_eq!(used.len(), calls, "ordered={ordered}: publish calls");
        let hot_order: Vec<EventId> = deliveries
            .iter()
            .map(|d| d.envelope.id())
            .filter(|id| hot.contains(id))
            .collect();
        assert_eq!(hot_order, hot, "ordered={ordered}: the run's order");
    }
}

#[tokio::test(start_paused = true)]
async fn ordered_runs_release_what_follows_a_failed_event_of_its_key() {
    let store = InMemoryStore::new();
    let publisher = InMemoryPublisher::new().with_ordered_runs(true);
    let a: Vec<Envelope> = (0..4).map(|i| ev("a", i)).collect();
    let b: Vec<Envelope> = (0..2).map(|i| ev("b", i)).collect();
    publisher.fail_event(a[1].id(), 1, ErrorKind::Unavailable);
    store
        .enqueue_committed(a.iter().chain(&b).cloned())
        .expect("commit");
    let relay = Relay::new(store.clone(), publisher.clone(), config()).expect("relay");
    let first = relay.run_once().await.expect("run");
    assert_eq!(first.published, 3, "a0, b0, b1: {first:?}");
    assert_eq!(first.retried, 1, "a1");
    assert_eq!(
        first.released, 2,
        "a2 and a3 were refused after a1: {first:?}"
    );
    assert_eq!(first.out_of_order, 0);
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        relay.drain().await.expect("drain");
    }
    assert_eq!(delivered_of(&publisher, &a), ids(&a));
    assert!(store.rows().iter().all(|(_, s)| *s == RowStatus::Published));
}

#[tokio::test(start_paused = true)]
async fn an_event_acknowledged_after_its_keys_failed_event_is_kept_and_counted_out_of_order() {
    let store = InMemoryStore::new();
    // A broker that refuses a1 and stores a2 and a3 of the same link anyway.
    let publisher = InMemoryPublisher::new().with_ordered_runs(false);
    let metrics = Arc::new(CountingMetrics::default());
    let a: Vec<Envelope> = (0..4).map(|i| ev("a", i)).collect();
    publisher.fail_event(a[1].id(), 1, ErrorKind::Unavailable);
    store.enqueue_committed(a.clone()).expect("commit");
    let relay = Relay::new(store.clone(), publisher.clone(), config())
        .expect("relay")
        .with_metrics(metrics.clone());
    let first = relay.run_once().await.expect("run");
    assert_eq!(
        first.published, 3,
        "a0, and a2, a3, which the broker holds: {first:?}"
    );
    assert_eq!(first.retried, 1);
    assert_eq!(first.released, 0);
    assert_eq!(first.out_of_order, 2);
    assert_eq!(metrics.snapshot().out_of_order, 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    relay.drain().await.expect("drain");
    let nth = |xs: &[usize]| xs.iter().map(|&i| a[i].id()).collect::<Vec<_>>();
    assert_eq!(
        publisher.delivered_ids(),
        nth(&[0, 2, 3, 1]),
        "a2 and a3 are not published twice; a1 follows on its retry"
    );
    assert!(store.rows().iter().all(|(_, s)| *s == RowStatus::Published));
}
