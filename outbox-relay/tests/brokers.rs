//! `outbox run` routing one SQLite source to all four brokers at once (NATS, RabbitMQ,
//! Kafka on tansu, SQS on moto), each route by destination prefix: every event reaches the
//! broker its route names, and only that one.

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::Envelope;
use outbox_core::testkit::unique_name;
use outbox_tests::{self as fixtures, event_ids as ids};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

fn ev(dest: &str, n: usize) -> Envelope {
    typed(dest, "order.placed", n)
}

fn typed(dest: &str, event_type: &str, n: usize) -> Envelope {
    Envelope::builder("order", format!("k{}", n % 3), event_type, dest)
        .json(&serde_json::json!({ "n": n }))
        .build()
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_nats_rabbitmq_kafka_and_sqs() {
    let [nats_url, amqp_url, kafka_url, sqs_url] =
        outbox_core::service_or_skip!("routes", [Nats, Amqp, Kafka, Sqs]);
    let name = unique_name("outbox_route");
    let bootstrap = kafka_url.trim_start_matches("kafka://").to_owned();

    // A NATS stream for `{name}.n.>`, a RabbitMQ exchange and queue `{name}`, a Kafka
    // topic `{name}`, an SQS queue `{name}`.
    let js = fixtures::nats::jetstream(&nats_url).await;
    fixtures::nats::memory_stream(&js, &name.to_uppercase(), &format!("{name}.n.>")).await;
    let (_amqp, ch) = fixtures::amqp::admin(&amqp_url).await;
    fixtures::amqp::topic_queue(&ch, &name, &name).await;
    fixtures::kafka::create_topic(&bootstrap, &name, 1).await;
    let sqs = fixtures::sqs::client(&sqs_url);
    let queue_url = fixtures::sqs::create_queue(&sqs, &name).await;

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
    fixtures::migrate(BIN, &config);
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

    let _relay = fixtures::RelayProcess::start(BIN, &config);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let kafka_consumer = fixtures::kafka::consumer(&bootstrap, &name);
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
        got_sqs.extend(fixtures::sqs::receive_ids(&sqs, &queue_url).await);
        got_nats.extend(fixtures::nats::stored_ids(&js, &name.to_uppercase()).await);
        got_rabbit.extend(fixtures::amqp::take_ids(&ch, &name).await);
        got_kafka.extend(tokio::task::block_in_place(|| {
            fixtures::kafka::poll_ids(&kafka_consumer, Duration::from_millis(300))
        }));
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
    let _ = sqs.delete_queue().queue_url(&queue_url).send().await;
    for p in [&db, &config] {
        let _ = std::fs::remove_file(p);
    }
}
