//! The publisher conformance suite.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::envelope::{Envelope, EventId, Headers};
use crate::error::Result;
use crate::publisher::{PublishOutcome, Publisher};

use super::step;
use super::store_suite::event;

/// A message as a consumer of the real broker received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The event id, decoded from the broker's header or attribute.
    pub event_id: Option<EventId>,
    /// The broker's own dedupe id as delivered (`Nats-Msg-Id`, AMQP `message_id`, SQS
    /// `MessageDeduplicationId`, ...), where the broker exposes it to consumers.
    pub dedupe_id: Option<String>,
    /// The message key / group, where the broker has one.
    pub key: Option<String>,
    /// The body.
    pub payload: Bytes,
    /// The user headers (without the toolkit's own `outbox-*` headers).
    pub headers: Headers,
}

/// What a publisher adapter provides to run the suite against its real broker.
pub trait PublisherHarness: Send + Sync + 'static {
    /// The publisher under test.
    type Publisher: Publisher;

    /// The publisher.
    fn publisher(&self) -> &Self::Publisher;

    /// A destination created for this harness alone (topic, subject, queue, exchange).
    fn destination(&self) -> String;

    /// Waits up to `within` until at least `n` messages arrived at [`destination`]
    /// (fewer if time runs out), and returns everything received so far, in arrival order.
    ///
    /// [`destination`]: PublisherHarness::destination
    fn receive(
        &self,
        n: usize,
        within: Duration,
    ) -> impl Future<Output = Result<Vec<Received>>> + Send;

    /// Whether the broker drops a message whose dedupe id it has already stored.
    fn broker_dedupes(&self) -> bool;

    /// A destination that does not exist, if the broker can tell (then publishing to it
    /// must be a permanent error).
    fn missing_destination(&self) -> Option<String>;
}

/// Runs every publisher check, each on a fresh harness from `make`.
pub async fn run_publisher_suite<H, F, Fut>(make: F)
where
    H: PublisherHarness,
    F: Fn() -> Fut,
    Fut: Future<Output = H>,
{
    const S: &str = "publisher conformance";
    step(S, "batch published, one outcome per event", async {
        batch_outcomes(&make().await).await
    })
    .await;
    step(S, "per-key order across calls", async {
        per_key_order(&make().await).await
    })
    .await;
    let h = make().await;
    if h.publisher().ordered_runs() {
        step(S, "a key's run in one call arrives in order", async {
            run_in_one_call(&h).await
        })
        .await;
    } else {
        eprintln!("[{S}] the publisher takes one event per key and call: no run to check");
    }
    step(S, "event id passed on as the dedupe id", async {
        dedupe_id_passed(&make().await).await
    })
    .await;
    step(S, "missing destination is a permanent error", async {
        missing_destination(&make().await).await
    })
    .await;
}

const WAIT: Duration = Duration::from_secs(10);

fn assert_all_published(outcomes: &[PublishOutcome], n: usize) {
    assert_eq!(outcomes.len(), n, "one outcome per event");
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.is_published(), "event {i} was not published: {o:?}");
    }
}

/// Twenty events in one call: twenty outcomes, twenty messages with the right payload,
/// headers and event id.
pub async fn batch_outcomes<H: PublisherHarness>(h: &H) {
    let dest = h.destination();
    let events: Vec<Envelope> = (0..20)
        .map(|i| {
            let e = event(&format!("b{i}"), i, &dest);
            Envelope::builder(e.aggregate_type(), e.aggregate_id(), e.event_type(), &dest)
                .with_payload(e.payload().clone(), e.content_type())
                .with_header("x-index", i.to_string())
                .build()
                .expect("valid")
        })
        .collect();
    let outcomes = h.publisher().publish(&events).await;
    assert_all_published(&outcomes, events.len());
    let got = h.receive(events.len(), WAIT).await.expect("receive");
    assert_eq!(got.len(), events.len(), "every published event must arrive");
    let by_id: HashMap<EventId, &Received> = got
        .iter()
        .filter_map(|r| r.event_id.map(|id| (id, r)))
        .collect();
    for e in &events {
        let r = by_id
            .get(&e.id())
            .unwrap_or_else(|| panic!("event {} arrived without its event id", e.id()));
        assert_eq!(r.payload, *e.payload(), "payload of {}", e.id());
        assert_eq!(
            r.headers.get("x-index"),
            e.headers().get("x-index"),
            "header of {}",
            e.id()
        );
    }
}

