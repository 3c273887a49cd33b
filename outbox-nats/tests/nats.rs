//! outbox-nats against the machine's real nats-server with JetStream. Each test works on
//! streams of its own (memory storage), deleted at the end.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use outbox_core::testkit::{
    CUT_EVENTS, PublisherHarness, Received, TcpProxy, order_event, relay_survives_connection_cut,
    run_publisher_suite, unique_name,
};
use outbox_core::{PublishOutcome, Publisher, Result, transport};
use outbox_nats::{NatsConfig, NatsPublisher};

/// A stream capturing `{name}.>`, and a publisher.
struct Js {
    publisher: NatsPublisher,
    stream: stream::Stream,
    name: String,
}

async fn publisher(url: &str) -> NatsPublisher {
    let mut config = NatsConfig::new(url);
    config.ack_timeout = Duration::from_secs(3);
    NatsPublisher::connect(config)
        .await
        .expect("connect to NATS")
}

async fn make_stream(js: &jetstream::Context, name: &str) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::Memory,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create stream")
}

impl Js {
    async fn new(url: &str, prefix: &str) -> Js {
        let publisher = publisher(url).await;
        let name = unique_name(prefix);
        let stream = make_stream(&publisher.jetstream(), &name).await;
        Js {
            publisher,
            stream,
            name,
        }
    }
}

/// Every message in the stream, in stream order.
async fn read_stream(stream: &stream::Stream, n: usize, within: Duration) -> Result<Vec<Received>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut stream = stream.clone();
    let state = loop {
        let info = stream.info().await.map_err(|e| {
            outbox_core::Error::new(outbox_core::ErrorKind::Connection, "stream info")
                .with_source(e)
        })?;
        let state = info.state.clone();
        if state.messages as usize >= n || tokio::time::Instant::now() >= deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = stream.get_raw_message(seq).await.map_err(|e| {
            outbox_core::Error::new(outbox_core::ErrorKind::Connection, "get message")
                .with_source(e)
        })?;
        let pairs: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (AsRef::<str>::as_ref(k).to_owned(), v.as_str().to_owned()))
            })
            .collect();
        let refs = || pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        out.push(Received {
            event_id: transport::event_id(refs()),
            dedupe_id: m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()),
            key: None,
            payload: m.payload,
            headers: transport::user_headers(refs().filter(|(k, _)| !k.starts_with("Nats-"))),
        });
    }
    Ok(out)
}

impl PublisherHarness for Js {
    type Publisher = NatsPublisher;
    fn publisher(&self) -> &NatsPublisher {
        &self.publisher
    }
    fn destination(&self) -> String {
        format!("{}.events", self.name)
    }
    async fn receive(&self, n: usize, within: Duration) -> Result<Vec<Received>> {
        read_stream(&self.stream, n, within).await
    }
    fn broker_dedupes(&self) -> bool {
        true
    }
    fn missing_destination(&self) -> Option<String> {
        Some(format!("{}_nostream.events", self.name))
    }
}

/// Deletes the streams whose names start with `prefix`.
async fn delete_streams(url: &str, prefix: &str) {
    use futures::StreamExt as _;
    let p = publisher(url).await;
    let names: Vec<String> = p
        .jetstream()
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for n in names.iter().filter(|n| n.starts_with(prefix)) {
        p.jetstream().delete_stream(n).await.expect("delete stream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_jetstream() {
    let url = outbox_core::service_or_skip!("conformance_suite_on_jetstream", Nats);
    let prefix = unique_name("outbox_conf");
    run_publisher_suite(|| Js::new(&url, &prefix)).await;
    delete_streams(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_event_twice_is_stored_once() {
    let url = outbox_core::service_or_skip!("same_event_twice_is_stored_once", Nats);
    let js = Js::new(&url, "outbox_dup").await;
    let e = order_event(&js.destination(), "k", 1);
    for _ in 0..3 {
        let out = js.publisher.publish(std::slice::from_ref(&e)).await;
        assert!(out[0].is_published(), "{:?}", out[0]);
    }
    let got = js.receive(1, Duration::from_secs(5)).await.expect("read");
    assert_eq!(got.len(), 1, "JetStream kept one copy");
    assert_eq!(
        got[0].dedupe_id.as_deref(),
        Some(e.id().to_string().as_str())
    );
    js.publisher
        .jetstream()
        .delete_stream(&js.name)
        .await
        .expect("delete");
}

/// One call of 12 000 events (more than the JetStream context's 5 000 unacknowledged
/// publishes; a CDC relay hands its whole window at once): all stored, in order, within
/// the publish timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_larger_than_the_ack_limit_is_published_in_order() {
    let url = outbox_core::service_or_skip!("a_call_larger_than_the_ack_limit", Nats);
    let js = Js::new(&url, "outbox_big").await;
    let events: Vec<_> = (0..12_000)
        .map(|n| order_event(&js.destination(), "k", n))
        .collect();
    let out = tokio::time::timeout(Duration::from_secs(10), js.publisher.publish(&events))
        .await
        .expect("published within 10 s");
    assert!(
        out.iter().all(PublishOutcome::is_published),
        "{:?}",
        out.iter().find(|o| !o.is_published())
    );
    let got = js
        .receive(events.len(), Duration::from_secs(10))
        .await
        .expect("read");
    let ids: Vec<String> = events.iter().map(|e| e.id().to_string()).collect();
    let stored: Vec<String> = got.iter().filter_map(|r| r.dedupe_id.clone()).collect();
    assert_eq!(stored, ids, "stored once each, in slice order");
    js.publisher
        .jetstream()
        .delete_stream(&js.name)
        .await
        .expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_destinations_are_permanent_errors() {
    let url = outbox_core::service_or_skip!("bad_destinations_are_permanent_errors", Nats);
    let p = publisher(&url).await;
    let events = [
        order_event("orders.*", "k", 1),
        order_event("orders..x", "k", 2),
    ];
    for out in p.publish(&events).await {
        match out {
            PublishOutcome::Failed(e) => {
                assert!(!e.is_retryable(), "{e}");
                assert!(
                    e.to_string().contains("orders"),
                    "names the destination: {e}"
                );
            }
            other => panic!("a wildcard subject was not refused: {other:?}"),
        }
    }
}

/// The connection is cut (and refused for 1.5 s) while the relay runs: it recovers, every
/// event reaches the stream exactly once (JetStream drops republished copies), in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_a_connection_cut() {
    let url = outbox_core::service_or_skip!("relay_survives_a_connection_cut", Nats);
    let upstream = url.trim_start_matches("nats://").to_owned();
    let proxy = TcpProxy::start(&upstream).await.expect("proxy");
    let direct = Js::new(&url, "outbox_cut").await;
    let through_proxy = publisher(&format!("nats://{}", proxy.addr())).await;

    let arrived = relay_survives_connection_cut(through_proxy, &proxy, &direct).await;
    assert_eq!(arrived, CUT_EVENTS);
    direct
        .publisher
        .jetstream()
        .delete_stream(&direct.name)
        .await
        .expect("delete");
}
