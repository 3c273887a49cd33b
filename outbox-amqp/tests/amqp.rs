//! outbox-amqp against the machine's real RabbitMQ. Each test declares exchanges and queues
//! of its own; queues expire a minute after last use, and their exchanges go with them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use outbox_amqp::{AmqpConfig, AmqpPublisher};
use outbox_core::testkit::{
    PublisherHarness, Received, TcpProxy, run_publisher_suite, service_url, unique_name,
};
use outbox_core::{
    Envelope, ErrorKind, EventId, InMemoryStore, PublishOutcome, Publisher, Relay, RelayConfig,
    Result, RetryPolicy, RowStatus, StoreStats, transport,
};
use tokio::sync::Mutex;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const ENV: &str = "OUTBOX_TEST_AMQP_URL";

/// A topic exchange bound (`#`) to a queue of the same name, a publisher, and a reader.
struct Rabbit {
    publisher: AmqpPublisher,
    _admin: Connection,
    channel: Channel,
    name: String,
    received: Mutex<Vec<Received>>,
}

async fn admin(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

async fn declare_exchange(ch: &Channel, name: &str) {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare exchange");
}

impl Rabbit {
    async fn new(url: &str, publisher_url: &str) -> Rabbit {
        let (admin, channel) = admin(url).await;
        let name = unique_name("outbox_t");
        declare_exchange(&channel, &name).await;
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        channel
            .queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .expect("declare queue");
        channel
            .queue_bind(
                name.as_str().into(),
                name.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let mut config = AmqpConfig::new(publisher_url);
        config.confirm_timeout = Duration::from_secs(3);
        config.reconnect_delay = Duration::from_millis(100);
        Rabbit {
            publisher: AmqpPublisher::connect(config).await.expect("publisher"),
            _admin: admin,
            channel,
            name,
            received: Mutex::new(Vec::new()),
        }
    }
}

fn decode(d: &lapin::message::Delivery) -> Received {
    let pairs: Vec<(String, String)> = d
        .properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .filter_map(|(k, v)| match v {
                    AMQPValue::LongString(s) => Some((
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let refs = || pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    Received {
        event_id: transport::event_id(refs()),
        dedupe_id: d
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned()),
        key: None,
        payload: bytes::Bytes::from(d.data.clone()),
        headers: transport::user_headers(refs()),
    }
}

impl PublisherHarness for Rabbit {
    type Publisher = AmqpPublisher;
    fn publisher(&self) -> &AmqpPublisher {
        &self.publisher
    }
    fn destination(&self) -> String {
        format!("{}/events", self.name)
    }
    async fn receive(&self, n: usize, within: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = self.received.lock().await;
        loop {
            let next = self
                .channel
                .basic_get(self.name.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .map_err(|e| read_error("basic.get", e))?;
            match next {
                Some(m) => got.push(decode(&m.delivery)),
                None if got.len() >= n || tokio::time::Instant::now() >= deadline => break,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        Ok(got.clone())
    }
    fn broker_dedupes(&self) -> bool {
        false
    }
    fn missing_destination(&self) -> Option<String> {
        Some(format!("{}_nosuch/events", self.name))
    }
}

fn read_error(what: &str, e: lapin::Error) -> outbox_core::Error {
    outbox_core::Error::new(ErrorKind::Connection, what.to_owned()).with_source(e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_rabbitmq() {
    let Some(url) = service_url("conformance_suite_on_rabbitmq", ENV, DEFAULT_URL).await else {
        return;
    };
    run_publisher_suite(|| Rabbit::new(&url, &url)).await;
}

fn ev(dest: &str, key: &str, n: usize) -> Envelope {
    Envelope::builder("order", key, "order.placed", dest)
        .json(&serde_json::json!({ "n": n }))
        .build()
        .expect("valid")
}

/// A message no queue is bound for is a permanent error, not a silent drop; the other
/// events of the same batch are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_is_a_permanent_error() {
    let Some(url) = service_url("unroutable_message_is_a_permanent_error", ENV, DEFAULT_URL).await
    else {
        return;
    };
    let rabbit = Rabbit::new(&url, &url).await;
    let lonely = unique_name("outbox_unbound");
    declare_exchange(&rabbit.channel, &lonely).await;
    let events = [
        ev(&format!("{lonely}/nobody.listens"), "a", 1),
        ev(&rabbit.destination(), "b", 2),
        ev(&format!("{}_nosuch/x", rabbit.name), "c", 3),
        ev("bad exchange/x", "d", 4),
    ];
    let out = rabbit.publisher.publish(&events).await;
    match &out[0] {
        PublishOutcome::Failed(e) => {
            assert_eq!(e.kind(), ErrorKind::DestinationNotFound, "{e}");
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("unroutable"), "{e}");
        }
        PublishOutcome::Published => panic!("an unroutable message was reported published"),
    }
    assert!(out[1].is_published(), "{:?}", out[1]);
    for o in &out[2..] {
        match o {
            PublishOutcome::Failed(e) => assert!(!e.is_retryable(), "{e}"),
            PublishOutcome::Published => panic!("a bad destination was published"),
        }
    }
    let got = rabbit
        .receive(1, Duration::from_secs(5))
        .await
        .expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id, Some(events[1].id()));
    // The publisher's channel survived the missing exchange.
    assert!(rabbit.publisher.publish(&events[1..2]).await[0].is_published());
    rabbit
        .channel
        .exchange_delete(lonely.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete exchange");
}

/// The connection is cut (and refused for 1.5 s) while the relay runs: the publisher
/// reconnects, every event reaches the queue, in key order of first delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_a_connection_cut() {
    let Some(url) = service_url("relay_survives_a_connection_cut", ENV, DEFAULT_URL).await else {
        return;
    };
    let proxy = TcpProxy::start("127.0.0.1:5672").await.expect("proxy");
    let proxied = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let rabbit = Rabbit::new(&url, &proxied).await;
    let store = InMemoryStore::new();
    let dest = rabbit.destination();
    let events: Vec<Envelope> = (0..300)
        .map(|i| ev(&dest, &format!("key-{}", i % 5), i))
        .collect();
    store.enqueue_committed(events.clone()).expect("enqueue");
    let config = RelayConfig {
        batch_size: 10,
        concurrency: 2,
        lease: Duration::from_secs(8),
        publish_timeout: Duration::from_secs(4),
        poll_interval: Duration::from_millis(20),
        max_poll_interval: Duration::from_millis(100),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            max_attempts: 1000,
            ..RetryPolicy::default()
        },
        ..RelayConfig::default()
    };
    let Rabbit { publisher, .. } = rabbit;
    let reader = Rabbit::new_reader(&url, &dest).await;
    let relay = Relay::new(store.clone(), publisher, config).expect("relay");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(relay.run_until(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reader.receive(0, Duration::ZERO).await.expect("read").len() < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing published before the cut"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.set_refusing(true);
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set_refusing(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = store.stats().await.expect("stats");
        if s.pending == 0 && s.in_flight == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay did not recover: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    run.await.expect("relay task");
    assert!(proxy.connections() >= 2, "the publisher reconnected");
    assert!(store.rows().iter().all(|(_, s)| *s == RowStatus::Published));
    let got = reader
        .receive(events.len(), Duration::from_secs(5))
        .await
        .expect("read");
    let ids: Vec<EventId> = got.iter().filter_map(|r| r.event_id).collect();
    let unique: HashSet<EventId> = ids.iter().copied().collect();
    assert_eq!(
        unique,
        events.iter().map(Envelope::id).collect::<HashSet<_>>(),
        "nothing lost"
    );
    eprintln!(
        "{} deliveries for {} events (RabbitMQ keeps republished copies)",
        ids.len(),
        events.len()
    );
    let pos: HashMap<EventId, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id(), i))
        .collect();
    let mut last: HashMap<usize, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        let p = pos[&id];
        if let Some(prev) = last.insert(p % 5, p) {
            assert!(prev < p, "key-{} out of order", p % 5);
        }
    }
}

impl Rabbit {
    /// A reader over the queue behind `destination` (`{name}/events`), already declared.
    async fn new_reader(url: &str, destination: &str) -> Rabbit {
        let (admin, channel) = admin(url).await;
        let name = destination.split('/').next().unwrap_or_default().to_owned();
        Rabbit {
            publisher: AmqpPublisher::connect(AmqpConfig::new(url))
                .await
                .expect("publisher"),
            _admin: admin,
            channel,
            name,
            received: Mutex::new(Vec::new()),
        }
    }
}