/// One key's events published in successive calls (as the relay does) arrive in order.
pub async fn per_key_order<H: PublisherHarness>(h: &H) {
    let dest = h.destination();
    let mut expected = Vec::new();
    for round in 0..5 {
        let batch: Vec<Envelope> = vec![
            event("hot", round, &dest),
            event(&format!("cold{round}"), round, &dest),
        ];
        expected.push(batch[0].id());
        assert_all_published(&h.publisher().publish(&batch).await, 2);
    }
    let got = h.receive(10, WAIT).await.expect("receive");
    let hot: Vec<EventId> = got
        .iter()
        .filter_map(|r| r.event_id)
        .filter(|id| expected.contains(id))
        .collect();
    assert_eq!(hot, expected, "one key's events arrived out of order");
}

/// A publisher with [`Publisher::ordered_runs`] gets a key's run of 40 events, mixed with
/// 20 events of other keys, in one call: the run arrives in `seq` order. (The relay hands a
/// publisher without it no such call.)
pub async fn run_in_one_call<H: PublisherHarness>(h: &H) {
    let dest = h.destination();
    let mut batch = Vec::new();
    let mut run = Vec::new();
    for i in 0..40 {
        let e = event("run", i, &dest);
        run.push(e.id());
        batch.push(e);
        if i % 2 == 1 {
            batch.push(event(&format!("other{i}"), i, &dest));
        }
    }
    let outcomes = h.publisher().publish(&batch).await;
    assert_all_published(&outcomes, batch.len());
    let got = h.receive(batch.len(), WAIT).await.expect("receive");
    let arrived: Vec<EventId> = got
        .iter()
        .filter_map(|r| r.event_id)
        .filter(|id| run.contains(id))
        .collect();
    assert_eq!(
        arrived, run,
        "a run published in one call arrived out of order"
    );
}

/// Publishing one event twice: a deduplicating broker stores it once; any broker delivers
/// every copy with the same event id, and exposes it as the dedupe id where it can.
pub async fn dedupe_id_passed<H: PublisherHarness>(h: &H) {
    let dest = h.destination();
    let e = event("dup", 0, &dest);
    assert_all_published(&h.publisher().publish(std::slice::from_ref(&e)).await, 1);
    assert_all_published(&h.publisher().publish(std::slice::from_ref(&e)).await, 1);
    let marker = event("dup-marker", 1, &dest);
    assert_all_published(
        &h.publisher().publish(std::slice::from_ref(&marker)).await,
        1,
    );
    let got = h
        .receive(if h.broker_dedupes() { 2 } else { 3 }, WAIT)
        .await
        .expect("receive");
    // Give a wrongly kept duplicate time to show up.
    let got = if h.broker_dedupes() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        h.receive(got.len(), Duration::from_millis(100))
            .await
            .expect("receive")
    } else {
        got
    };
    let copies: Vec<&Received> = got.iter().filter(|r| r.event_id == Some(e.id())).collect();
    if h.broker_dedupes() {
        assert_eq!(copies.len(), 1, "the broker must drop the duplicate");
    } else {
        assert_eq!(copies.len(), 2, "both copies must arrive");
    }
    for c in copies {
        if let Some(d) = &c.dedupe_id {
            assert_eq!(d, &e.id().to_string(), "the dedupe id must be the event id");
        }
    }
    assert!(got.iter().any(|r| r.event_id == Some(marker.id())));
}

/// Publishing to a destination that does not exist fails, permanently.
pub async fn missing_destination<H: PublisherHarness>(h: &H) {
    let Some(dest) = h.missing_destination() else {
        eprintln!("(the broker cannot tell a missing destination; check not applicable)");
        return;
    };
    let e = event("missing", 0, &dest);
    let outcomes = h.publisher().publish(std::slice::from_ref(&e)).await;
    assert_eq!(outcomes.len(), 1);
    match &outcomes[0] {
        PublishOutcome::Failed(err) => assert!(
            !err.is_retryable(),
            "a missing destination must be permanent: {err}"
        ),
        PublishOutcome::Published => {
            panic!("publishing to missing destination {dest:?} reported success")
        }
    }
}

