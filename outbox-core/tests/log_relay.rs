//! The log relay over the in-memory event table: out-of-order commits, gaps, restarts,
//! crashes between publish and checkpoint, broker failures.

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::event_table::{InMemoryLog, OracleMode, derived_event_id};
use outbox_core::{
    Envelope, ErrorKind, EventId, InMemoryPublisher, LogRelay, LogRelayConfig, RetryPolicy,
};
use proptest::prelude::*;

fn event(account: &str, n: usize) -> Envelope {
    outbox_core::testkit::order_event("ledger", account, n)
}

fn config() -> LogRelayConfig {
    LogRelayConfig {
        batch_size: 10,
        gap_grace: Duration::ZERO,
        gap_timeout: Duration::from_secs(3600),
        retry: RetryPolicy::backoff(Duration::from_millis(1), Duration::from_millis(5), 3),
        ..LogRelayConfig::default()
    }
}

fn relay(
    log: &InMemoryLog,
    publisher: &InMemoryPublisher,
    owner: &str,
) -> LogRelay<InMemoryLog, InMemoryPublisher> {
    LogRelay::new(log.clone(), publisher.clone(), config())
        .expect("valid config")
        .with_owner(owner)
}

/// The `ledger` log in `mode`, and a publisher to relay it to.
fn ledger(mode: OracleMode) -> (InMemoryLog, InMemoryPublisher) {
    (InMemoryLog::new("ledger", mode), InMemoryPublisher::new())
}

