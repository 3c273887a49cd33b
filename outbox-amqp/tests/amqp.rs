//! outbox-amqp against the machine's real RabbitMQ. Each test declares exchanges and queues
//! of its own; queues expire a minute after last use, and their exchanges go with them.

use std::time::Duration;

use lapin::options::{BasicGetOptions, ExchangeDeleteOptions};
use lapin::types::AMQPValue;
use lapin::{Channel, Connection};
use outbox_amqp::{AmqpConfig, AmqpPublisher};
use outbox_core::testkit::{
    CUT_EVENTS, PublisherHarness, Received, TcpProxy, order_event, relay_survives_connection_cut,
    run_publisher_suite, unique_name,
};
use outbox_core::{ErrorKind, PublishOutcome, Publisher, Result, transport};
use outbox_tests as fixtures;
use tokio::sync::Mutex;

/// A topic exchange bound (`#`) to a queue of the same name, a publisher, and a reader.
struct Rabbit {
    publisher: AmqpPublisher,
    _admin: Connection,
    channel: Channel,
    name: String,
    received: Mutex<Vec<Received>>,
}

impl Rabbit {
    async fn new(url: &str, publisher_url: &str) -> Rabbit {
        let (admin, channel) = fixtures::amqp::admin(url).await;
        let name = unique_name("outbox_t");
        fixtures::amqp::topic_queue(&channel, &name, &name).await;
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
    let url = outbox_core::service_or_skip!("conformance_suite_on_rabbitmq", Amqp);
    run_publisher_suite(|| Rabbit::new(&url, &url)).await;
}

/// A message no queue is bound for is a permanent error, not a silent drop; the other
/// events of the same batch are published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_message_is_a_permanent_error() {
    let url = outbox_core::service_or_skip!("unroutable_message_is_a_permanent_error", Amqp);
    let rabbit = Rabbit::new(&url, &url).await;
    let lonely = unique_name("outbox_unbound");
    fixtures::amqp::topic_exchange(&rabbit.channel, &lonely).await;
    let events = [
        order_event(&format!("{lonely}/nobody.listens"), "a", 1),
        order_event(&rabbit.destination(), "b", 2),
        order_event(&format!("{}_nosuch/x", rabbit.name), "c", 3),
        order_event("bad exchange/x", "d", 4),
    ];
    let out = rabbit.publisher.publish(&events).await;
    match &out[0] {
        PublishOutcome::Failed(e) => {
            assert_eq!(e.kind(), ErrorKind::DestinationNotFound, "{e}");
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("unroutable"), "{e}");
        }
        other => panic!("an unroutable message was reported published: {other:?}"),
    }
    assert!(out[1].is_published(), "{:?}", out[1]);
    for o in &out[2..] {
        match o {
            PublishOutcome::Failed(e) => assert!(!e.is_retryable(), "{e}"),
            other => panic!("a bad destination was published: {other:?}"),
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

/// Found by the chaos run: RabbitMQ acknowledges many messages with one multiple-ack, and
/// lapin hands a returned message to any one of the confirms it covers, so an unroutable
/// event was reported published and a routed one failed as unroutable. Many batches of
/// routed events with unroutable ones among them, from two calls at once: exactly the
/// unroutable ones fail, every routed one is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_message_fails_its_own_event_under_multiple_acks() {
    let url = outbox_core::service_or_skip!("a_returned_message_fails_its_own_event", Amqp);
    let rabbit = Rabbit::new(&url, &url).await;
    let lonely = unique_name("outbox_unbound");
    fixtures::amqp::topic_exchange(&rabbit.channel, &lonely).await;
    let batch = |round: usize| -> Vec<outbox_core::Envelope> {
        (0..200)
            .map(|i| {
                if i % 37 == 5 {
                    order_event(&format!("{lonely}/nobody"), &format!("u{round}-{i}"), i)
                } else {
                    order_event(&rabbit.destination(), &format!("k{}", i % 7), i)
                }
            })
            .collect()
    };
    let mut routed = 0usize;
    for round in 0..10 {
        let (a, b) = (batch(2 * round), batch(2 * round + 1));
        let (out_a, out_b) =
            tokio::join!(rabbit.publisher.publish(&a), rabbit.publisher.publish(&b));
        for (events, outs) in [(&a, out_a), (&b, out_b)] {
            for (e, o) in events.iter().zip(&outs) {
                let unroutable = e.destination().starts_with(&lonely);
                match o {
                    PublishOutcome::Published => {
                        assert!(!unroutable, "unroutable {} reported published", e.id());
                        routed += 1;
                    }
                    PublishOutcome::Failed(err) => {
                        assert!(unroutable, "routed {} failed: {err}", e.id());
                        assert_eq!(err.kind(), ErrorKind::DestinationNotFound, "{err}");
                    }
                    other => panic!("an outcome this test does not know: {other:?}"),
                }
            }
        }
    }
    let got = rabbit
        .receive(routed, Duration::from_secs(20))
        .await
        .expect("read");
    assert_eq!(got.len(), routed, "every routed event reached the queue");
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
    let url = outbox_core::service_or_skip!("relay_survives_a_connection_cut", Amqp);
    let proxy = TcpProxy::start("127.0.0.1:5672").await.expect("proxy");
    let proxied = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let rabbit = Rabbit::new(&url, &proxied).await;
    let Rabbit {
        publisher, name, ..
    } = rabbit;
    let reader = Rabbit::new_reader(&url, &format!("{name}/events")).await;
    let arrived = relay_survives_connection_cut(publisher, &proxy, &reader).await;
    eprintln!("{arrived} deliveries for {CUT_EVENTS} events (RabbitMQ keeps republished copies)");
}

impl Rabbit {
    /// A reader over the queue behind `destination` (`{name}/events`), already declared.
    async fn new_reader(url: &str, destination: &str) -> Rabbit {
        let (admin, channel) = fixtures::amqp::admin(url).await;
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
