//! Kafka over TLS with a private CA and a client certificate (`[tls]`). The machine's Kafka
//! broker (tansu) listens without TLS, so the test starts a tansu of its own behind a TLS
//! listener of its own (`outbox_tests::tls::front`, verifying client certificates), and
//! has it advertise that listener, so every connection the producer makes goes through
//! TLS. With the right CA and certificate the event is stored (acks=all); trusting another
//! CA, the send fails and the error carries librdkafka's reason.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{PublishOutcome, Publisher};
use outbox_kafka::{KafkaConfig, KafkaPublisher, KafkaTls};
use outbox_tests::tls::{Pki, front, pki};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// A tansu broker killed when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu() -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_default();
    [
        format!("{home}/.cargo/bin/tansu"),
        "/usr/local/bin/tansu".to_owned(),
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

fn tls(ca: &Pki, client: &Pki) -> KafkaTls {
    KafkaTls {
        ca_file: Some(ca.ca()),
        client_cert: Some(client.client_cert()),
        client_key: Some(client.client_key()),
        client_key_password: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let Some(bin) = tansu() else {
        assert!(
            !outbox_core::testkit::services_required(),
            "tansu is not installed (scripts/services.sh installs it)"
        );
        println!("skipped: tansu is not installed");
        return;
    };
    let ours = pki("outbox test CA");
    let inner = outbox_tests::free_port();
    let port = front(
        &ours,
        format!("127.0.0.1:{inner}").parse().expect("addr"),
        true,
    )
    .await;
    let _broker = Broker(
        Command::new(bin)
            .args(["broker", "--cluster-id", &unique_name("tls")])
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{inner}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://localhost:{port}"))
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("STORAGE_ENGINE")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", inner)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bootstrap = format!("localhost:{port}");

    // The topic, created over TLS too (the broker advertises only the TLS listener).
    let topic = unique_name("tls");
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ours.ca().display().to_string())
        .set(
            "ssl.certificate.location",
            ours.client_cert().display().to_string(),
        )
        .set("ssl.key.location", ours.client_key().display().to_string())
        .create()
        .expect("admin client");
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics over TLS")
    {
        r.expect("topic created");
    }

    let mut config = KafkaConfig::new(&bootstrap);
    config.message_timeout = Duration::from_secs(5);
    config.tls = Some(tls(&ours, &ours));
    let publisher = KafkaPublisher::new(config.clone()).expect("producer");
    let outcomes = publisher.publish(&[order_event(&topic, "k", 1)]).await;
    assert!(
        matches!(outcomes.as_slice(), [PublishOutcome::Published]),
        "{outcomes:?}"
    );

    // Trusting another CA: nothing is stored, and the failure says why.
    let theirs = pki("another CA");
    config.tls = Some(tls(&theirs, &ours));
    let stranger = KafkaPublisher::new(config).expect("producer");
    let outcomes = stranger.publish(&[order_event(&topic, "k", 2)]).await;
    match outcomes.as_slice() {
        [PublishOutcome::Failed(e)] => {
            let report = e.to_report();
            println!("another CA: {report}");
            assert!(report.contains("certificate"), "{report}");
        }
        other => panic!("a broker certificate the CA did not sign is refused: {other:?}"),
    }
}
