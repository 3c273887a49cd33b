//! outbox-kafka against a real Kafka-protocol broker, the tansu broker that
//! scripts/services.sh installs and starts (OUTBOX_TEST_KAFKA_URL, default
//! kafka://127.0.0.1:9092), and against librdkafka's mock cluster for fault injection.
//! Each test uses topics of its own.

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::testkit::{
    PublisherHarness, Received, RunningRelay, order_event, run_publisher_suite, unique_name,
    wait_until_drained,
};
use outbox_core::{
    Envelope, ErrorKind, EventId, InMemoryStore, PublishOutcome, Publisher, Relay, RelayConfig,
    Result, RetryPolicy, StoreStats, transport,
};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message as _};
use tokio::sync::Mutex;

fn bootstrap(url: &str) -> String {
    url.trim_start_matches("kafka://").to_owned()
}

fn consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("outbox_group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// Everything `consumer` delivers within `within`, or until `n` messages.
fn poll(consumer: &BaseConsumer, into: &mut Vec<Received>, n: usize, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while into.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let pairs: Vec<(String, String)> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let refs = || pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            into.push(Received {
                event_id: transport::event_id(refs()),
                dedupe_id: None,
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                headers: transport::user_headers(refs()),
            });
        }
    }
}

/// A topic of its own (3 partitions), a publisher and a consumer.
struct Topic {
    publisher: KafkaPublisher,
    topic: String,
    consumer: std::sync::Mutex<BaseConsumer>,
    received: Mutex<Vec<Received>>,
}

fn publisher_config(bootstrap: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(bootstrap);
    c.message_timeout = Duration::from_secs(5);
    // Fail fast on a topic the broker does not know (librdkafka waits 30 s by default).
    c.with_property("topic.metadata.propagation.max.ms", "2000")
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

impl Topic {
    async fn new(url: &str) -> Topic {
        let bootstrap = bootstrap(url);
        let topic = unique_name("outbox_t");
        create_topic(&bootstrap, &topic).await;
        Topic {
            publisher: KafkaPublisher::new(publisher_config(&bootstrap)).expect("publisher"),
            consumer: std::sync::Mutex::new(consumer(&bootstrap, &topic)),
            topic,
            received: Mutex::new(Vec::new()),
        }
    }
}

impl PublisherHarness for Topic {
    type Publisher = KafkaPublisher;
    fn publisher(&self) -> &KafkaPublisher {
        &self.publisher
    }
    fn destination(&self) -> String {
        self.topic.clone()
    }
    async fn receive(&self, n: usize, within: Duration) -> Result<Vec<Received>> {
        let mut got = self.received.lock().await;
        let mut fresh = Vec::new();
        {
            let consumer = self
                .consumer
                .lock()
                .map_err(|_| outbox_core::Error::new(ErrorKind::Other, "consumer lock poisoned"))?;
            let want = n.saturating_sub(got.len());
            tokio::task::block_in_place(|| poll(&consumer, &mut fresh, want, within));
        }
        got.extend(fresh);
        Ok(got.clone())
    }
    fn broker_dedupes(&self) -> bool {
        // The idempotent producer drops its own retried sends, but a republish by the relay
        // is a new send; consumers deduplicate by `outbox-event-id`.
        false
    }
    fn missing_destination(&self) -> Option<String> {
        // tansu does not create topics on produce, so an unknown topic is detectable.
        Some(format!("{}_missing", self.topic))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_tansu() {
    let url = outbox_core::service_or_skip!("conformance_suite_on_tansu", Kafka);
    run_publisher_suite(|| Topic::new(&url)).await;
}

/// 60 events over 4 keys in 3 partitions: a consumer sees each key's events in order, with
/// the ordering key as the message key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_sees_per_key_order() {
    let url = outbox_core::service_or_skip!("consumer_sees_per_key_order", Kafka);
    let t = Topic::new(&url).await;
    let events: Vec<Envelope> = (0..60)
        .map(|i| order_event(&t.topic, &format!("key-{}", i % 4), i))
        .collect();
    // As the relay does: one event per key per call.
    for wave in events.chunks(4) {
        for o in t.publisher.publish(wave).await {
            assert!(o.is_published(), "{o:?}");
        }
    }
    let got = t
        .receive(events.len(), Duration::from_secs(20))
        .await
        .expect("receive");
    assert_eq!(got.len(), events.len());
    for k in 0..4 {
        let key = format!("key-{k}");
        let sent: Vec<EventId> = events
            .iter()
            .filter(|e| e.ordering_key() == key)
            .map(Envelope::id)
            .collect();
        let seen: Vec<EventId> = got
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_str()))
            .filter_map(|r| r.event_id)
            .collect();
        assert_eq!(seen, sent, "{key} in order, keyed by its ordering key");
    }
}