/// How many events [`relay_survives_connection_cut`] relays.
pub const CUT_EVENTS: usize = 2000;

/// How many times [`relay_survives_connection_cut`] cuts the connection.
const CUTS: usize = 4;

/// Runs a relay over [`CUT_EVENTS`] in-memory events (5 keys) with `publisher`, which must
/// reach its broker through `proxy`. Half are committed before the relay starts. The
/// connection is cut four times, each as soon as another 150 are published, so mid-flight:
/// the first time reconnects are refused for 1.5 s and the other half is committed during
/// the outage (so the relay must reconnect however fast it drained the first half), then
/// for 200 ms. Checks that the relay recovers: every row ends published (none dead), every
/// event arrives at `reader`'s destination, exactly once if the broker deduplicates, and
/// each key's first deliveries are in order. Returns how many messages arrived.
pub async fn relay_survives_connection_cut<P, H>(
    publisher: P,
    proxy: &super::TcpProxy,
    reader: &H,
) -> usize
where
    P: Publisher + 'static,
    H: PublisherHarness,
{
    use crate::memory::InMemoryStore;
    use crate::relay::{Relay, RelayConfig};
    use crate::retry::RetryPolicy;
    use crate::schema::RowStatus;
    use std::collections::HashSet;

    let dest = reader.destination();
    let events: Vec<Envelope> = (0..CUT_EVENTS)
        .map(|i| event(&format!("key-{}", i % 5), i, &dest))
        .collect();
    let (first, during_cut) = events.split_at(CUT_EVENTS / 2);
    let store = InMemoryStore::new();
    store.enqueue_committed(first.to_vec()).expect("enqueue");
    let config = RelayConfig {
        batch_size: 50,
        concurrency: 2,
        lease: Duration::from_secs(8),
        publish_timeout: Duration::from_secs(4),
        poll_interval: Duration::from_millis(20),
        max_poll_interval: Duration::from_millis(100),
        retry: RetryPolicy::backoff(Duration::from_millis(50), Duration::from_millis(500), 1000),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), publisher, config).expect("relay");
    let running = super::RunningRelay::spawn(relay);

    // Each cut comes as soon as the relay's own store (read at once, unlike the broker) shows
    // progress, so it lands in the middle of publishing, where a call's first messages can
    // be lost with the connection while its later ones are still with the client.
    let published = || {
        store
            .rows()
            .iter()
            .filter(|(_, s)| *s == RowStatus::Published)
            .count()
    };
    let before = proxy.connections();
    for cut in 1..=CUTS {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while published() < cut * 150 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay made no progress before cut {cut}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proxy.set_refusing(true);
        proxy.cut();
        if cut == 1 {
            store
                .enqueue_committed(during_cut.to_vec())
                .expect("enqueue during the outage");
            tokio::time::sleep(Duration::from_millis(1500)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        proxy.set_refusing(false);
    }

    super::wait_until_drained(&store, Duration::from_secs(60)).await;
    running.stop().await;

    assert!(
        proxy.connections() > before,
        "the publisher reconnected through the proxy"
    );
    assert!(
        store.rows().iter().all(|(_, s)| *s == RowStatus::Published),
        "every row published, none dead"
    );
    let got = reader
        .receive(events.len(), Duration::from_secs(5))
        .await
        .expect("receive");
    let ids: Vec<EventId> = got.iter().filter_map(|r| r.event_id).collect();
    let unique: HashSet<EventId> = ids.iter().copied().collect();
    let want: HashSet<EventId> = events.iter().map(Envelope::id).collect();
    assert_eq!(unique, want, "nothing lost");
    if reader.broker_dedupes() {
        assert_eq!(
            ids.len(),
            events.len(),
            "the broker dropped republished copies"
        );
    }
    let pos: HashMap<EventId, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id(), i))
        .collect();
    let mut last: HashMap<usize, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for id in &ids {
        if !seen.insert(*id) {
            continue;
        }
        let p = pos[id];
        if let Some(prev) = last.insert(p % 5, p) {
            assert!(prev < p, "key-{} out of order", p % 5);
        }
    }
    ids.len()
}
