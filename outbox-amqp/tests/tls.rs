//! `amqps://` with a private CA and a client certificate. RabbitMQ here listens without
//! TLS, so the test puts a TLS listener of its own in front of it
//! (`outbox_tests::tls::front`, verifying client certificates against the test's CA): the publisher's TLS is real,
//! and so is the broker behind it. With the right CA and certificate an event is published
//! and confirmed; with another CA, or without a client certificate, the connection is
//! refused with an error that says so.

use std::net::SocketAddr;
use std::time::Duration;

use outbox_amqp::{AmqpConfig, AmqpPublisher, AmqpTls};
use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{PublishOutcome, Publisher};
use outbox_tests::tls::{Pki, front, pki};

fn config(amqp_url: &str, port: u16, ca: &Pki, client: Option<&Pki>) -> AmqpConfig {
    let (_, rest) = amqp_url.split_once("://").expect("URL");
    let (auth, after) = rest.rsplit_once('@').map_or(("", rest), |(a, h)| (a, h));
    let path = after.find('/').map_or("", |i| &after[i..]);
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    let mut c = AmqpConfig::new(format!("amqps://{auth}localhost:{port}{path}"));
    c.tls = AmqpTls {
        ca_file: Some(ca.ca()),
        client_cert: client.map(Pki::client_cert),
        client_key: client.map(Pki::client_key),
    };
    c
}

/// The error of a connection that had to fail (`why` says why it had to).
fn refused<T>(result: outbox_core::Result<T>, why: &str) -> outbox_core::Error {
    match result {
        Ok(_) => panic!("connected, but {why}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_and_a_client_certificate() {
    let amqp_url = outbox_core::service_or_skip!("AMQP TLS", Amqp);
    let upstream: SocketAddr = "127.0.0.1:5672".parse().expect("addr");
    let ours = pki("outbox test CA");
    let port = front(&ours, upstream, true).await;

    // The right CA and a client certificate: an event published and confirmed.
    let (_conn, ch) = outbox_tests::amqp::admin(&amqp_url).await;
    let exchange = unique_name("tls");
    outbox_tests::amqp::topic_queue(&ch, &exchange, &exchange).await;
    let publisher = AmqpPublisher::connect(config(&amqp_url, port, &ours, Some(&ours)))
        .await
        .expect("amqps with the private CA and the client certificate");
    let outcomes = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.publish(&[order_event(&format!("{exchange}/orders"), "k", 1)]),
    )
    .await
    .expect("confirmed in time");
    assert!(
        matches!(outcomes.as_slice(), [PublishOutcome::Published]),
        "{outcomes:?}"
    );
    assert_eq!(
        outbox_tests::amqp::take_ids(&ch, &exchange).await.len(),
        1,
        "the broker behind the TLS listener has the event"
    );

    // Another CA: the broker's certificate is refused, and the error says so.
    let theirs = pki("another CA");
    let report = refused(
        AmqpPublisher::connect(config(&amqp_url, port, &theirs, Some(&ours))).await,
        "a server certificate the CA did not sign is refused",
    )
    .to_report();
    println!("another CA: {report}");
    assert!(
        report.contains("localhost") && report.to_ascii_lowercase().contains("certificate"),
        "{report}"
    );

    // No client certificate: the listener refuses.
    let report = refused(
        AmqpPublisher::connect(config(&amqp_url, port, &ours, None)).await,
        "the listener requires a client certificate",
    )
    .to_report();
    println!("no client certificate: {report}");
    assert!(report.contains("localhost"), "{report}");

    // TLS settings on a plain URL: refused before connecting, naming the field.
    let mut plain = config(&amqp_url, port, &ours, Some(&ours));
    plain.url = amqp_url.clone();
    let report = refused(AmqpPublisher::connect(plain).await, "tls on amqp://").to_report();
    assert!(
        report.contains("tls") && report.contains("amqps://"),
        "{report}"
    );
}