/// A message over the size limit is a permanent error; the rest of the call is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_permanent() {
    let url = outbox_core::service_or_skip!("oversized_message_is_permanent", Kafka);
    let t = Topic::new(&url).await;
    let huge = Envelope::builder("order", "big", "order.placed", &t.topic)
        .with_limits(outbox_core::ValidationLimits {
            max_payload_bytes: 4 * 1024 * 1024,
            ..outbox_core::ValidationLimits::default()
        })
        .with_payload(vec![b'x'; 2 * 1024 * 1024], "application/octet-stream")
        .build()
        .expect("valid under a raised limit");
    let small = order_event(&t.topic, "small", 1);
    let out = t.publisher.publish(&[huge, small]).await;
    match &out[0] {
        PublishOutcome::Failed(e) => {
            assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("a 2 MiB message was reported published: {other:?}"),
    }
    assert!(out[1].is_published(), "{:?}", out[1]);
}

/// librdkafka's mock cluster: the broker goes down while the relay runs. Publishes fail
/// as retryable, the relay retries, and once the broker is back every event is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_retryable_and_nothing_is_lost() {
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let topic = "outbox_mock";
    mock.create_topic(topic, 3, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let mut config = KafkaConfig::new(&bootstrap);
    config.message_timeout = Duration::from_millis(1500);
    let publisher = KafkaPublisher::new(config).expect("publisher");

    // While the broker is down, a publish fails with a retryable error.
    mock.broker_down(1).expect("down");
    let probe = order_event(topic, "probe", 0);
    match &publisher.publish(std::slice::from_ref(&probe)).await[0] {
        PublishOutcome::Failed(e) => {
            assert!(e.is_retryable(), "broker down must be retryable: {e}")
        }
        other => panic!("published to a downed broker: {other:?}"),
    }
    mock.broker_up(1).expect("up");

    let store = InMemoryStore::new();
    let events: Vec<Envelope> = (0..120)
        .map(|i| order_event(topic, &format!("k{}", i % 6), i))
        .collect();
    store.enqueue_committed(events.clone()).expect("enqueue");
    let relay = Relay::new(
        store.clone(),
        publisher,
        RelayConfig {
            batch_size: 10,
            lease: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(4),
            poll_interval: Duration::from_millis(20),
            max_poll_interval: Duration::from_millis(100),
            retry: RetryPolicy::backoff(
                Duration::from_millis(100),
                Duration::from_millis(500),
                1000,
            ),
            ..RelayConfig::default()
        },
    )
    .expect("relay");
    let running = RunningRelay::spawn(relay);
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.broker_down(1).expect("down");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = store.stats().await.expect("stats");
    mock.broker_up(1).expect("up");
    wait_until_drained(&store, Duration::from_secs(60)).await;
    running.stop().await;
    assert!(
        during.pending + during.in_flight > 0,
        "the outage held events back: {during:?}"
    );
    assert_eq!(
        store.stats().await.expect("stats").dead,
        0,
        "nothing dead-lettered"
    );

    let c = consumer(&bootstrap, topic);
    let mut got = Vec::new();
    tokio::task::block_in_place(|| poll(&c, &mut got, events.len() + 1, Duration::from_secs(20)));
    let ids: HashSet<EventId> = got.iter().filter_map(|r| r.event_id).collect();
    for e in &events {
        assert!(ids.contains(&e.id()), "event {} lost", e.id());
    }
}
