//! The inbox conformance suite: every ORM crate runs it against every real database.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::EventId;
use crate::error::Result;
use crate::inbox::InboxOutcome;

/// One delivery the suite hands a harness: in one transaction, record `id` for
/// `consumer`; if it is new, insert one effect row for `id`; wait `hold` with the
/// transaction open; then commit, or roll back when `commit` is false.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// The consuming service's name (the inbox's key besides the event id).
    pub consumer: &'a str,
    /// The delivered event.
    pub id: EventId,
    /// How long the transaction stays open after recording (to overlap two deliveries).
    pub hold: Duration,
    /// Commit when true, roll back when false.
    pub commit: bool,
}

impl<'a> Delivery<'a> {
    /// A delivery to `consumer` that commits at once.
    pub fn to(consumer: &'a str, id: EventId) -> Delivery<'a> {
        Delivery {
            consumer,
            id,
            hold: Duration::ZERO,
            commit: true,
        }
    }
}

/// One database and inbox helper under test. Each harness owns an isolated inbox table and
/// an effects table, and removes them in [`InboxHarness::tear_down`].
pub trait InboxHarness: Send + Sync + 'static {
    /// Processes one [`Delivery`]; returns the inbox outcome.
    fn process(&self, delivery: Delivery<'_>) -> impl Future<Output = Result<InboxOutcome>> + Send;

    /// Committed effect rows for `id`.
    fn effects(&self, id: EventId) -> impl Future<Output = Result<u64>> + Send;

    /// Deletes inbox records older than `older_than`; returns how many.
    fn purge(&self, older_than: Duration) -> impl Future<Output = Result<u64>> + Send;

    /// Removes what the harness made (its tables, a database file); the suite calls it
    /// after each check that passed.
    fn tear_down(self) -> impl Future<Output = ()> + Send;
}

/// Runs every check on a fresh harness from `make`, tearing each down after its check.
pub async fn run_inbox_suite<H, F, Fut>(make: F)
where
    H: InboxHarness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    // Each check on a harness of its own, torn down once the check passed.
    macro_rules! on_fresh_harness {
        ($($check:ident),*) => {$(
            let h = make().await;
            $check(&h).await;
            h.tear_down().await;
        )*};
    }
    on_fresh_harness!(
        redelivery_applies_once,
        rollback_leaves_no_record,
        consumers_are_independent,
        retention_purges_old_records
    );
    let h = Arc::new(make().await);
    concurrent_duplicates_apply_once(Arc::clone(&h)).await;
    if let Ok(h) = Arc::try_unwrap(h) {
        h.tear_down().await;
    }
}

/// Every event delivered twice: the first is new, the second a duplicate, one effect each.
pub async fn redelivery_applies_once<H: InboxHarness>(h: &H) {
    let ids: Vec<EventId> = (0..20).map(|_| EventId::new()).collect();
    for round in 0..2 {
        for id in &ids {
            let outcome = h
                .process(Delivery::to("billing", *id))
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
        // A delivery that holds its transaction open long enough to overlap the other.
        let deliver = || {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                h.process(Delivery {
                    hold: Duration::from_millis(150),
                    ..Delivery::to("billing", id)
                })
                .await
            })
        };
        let (a, b) = (deliver(), deliver());
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
        .process(Delivery {
            commit: false,
            ..Delivery::to("billing", id)
        })
        .await
        .expect("process");
    assert_eq!(first, InboxOutcome::New);
    assert_eq!(h.effects(id).await.expect("effects"), 0, "rolled back");
    let again = h
        .process(Delivery::to("billing", id))
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
        h.process(Delivery::to("billing", id))
            .await
            .expect("a")
            .is_new()
    );
    assert!(
        h.process(Delivery::to("shipping", id))
            .await
            .expect("b")
            .is_new()
    );
    assert!(
        !h.process(Delivery::to("shipping", id))
            .await
            .expect("c")
            .is_new()
    );
}

/// Retention deletes only records older than the cut-off.
pub async fn retention_purges_old_records<H: InboxHarness>(h: &H) {
    for _ in 0..7 {
        let _ = h
            .process(Delivery::to("billing", EventId::new()))
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
