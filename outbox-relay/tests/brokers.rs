//! `outbox run` routing one SQLite source to all four brokers at once (NATS, RabbitMQ,
//! Kafka on tansu, SQS on moto), each route by destination prefix: every event reaches the
//! broker its route names, and only that one.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox_core::testkit::unique_name;
use outbox_core::{Envelope, EventId};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ev(dest: &str, n: usize) -> Envelope {
    typed(dest, "order.placed", n)
}

fn typed(dest: &str, event_type: &str, n: usize) -> Envelope {
    Envelope::builder("order", format!("k{}", n % 3), event_type, dest)
        .json(&serde_json::json!({ "n": n }))
        .build()
        .expect("valid")
}

fn ids(events: &[Envelope]) -> HashSet<EventId> {
    events.iter().map(Envelope::id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_nats_rabbitmq_kafka_and_sqs() {
    let nats_url = outbox_core::service_or_skip!(
        "routes (nats)",
        "OUTBOX_TEST_NATS_URL",
        "nats://127.0.0.1:4222",
    );
    let amqp_url = outbox_core::service_or_skip!(
        "routes (rabbitmq)",
        "OUTBOX_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let kafka_url = outbox_core::service_or_skip!(
        "routes (kafka)",
        "OUTBOX_TEST_KAFKA_URL",
        "kafka://127.0.0.1:9092",
    );
    let sqs_url = outbox_core::service_or_skip!(
        "routes (sqs)",
        "OUTBOX_TEST_SQS_URL",
        "http://127.0.0.1:4566",
    );
    let name = unique_name("outbox_route");
    let bootstrap = kafka_url.trim_start_matches("kafka://").to_owned();

    // NATS stream for `{name}.n.>`.
    let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.expect("nats"));
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_uppercase(),
            subjects: vec![format!("{name}.n.>")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("stream");
    // RabbitMQ exchange `{name}` bound to queue `{name}`.
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    let amqp = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = amqp.create_channel().await.expect("channel");
    ch.exchange_declare(
        name.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        Default::default(),
    )
    .await
    .expect("exchange");
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .expect("queue");
    ch.queue_bind(
        name.as_str().into(),
        name.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .expect("bind");
    // Kafka topic `{name}`.
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::Consumer as _;
    use rdkafka::message::{Headers as _, Message as _};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    for r in admin
        .create_topics(
            &[NewTopic::new(&name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("topics")
    {
        r.expect("topic");
    }
    // SQS queue `{name}`.
    let sqs_conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(&sqs_url)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    let sqs = aws_sdk_sqs::Client::from_conf(sqs_conf);
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("queue")
        .queue_url()
        .expect("url")
        .to_owned();

    // One SQLite source with events for each route.
    let db = std::env::temp_dir().join(format!("{name}.db"));
    let config = std::env::temp_dir().join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"[sources.lite]
url = "sqlite://{db}"
[sources.lite.relay]
poll_interval = "20ms"
max_poll_interval = "200ms"

[publishers.nats]
kind = "nats"
url = "{nats_url}"
[publishers.rabbit]
kind = "amqp"
url = "{amqp_url}"
[publishers.kafka]
kind = "kafka"
bootstrap_servers = "{bootstrap}"
[publishers.sqs]
kind = "sqs"
region = "us-east-1"
endpoint_url = "{sqs_url}"
credentials = {{ access_key_id = "test", secret_access_key = "test" }}

[[routes]]
destination_prefix = "{name}.n."
publisher = "nats"
[[routes]]
destination_prefix = "{name}/"
publisher = "rabbit"
[[routes]]
destination_prefix = "{name}"
event_type = "order.placed"
publisher = "kafka"
"#,
            db = db.display()
        ) + "[[routes]]\nevent_type = \"order.sqs\"\npublisher = \"sqs\"\n",
    )
    .expect("config");
    let out = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .output()
        .expect("migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let to_nats: Vec<Envelope> = (0..10)
        .map(|i| ev(&format!("{name}.n.orders"), i))
        .collect();
    let to_rabbit: Vec<Envelope> = (0..10).map(|i| ev(&format!("{name}/orders"), i)).collect();
    let to_kafka: Vec<Envelope> = (0..10).map(|i| ev(&name, i)).collect();
    let to_sqs: Vec<Envelope> = (0..10).map(|i| typed(&name, "order.sqs", i)).collect();
    let pool = outbox_sqlx::sqlite::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("sqlite");
    let outbox = outbox_sqlx::sqlite::SqliteOutbox::default();
    let mut tx = pool.begin().await.expect("begin");
    for batch in [&to_nats, &to_rabbit, &to_kafka, &to_sqs] {
        outbox.enqueue_all(&mut tx, batch).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");

    let _relay = Relay(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run"),
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let kafka_consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique_name("g"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    kafka_consumer
        .subscribe(&[name.as_str()])
        .expect("subscribe");
    let (mut got_nats, mut got_rabbit, mut got_kafka, mut got_sqs) = (
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
        HashSet::new(),
    );
    while (got_nats != ids(&to_nats)
        || got_rabbit != ids(&to_rabbit)
        || got_kafka != ids(&to_kafka)
        || got_sqs != ids(&to_sqs))
        && tokio::time::Instant::now() < deadline
    {
        let received = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        for m in received.messages() {
            if let Some(id) = m
                .message_attributes()
                .and_then(|a| a.get("outbox-event-id"))
                .and_then(|v| v.string_value())
                .and_then(|s| s.parse().ok())
            {
                got_sqs.insert(id);
            }
        }
        let info = stream.info().await.expect("info").state.clone();
        for seq in info.first_sequence..=info.last_sequence {
            if info.messages > 0
                && let Ok(m) = stream.get_raw_message(seq).await
                && let Some(id) = m
                    .headers
                    .get("outbox-event-id")
                    .and_then(|v| v.as_str().parse().ok())
            {
                got_nats.insert(id);
            }
        }
        while let Ok(Some(m)) = ch
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            if let Some(id) = m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|s| s.as_str().parse().ok())
            {
                got_rabbit.insert(id);
            }
        }
        let poll_until = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < poll_until {
            if let Some(Ok(m)) =
                tokio::task::block_in_place(|| kafka_consumer.poll(Duration::from_millis(50)))
                && let Some(h) = m.headers()
            {
                for header in h.iter() {
                    if header.key == "outbox-event-id"
                        && let Some(id) = header
                            .value
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|s| s.parse().ok())
                    {
                        got_kafka.insert(id);
                    }
                }
            }
        }
    }
    assert_eq!(got_nats, ids(&to_nats), "NATS received its route's events");
    assert_eq!(
        got_rabbit,
        ids(&to_rabbit),
        "RabbitMQ received its route's events"
    );
    assert_eq!(
        got_kafka,
        ids(&to_kafka),
        "Kafka received its route's events"
    );
    assert_eq!(got_sqs, ids(&to_sqs), "SQS received its route's events");

    let _ = js.delete_stream(name.to_uppercase()).await;
    let _ = ch
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = ch
        .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = sqs.delete_queue().queue_url(&queue_url).send().await;
    for p in [&db, &config] {
        let _ = std::fs::remove_file(p);
    }
}
