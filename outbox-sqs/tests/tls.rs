//! An `https://` endpoint whose certificate a private CA signed (`ca_file`). moto serves
//! plain HTTP, so the test puts a TLS listener of its own in front of it
//! (`outbox_tests::tls::front`): with the CA the publisher sends and the queue has the
//! message; trusting another CA, the send fails and says why.

use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{PublishOutcome, Publisher};
use outbox_sqs::{SqsConfig, SqsCredentials, SqsPublisher};
use outbox_tests::tls::{front, pki};

fn config(port: u16, ca: std::path::PathBuf) -> SqsConfig {
    SqsConfig {
        region: Some("us-east-1".to_owned()),
        endpoint_url: Some(format!("https://localhost:{port}")),
        credentials: Some(SqsCredentials {
            access_key_id: "test".to_owned(),
            secret_access_key: "test".into(),
            session_token: None,
        }),
        ca_file: Some(ca),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoint_signed_by_a_private_ca() {
    let sqs_url = outbox_core::service_or_skip!("SQS TLS", Sqs);
    let upstream = sqs_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("moto's address");
    let ours = pki("outbox test CA");
    let port = front(&ours, upstream, false).await;

    let publisher = SqsPublisher::connect(&config(port, ours.ca()))
        .await
        .expect("client");
    let queue = unique_name("tls");
    let url = publisher
        .client()
        .create_queue()
        .queue_name(&queue)
        .send()
        .await
        .expect("create the queue over TLS")
        .queue_url
        .expect("queue url");
    let outcomes = publisher.publish(&[order_event(&queue, "k", 1)]).await;
    assert!(
        matches!(outcomes.as_slice(), [PublishOutcome::Published]),
        "{outcomes:?}"
    );
    let got = publisher
        .client()
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .expect("receive over TLS");
    assert_eq!(
        got.messages().len(),
        1,
        "the queue behind TLS has the message"
    );

    // Trusting another CA: the send fails, and the error names the certificate.
    let theirs = pki("another CA");
    let stranger = SqsPublisher::connect(&config(port, theirs.ca()))
        .await
        .expect("client");
    let outcomes = stranger.publish(&[order_event(&queue, "k", 2)]).await;
    match outcomes.as_slice() {
        [PublishOutcome::Failed(e)] => {
            let report = e.to_report();
            println!("another CA: {report}");
            assert!(
                report.to_ascii_lowercase().contains("certificate"),
                "{report}"
            );
        }
        other => panic!("a server certificate the CA did not sign is refused: {other:?}"),
    }
    let _ = publisher
        .client()
        .delete_queue()
        .queue_url(&url)
        .send()
        .await;
}
