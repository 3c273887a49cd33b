//! The inbox conformance suite: every ORM crate runs it against every real database.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::EventId;
use crate::error::Result;
use crate::inbox::InboxOutcome;

/// One database and inbox helper under test. Each harness owns an isolated inbox table and
/// an effects table.
pub trait InboxHarness: Send + Sync + 'static {
    /// In one transaction: record `id` for `consumer`; if new, insert one effect row for
    /// `id`; wait `hold`; then commit (or roll back when `commit` is false). Returns the
    /// inbox outcome.
    fn process(
        &self,
        consumer: &str,
        id: EventId,
        hold: Duration,
        commit: bool,
    ) -> impl Future<Output = Result<InboxOutcome>> + Send;

    /// Committed effect rows for `id`.
    fn effects(&self, id: EventId) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes inbox records older than `older_than`; returns how many.
    fn purge(&self, older_than: Duration) -> impl Future<Output = Result<u64>> + Send;
}

/// Runs every check on a fresh harness from `make`.
pub async fn run_inbox_suite<H, F, Fut>(make: F)
where
    H: InboxHarness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    redelivery_applies_once(&make().await).await;
    concurrent_duplicates_apply_once(Arc::new(make().await)).await;
    rollback_leaves_no_record(&make().await).await;
    consumers_are_independent(&make().await).await;
    retention_purges_old_records(&make().await).await;
}

/// Every event delivered twice: the first is new, the second a duplicate, one effect each.
pub async fn redelivery_applies_once<H: InboxHarness>(h: &H) {
    let ids: Vec<EventId> = (0..20).map(|_| EventId::new()).collect();
    for round in 0..2 {
        for id in &ids {
            let outcome = h
                .process("billing", *id, Duration::ZERO, true)
                .await
                .expect("process");
            let want = if round == 0 {
                InboxOutcome::New
            } else {
                InboxOutcome::Duplicate
            };
            assert_eq!(outcome, want, "delivery {round} of {id}");
        }
    }
    for id in &ids {
        assert_eq!(
            h.effects(*id).await.expect("effects"),
            1,
            "effect of {id} applied once"
        );
    }
}

/// Two deliveries of one event processed at the same time: exactly one applies.
pub async fn concurrent_duplicates_apply_once<H: InboxHarness>(h: Arc<H>) {
    for _ in 0..5 {
        let id = EventId::new();
        let a = {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                h.process("billing", id, Duration::from_millis(150), true)
                    .await
            })
        };
        let b = {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                h.process("billing", id, Duration::from_millis(150), true)
                    .await
            })
        };
        let ra = a.await.expect("task").expect("process a");
        let rb = b.await.expect("task").expect("process b");
        let news = [ra, rb].iter().filter(|o| o.is_new()).count();
        assert_eq!(
            news, 1,
            "one of two concurrent deliveries is new ({ra:?}, {rb:?})"
        );
        assert_eq!(h.effects(id).await.expect("effects"), 1);
    }
}

/// A delivery whose transaction rolls back leaves no record: the next one is new.
pub async fn rollback_leaves_no_record<H: InboxHarness>(h: &H) {
    let id = EventId::new();
    let first = h
        .process("billing", id, Duration::ZERO, false)
        .await
        .expect("process");
    assert_eq!(first, InboxOutcome::New);
    assert_eq!(h.effects(id).await.expect("effects"), 0, "rolled back");
    let again = h
        .process("billing", id, Duration::ZERO, true)
        .await
        .expect("process");
    assert_eq!(
        again,
        InboxOutcome::New,
        "the rolled-back delivery left no record"
    );
    assert_eq!(h.effects(id).await.expect("effects"), 1);
}

/// The same event is new for each consumer.
pub async fn consumers_are_independent<H: InboxHarness>(h: &H) {
    let id = EventId::new();
    assert!(
        h.process("billing", id, Duration::ZERO, true)
            .await
            .expect("a")
            .is_new()
    );
    assert!(
        h.process("shipping", id, Duration::ZERO, true)
            .await
            .expect("b")
            .is_new()
    );
    assert!(
        !h.process("shipping", id, Duration::ZERO, true)
            .await
            .expect("c")
            .is_new()
    );
}

/// Retention deletes only records older than the cut-off.
pub async fn retention_purges_old_records<H: InboxHarness>(h: &H) {
    for _ in 0..7 {
        let _ = h
            .process("billing", EventId::new(), Duration::ZERO, true)
            .await
            .expect("process");
    }
    assert_eq!(
        h.purge(Duration::from_secs(3600)).await.expect("purge"),
        0,
        "nothing is an hour old"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(h.purge(Duration::from_millis(10)).await.expect("purge"), 7);
}
