//! TLS with a private CA and a client certificate, against a `nats-server` of the test's
//! own that requires both (`--tlsverify`): the publisher with the right CA and certificate
//! publishes; one trusting another CA, or without a client certificate, is refused with an
//! error that says so.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{PublishOutcome, Publisher};
use outbox_nats::{NatsConfig, NatsPublisher, NatsTls};
use outbox_tests::tls::{Pki, pki};

/// A `nats-server` (JetStream on, in a directory of its own) with TLS and client
/// certificate verification; killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_server() -> Option<String> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(str::to_owned)
}

fn start(bin: &str, pki: &Pki) -> TlsServer {
    let port = outbox_tests::free_port();
    let dir = std::env::temp_dir().join(unique_name("outbox_nats_tls"));
    std::fs::create_dir_all(&dir).expect("store dir");
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .arg("--tlsverify")
        .arg("--tlscert")
        .arg(pki.server_cert())
        .arg("--tlskey")
        .arg(pki.server_key())
        .arg("--tlscacert")
        .arg(pki.ca())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server with TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsServer { child, port, dir }
}

fn config(port: u16, ca: &Path, client: Option<&Pki>) -> NatsConfig {
    let mut c = NatsConfig::new(format!("tls://127.0.0.1:{port}"));
    c.connect_timeout = Duration::from_secs(3);
    c.tls = NatsTls {
        required: true,
        ca_file: Some(ca.to_owned()),
        client_cert: client.map(Pki::client_cert),
        client_key: client.map(Pki::client_key),
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let Some(bin) = nats_server() else {
        assert!(
            !outbox_core::testkit::services_required(),
            "nats-server is not installed"
        );
        println!("skipped: nats-server is not installed");
        return;
    };
    let ours = pki("outbox test CA");
    let server = start(&bin, &ours);

    // The right CA and a client certificate: connected, and an event is stored.
    let publisher = NatsPublisher::connect(config(server.port, &ours.ca(), Some(&ours)))
        .await
        .expect("TLS with the private CA and the client certificate");
    let name = unique_name("tls");
    publisher
        .jetstream()
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("stream over TLS");
    let outcomes = publisher
        .publish(&[order_event(&format!("{name}.orders"), "k", 1)])
        .await;
    assert!(
        matches!(outcomes.as_slice(), [PublishOutcome::Published]),
        "{outcomes:?}"
    );

    // A CA that did not sign the server's certificate: refused, naming the certificate.
    let theirs = pki("another CA");
    let err = refused(
        NatsPublisher::connect(config(server.port, &theirs.ca(), Some(&ours))).await,
        "a server certificate the CA did not sign is refused",
    );
    let report = err.to_report();
    println!("another CA: {report}");
    assert!(
        report.contains("127.0.0.1") && report.to_ascii_lowercase().contains("certificate"),
        "{report}"
    );

    // No client certificate: the server refuses.
    let err = refused(
        NatsPublisher::connect(config(server.port, &ours.ca(), None)).await,
        "the server requires a client certificate",
    );
    println!("no client certificate: {}", err.to_report());
    assert!(err.to_report().contains("127.0.0.1"), "{}", err.to_report());
}

/// The error of a connection that had to fail (`why` says why it had to).
fn refused<T>(result: outbox_core::Result<T>, why: &str) -> outbox_core::Error {
    match result {
        Ok(_) => panic!("connected, but {why}"),
        Err(e) => e,
    }
}
