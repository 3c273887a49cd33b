//! outbox-sqs against a real SQS API: moto's server, which scripts/services.sh installs and
//! starts (OUTBOX_TEST_SQS_URL, default http://127.0.0.1:4566). Each test uses queues of its
//! own, deleted at the end.

use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use outbox_core::testkit::{
    PublisherHarness, Received, order_event, run_publisher_suite, unique_name,
};
use outbox_core::{Envelope, ErrorKind, PublishOutcome, Publisher, Result};
use outbox_sqs::{SqsConfig, SqsCredentials, SqsPublisher, decode_attributes};
use tokio::sync::Mutex;

async fn publisher(endpoint: &str) -> SqsPublisher {
    SqsPublisher::connect(&SqsConfig {
        region: Some("us-east-1".to_owned()),
        endpoint_url: Some(endpoint.to_owned()),
        credentials: Some(SqsCredentials {
            access_key_id: "test".to_owned(),
            secret_access_key: "test".into(),
            session_token: None,
        }),
        ca_file: None,
    })
    .await
    .expect("client")
}

/// A queue of its own (standard, or FIFO when `fifo`), and what was received from it.
struct Queue {
    publisher: SqsPublisher,
    name: String,
    url: String,
    fifo: bool,
    received: Mutex<Vec<Received>>,
}

impl Queue {
    async fn new(endpoint: &str, fifo: bool) -> Queue {
        let publisher = publisher(endpoint).await;
        let name = if fifo {
            format!("{}.fifo", unique_name("outbox_t"))
        } else {
            unique_name("outbox_t")
        };
        let mut create = publisher.client().create_queue().queue_name(&name);
        if fifo {
            create = create
                .attributes(QueueAttributeName::FifoQueue, "true")
                .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
        }
        let url = create
            .send()
            .await
            .expect("create queue")
            .queue_url()
            .expect("queue url")
            .to_owned();
        Queue {
            publisher,
            name,
            url,
            fifo,
            received: Mutex::new(Vec::new()),
        }
    }

    async fn delete(&self) {
        self.publisher
            .client()
            .delete_queue()
            .queue_url(&self.url)
            .send()
            .await
            .expect("delete queue");
    }
}

impl PublisherHarness for Queue {
    type Publisher = SqsPublisher;
    fn publisher(&self) -> &SqsPublisher {
        &self.publisher
    }
    fn destination(&self) -> String {
        self.name.clone()
    }
    async fn receive(&self, n: usize, within: Duration) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = self.received.lock().await;
        loop {
            let out = self
                .publisher
                .client()
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .wait_time_seconds(0)
                .send()
                .await
                .map_err(|e| {
                    outbox_core::Error::new(ErrorKind::Connection, format!("receive: {e}"))
                })?;
            let messages = out.messages();
            for m in messages {
                let attrs: Vec<(String, String)> = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| {
                                v.string_value().map(|s| (k.clone(), s.to_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let d = decode_attributes(
                    m.body().unwrap_or_default(),
                    attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                );
                let system = m.attributes();
                got.push(Received {
                    event_id: d.event_id,
                    dedupe_id: system
                        .and_then(|s| s.get(&MessageSystemAttributeName::MessageDeduplicationId))
                        .cloned(),
                    key: system
                        .and_then(|s| s.get(&MessageSystemAttributeName::MessageGroupId))
                        .cloned(),
                    payload: bytes::Bytes::from(d.payload),
                    headers: d.headers,
                });
                if let Some(h) = m.receipt_handle() {
                    let _ = self
                        .publisher
                        .client()
                        .delete_message()
                        .queue_url(&self.url)
                        .receipt_handle(h)
                        .send()
                        .await;
                }
            }
            if messages.is_empty() {
                if got.len() >= n || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(got.clone())
    }
    fn broker_dedupes(&self) -> bool {
        self.fifo
    }
    fn missing_destination(&self) -> Option<String> {
        Some(format!("{}_nosuch", self.name.trim_end_matches(".fifo")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_standard_queue() {
    let url = outbox_core::service_or_skip!("conformance_suite_on_a_standard_queue", Sqs);
    run_publisher_suite(|| Queue::new(&url, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_fifo_queue() {
    let url = outbox_core::service_or_skip!("conformance_suite_on_a_fifo_queue", Sqs);
    run_publisher_suite(|| Queue::new(&url, true)).await;
}

/// The relay publishes an event twice (a crash between the broker's ack and the mark): the
/// FIFO queue delivers it once, with the event id as the dedupe id and the key as the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_receives_a_republished_event_once() {
    let url = outbox_core::service_or_skip!("fifo_queue_receives_a_republished_event_once", Sqs);
    let q = Queue::new(&url, true).await;
    let events: Vec<Envelope> = (0..25)
        .map(|i| order_event(&q.name, &format!("k{}", i % 3), i))
        .collect();
    for _ in 0..2 {
        for o in q.publisher.publish(&events).await {
            assert!(o.is_published(), "{o:?}");
        }
    }
    let got = q
        .receive(events.len(), Duration::from_secs(10))
        .await
        .expect("receive");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if got.len() > events.len() {
        got
    } else {
        q.receive(0, Duration::ZERO).await.expect("receive")
    };
    assert_eq!(got.len(), events.len(), "each event once");
    for r in &got {
        let id = r.event_id.expect("event id");
        assert_eq!(r.dedupe_id.as_deref(), Some(id.to_string().as_str()));
        let e = events.iter().find(|e| e.id() == id).expect("a sent event");
        assert_eq!(r.key.as_deref(), Some(e.ordering_key()));
    }
    q.delete().await;
}

/// 25 events of ~30 KiB go out in batches that respect both the 10-entry and the 256 KiB
/// limits; a 300 KiB event is a permanent error and the rest of its batch is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_sqs_limits() {
    let url = outbox_core::service_or_skip!("batches_respect_sqs_limits", Sqs);
    let q = Queue::new(&url, false).await;
    let big = "x".repeat(30 * 1024);
    let mut events: Vec<Envelope> = (0..25)
        .map(|i| {
            Envelope::builder("order", format!("k{i}"), "order.placed", &q.name)
                .json(&serde_json::json!({ "n": i, "pad": big }))
                .build()
                .expect("valid")
        })
        .collect();
    let too_big = Envelope::builder("order", "huge", "order.placed", &q.name)
        .with_limits(outbox_core::ValidationLimits {
            max_payload_bytes: 1024 * 1024,
            ..outbox_core::ValidationLimits::default()
        })
        .json(&serde_json::json!({ "pad": "y".repeat(300 * 1024) }))
        .build()
        .expect("valid under a raised limit");
    events.insert(7, too_big);
    let out = q.publisher.publish(&events).await;
    for (i, o) in out.iter().enumerate() {
        match (i, o) {
            (7, PublishOutcome::Failed(e)) => {
                assert_eq!(e.kind(), ErrorKind::TooLarge, "{e}");
                assert!(!e.is_retryable());
            }
            (7, PublishOutcome::Published) => panic!("a 300 KiB message was reported published"),
            (_, o) => assert!(o.is_published(), "event {i}: {o:?}"),
        }
    }
    let got = q
        .receive(25, Duration::from_secs(10))
        .await
        .expect("receive");
    assert_eq!(got.len(), 25);
    q.delete().await;
}