fn counts(publisher: &InMemoryPublisher) -> HashMap<EventId, usize> {
    let mut m = HashMap::new();
    for id in publisher.delivered_ids() {
        *m.entry(id).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn a_row_committed_late_into_a_gap_is_published() {
    let (log, publisher) = ledger(OracleMode::Horizon);
    let r = relay(&log, &publisher, "a");

    let mut slow = log.begin();
    let late = event("acc-1", 1);
    let late_id = late.id();
    assert_eq!(slow.append(late), 1);
    for n in 0..5 {
        log.append_committed(event("acc-2", n));
    }
    let first = r.drain().await.expect("drain");
    assert_eq!(first.published, 5);
    assert_eq!(
        first.open_gaps, 1,
        "position 1 is awaited while its writer runs"
    );
    assert_eq!(log.checkpoint().expect("saved").high, 6);

    slow.commit();
    let second = r.drain().await.expect("drain");
    assert_eq!(second.published, 1);
    assert_eq!(second.open_gaps, 0);
    let c = counts(&publisher);
    assert_eq!(c.get(&late_id), Some(&1));
    assert!(c.values().all(|n| *n == 1) && c.len() == 6);
}

#[tokio::test]
async fn a_rolled_back_position_closes_once_its_writer_ended() {
    let (log, publisher) = ledger(OracleMode::Horizon);
    let r = relay(&log, &publisher, "a");
    let mut tx = log.begin();
    tx.append(event("acc-1", 0));
    log.append_committed(event("acc-1", 1));
    assert_eq!(r.drain().await.expect("drain").open_gaps, 1);
    tx.rollback();
    let after = r.run_once().await.expect("round");
    assert_eq!(after.open_gaps, 0);
    assert_eq!(
        after.abandoned_gaps, 0,
        "closed because the writer ended, not by timeout"
    );
}

#[tokio::test]
async fn without_an_oracle_gaps_close_only_by_timeout() {
    let (log, publisher) = ledger(OracleMode::Unknown);
    let cfg = LogRelayConfig {
        gap_timeout: Duration::from_millis(200),
        ..config()
    };
    let r = LogRelay::new(log.clone(), publisher.clone(), cfg).expect("config");
    let tx = log.begin();
    drop(tx);
    let mut tx = log.begin();
    tx.append(event("a", 0));
    tx.rollback();
    log.append_committed(event("a", 1));
    assert_eq!(r.drain().await.expect("drain").open_gaps, 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after = r.run_once().await.expect("round");
    assert_eq!((after.open_gaps, after.abandoned_gaps), (0, 1));
}

#[tokio::test]
async fn a_restarted_relay_continues_from_the_checkpoint() {
    let (log, publisher) = ledger(OracleMode::Horizon);
    for n in 0..25 {
        log.append_committed(event(&format!("acc-{}", n % 3), n));
    }
    let first = relay(&log, &publisher, "host-1");
    let r = first.run_once().await.expect("round");
    assert_eq!(r.published, 10);
    // Another relay cannot take the checkpoint while the lease runs.
    let other = relay(&log, &publisher, "host-2");
    assert!(other.run_once().await.expect("round").not_owner);
    drop(first);
    // The same owner name takes it back at once.
    let restarted = relay(&log, &publisher, "host-1");
    assert_eq!(restarted.drain().await.expect("drain").published, 15);
    let c = counts(&publisher);
    assert_eq!(c.len(), 25);
    assert!(c.values().all(|n| *n == 1), "no duplicates without a crash");
}

#[tokio::test]
async fn a_crash_between_publish_and_checkpoint_republishes_only_that_round() {
    let (log, publisher) = ledger(OracleMode::Horizon);
    for n in 0..20 {
        log.append_committed(event("acc", n));
    }
    let r = relay(&log, &publisher, "a");
    r.run_once().await.expect("round 1");
    log.fail_next_saves(1);
    let err = r.run_once().await.expect_err("save fails");
    assert_eq!(err.kind(), ErrorKind::Connection);
    r.drain().await.expect("drain");
    let c = counts(&publisher);
    assert_eq!(c.len(), 20);
    let twice: Vec<_> = c.values().filter(|n| **n == 2).collect();
    assert_eq!(
        twice.len(),
        10,
        "exactly the unsaved round is published again"
    );
    // Every copy carries the same event id, so the dedupe at the consumer works.
    assert!(c.values().all(|n| *n <= 2));
}

#[tokio::test]
async fn a_retryable_failure_holds_its_key_back_and_keeps_order() {
    let (log, publisher) = ledger(OracleMode::Horizon);
    let mut ids = Vec::new();
    for n in 0..4 {
        let e = event("acc-x", n);
        ids.push(e.id());
        log.append_committed(e);
        log.append_committed(event("acc-y", n));
    }
    publisher.fail_event(ids[1], 1, ErrorKind::Unavailable);
    let r = relay(&log, &publisher, "a");
    let first = r.run_once().await.expect("round");
    assert_eq!(first.published, 5, "acc-y's four and acc-x's first");
    assert_eq!(first.retried, 3, "the failed row and the two behind it");
    r.drain().await.expect("drain");
    let order: Vec<EventId> = publisher
        .delivered_ids()
        .into_iter()
        .filter(|id| ids.contains(id))
        .collect();
    assert_eq!(order, ids, "acc-x published once each, in order");
}

#[tokio::test]
async fn a_refused_row_is_skipped_listed_and_can_be_requeued() {
    let (log, publisher) = ledger(OracleMode::Horizon);
    let bad = event("acc", 0);
    let bad_id = bad.id();
    let p = log.append_committed(bad);
    log.append_committed(event("acc", 1));
    publisher.fail_event(bad_id, 1, ErrorKind::TooLarge);
    let r = relay(&log, &publisher, "a");
    let rep = r.drain().await.expect("drain");
    assert_eq!((rep.published, rep.dead), (1, 1));
    let mut cp = log.checkpoint().expect("saved");
    assert_eq!(cp.dead.len(), 1);
    assert_eq!(cp.dead[0].position, p);
    assert!(cp.dead[0].error.contains("too"), "{}", cp.dead[0].error);
    assert_eq!(cp.requeue_dead(&[p]), 1);
    assert_eq!(cp.retries.len(), 1);
}

#[test]
fn derived_ids_are_stable_per_source_and_position() {
    assert_eq!(derived_event_id("ledger", 7), derived_event_id("ledger", 7));
    assert_ne!(derived_event_id("ledger", 7), derived_event_id("ledger", 8));
    assert_ne!(derived_event_id("ledger", 7), derived_event_id("orders", 7));
}

#[test]
fn bad_settings_name_the_field() {
    let cfg = LogRelayConfig {
        gap_timeout: Duration::ZERO,
        gap_grace: Duration::from_secs(1),
        ..LogRelayConfig::default()
    };
    let err = cfg.validate().expect_err("invalid");
    assert!(err.message().contains("gap_timeout"), "{err}");
}

#[derive(Clone, Debug)]
enum Op {
    Begin,
    Append(usize),
    Commit(usize),
    Rollback(usize),
    Round,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Begin),
        4 => (0usize..4).prop_map(Op::Append),
        2 => (0usize..4).prop_map(Op::Commit),
        1 => (0usize..4).prop_map(Op::Rollback),
        2 => Just(Op::Round),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any interleaving of writers that commit out of order, roll back, and a relay that
    /// restarts: every committed row is published exactly once (no crash in this test).
    #[test]
    fn every_committed_row_is_published_once(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (log, publisher) = ledger(OracleMode::Horizon);
            let mut r = relay(&log, &publisher, "host");
            let mut open = Vec::new();
            let mut committed: Vec<EventId> = Vec::new();
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Begin => open.push((log.begin(), Vec::new())),
                    Op::Append(i) if !open.is_empty() => {
                        let k = i % open.len();
                        n += 1;
                        let e = event(&format!("acc-{}", n % 3), n);
                        open[k].1.push(e.id());
                        open[k].0.append(e);
                    }
                    Op::Commit(i) if !open.is_empty() => {
                        let (tx, ids) = open.remove(i % open.len());
                        tx.commit();
                        committed.extend(ids);
                    }
                    Op::Rollback(i) if !open.is_empty() => {
                        let (tx, _) = open.remove(i % open.len());
                        tx.rollback();
                    }
                    Op::Round => { r.run_once().await.expect("round"); }
                    Op::Restart => {
                        r = relay(&log, &publisher, "host");
                    }
                    _ => {}
                }
            }
            for (tx, ids) in open.drain(..) {
                tx.commit();
                committed.extend(ids);
            }
            r.drain().await.expect("drain");
            let c = counts(&publisher);
            prop_assert_eq!(c.len(), committed.len());
            for id in &committed {
                prop_assert_eq!(c.get(id).copied(), Some(1), "event {} published once", id);
            }
            let cp = log.checkpoint().unwrap_or_default();
            prop_assert!(cp.gaps.is_empty(), "gaps left: {:?}", cp.gaps);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_restart_fences_the_crashed_instance() {
    use outbox_core::event_table::LogSource;
    let log = InMemoryLog::new("ledger", OracleMode::Horizon);
    let lease = Duration::from_secs(60);
    let old = log
        .acquire("host#1", lease)
        .await
        .expect("acquire")
        .expect("free");
    // The restart (same name, new instance) takes over at once...
    assert!(
        log.acquire("host#2", lease)
            .await
            .expect("acquire")
            .is_some()
    );
    // ...a relay of another name waits for the lease...
    assert!(
        log.acquire("other#3", lease)
            .await
            .expect("acquire")
            .is_none()
    );
    // ...and a save still in flight from the crashed instance cannot land.
    let err = log.save("host#1", lease, &old).await.expect_err("fenced");
    assert_eq!(err.kind(), ErrorKind::LeaseLost);
    log.save("host#2", lease, &old)
        .await
        .expect("the new instance saves");
}
