//! Broker fixtures shared by the workspace's integration tests: what a test sets up on a
//! real broker before a relay publishes (a stream, an exchange and queue, a topic, an SQS
//! queue), and how it reads back which events arrived. Every reader returns the
//! `outbox-event-id` each message carries, so a test compares sets of [`EventId`]s.
//!
//! The fixtures use the raw clients only, never the adapter crates, so an adapter's own
//! tests can use them without a second copy of the adapter in the build.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use outbox_core::{Envelope, EventId};

/// Runs a relay over `store` until it is empty (10 s lease, 5 s publish timeout) and checks
/// that it published `expected` events.
pub async fn drain_into(
    store: impl outbox_core::Store + 'static,
    publisher: impl outbox_core::Publisher + 'static,
    expected: usize,
) {
    let config = outbox_core::RelayConfig {
        lease: std::time::Duration::from_secs(10),
        publish_timeout: std::time::Duration::from_secs(5),
        ..outbox_core::RelayConfig::default()
    };
    let report = outbox_core::Relay::new(store, publisher, config)
        .expect("relay")
        .drain()
        .await
        .expect("drain");
    assert_eq!(report.published, expected);
}

/// The ids of `events`, as a set.
pub fn event_ids(events: &[Envelope]) -> HashSet<EventId> {
    events.iter().map(Envelope::id).collect()
}

/// RabbitMQ: a topic exchange bound (`#`) to a queue, both cleaned up by the broker.
pub mod amqp {
    use super::EventId;
    use lapin::options::{
        BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

    /// A connection and a channel on it, for declaring and reading.
    pub async fn admin(url: &str) -> (Connection, Channel) {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.expect("channel");
        (conn, channel)
    }

    /// Declares the topic exchange `exchange` (deleted with its last binding) and binds
    /// `#` to the queue `queue` (which expires a minute after its last use).
    pub async fn topic_queue(ch: &Channel, exchange: &str, queue: &str) {
        topic_exchange(ch, exchange).await;
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        ch.queue_declare(queue.into(), QueueDeclareOptions::default(), args)
            .await
            .expect("declare queue");
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
    }

    /// Declares the topic exchange `exchange`, deleted by the broker once its last
    /// binding goes (one never bound stays until deleted).
    pub async fn topic_exchange(ch: &Channel, exchange: &str) {
        ch.exchange_declare(
            exchange.into(),
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

    /// Takes every message waiting in `queue` and returns their event ids (the AMQP
    /// `message_id` the publisher sets).
    pub async fn take_ids(ch: &Channel, queue: &str) -> Vec<EventId> {
        let mut ids = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            if let Some(id) = m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|s| s.as_str().parse().ok())
            {
                ids.push(id);
            }
        }
        ids
    }
}

/// NATS JetStream: an in-memory stream, and the ids it stores.
pub mod nats {
    use super::EventId;
    use async_nats::jetstream::{self, stream};

    /// A JetStream context on a new connection to `url`.
    pub async fn jetstream(url: &str) -> jetstream::Context {
        jetstream::new(async_nats::connect(url).await.expect("connect to NATS"))
    }

    /// Creates the in-memory stream `name` over `subjects` (for example `"{name}.>"`).
    pub async fn memory_stream(
        js: &jetstream::Context,
        name: &str,
        subjects: &str,
    ) -> stream::Stream {
        js.create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("create stream")
    }

    /// The event ids of every message the stream `name` holds, in stream order.
    pub async fn stored_ids(js: &jetstream::Context, name: &str) -> Vec<EventId> {
        let mut s = js.get_stream(name).await.expect("stream");
        let state = s.info().await.expect("stream info").state.clone();
        let mut ids = Vec::new();
        if state.messages == 0 {
            return ids;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await
                && let Some(v) = m.headers.get("outbox-event-id")
                && let Ok(id) = v.as_str().parse()
            {
                ids.push(id);
            }
        }
        ids
    }
}

/// Kafka: a topic, and a consumer group reading it from the start.
pub mod kafka {
    use std::time::{Duration, Instant};

    use super::EventId;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers as _, Message as _};

    /// Creates `topic` with `partitions` partitions.
    pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("kafka admin client");
        for r in admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .expect("create topics")
        {
            r.expect("topic created");
        }
    }

    /// A consumer in a group of its own, subscribed to `topic` from the earliest offset.
    pub fn consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", outbox_core::testkit::unique_name("g"))
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("kafka consumer");
        c.subscribe(&[topic]).expect("subscribe");
        c
    }

    /// Polls `consumer` for `window` and returns the event ids (the `outbox-event-id`
    /// header) of what arrived. Blocks the thread: call it from `block_in_place`.
    pub fn poll_ids(consumer: &BaseConsumer, window: Duration) -> Vec<EventId> {
        let until = Instant::now() + window;
        let mut ids = Vec::new();
        while Instant::now() < until {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
                && let Some(h) = m.headers()
            {
                ids.extend(
                    h.iter()
                        .filter(|h| h.key == "outbox-event-id")
                        .filter_map(|h| {
                            h.value
                                .and_then(|v| std::str::from_utf8(v).ok())
                                .and_then(|s| s.parse::<EventId>().ok())
                        }),
                );
            }
        }
        ids
    }
}

/// SQS on moto: a client with test credentials, a queue, and its messages' ids.
pub mod sqs {
    use super::EventId;
    use aws_sdk_sqs::Client;
    use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

    /// A client for the SQS endpoint `endpoint` (region `us-east-1`, test credentials).
    pub fn client(endpoint: &str) -> Client {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .build();
        Client::from_conf(conf)
    }

    /// Creates the standard queue `name`; returns its URL.
    pub async fn create_queue(client: &Client, name: &str) -> String {
        client
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("create queue")
            .queue_url()
            .expect("queue url")
            .to_owned()
    }

    /// Receives (without deleting) up to ten messages; returns their event ids (the
    /// `outbox-event-id` message attribute).
    pub async fn receive_ids(client: &Client, queue_url: &str) -> Vec<EventId> {
        let got = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        got.messages()
            .iter()
            .filter_map(|m| {
                m.message_attributes()
                    .and_then(|a| a.get("outbox-event-id"))
                    .and_then(|v| v.string_value())
                    .and_then(|s| s.parse().ok())
            })
            .collect()
    }
}

/// The `outbox` binary as a child process that a failing test cannot leave behind.
pub struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl RelayProcess {
    /// Starts `bin run --config config`, its output discarded.
    pub fn start(bin: &str, config: &Path) -> RelayProcess {
        RelayProcess(
            Command::new(bin)
                .args(["run", "--config"])
                .arg(config)
                .env("OUTBOX_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start outbox run"),
        )
    }

    /// SIGKILL, and reap.
    pub fn kill9(self) {
        drop(self);
    }

    /// SIGTERM, and wait for the exit.
    pub fn sigterm(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        self.0.wait().expect("wait for outbox run")
    }
}

/// Runs the binary `bin` with `args` and returns its stdout; fails the test with its
/// stderr on a non-zero exit.
pub fn run_outbox(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("OUTBOX_LOG", "warn")
        .output()
        .expect("run outbox");
    assert!(
        out.status.success(),
        "outbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `bin migrate --config config`; fails the test if it fails.
pub fn migrate(bin: &str, config: &Path) {
    let config = config.to_str().expect("a UTF-8 config path");
    run_outbox(bin, &["migrate", "--config", config]);
}

/// A loopback port nothing listens on (for a relay's `[http] listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The whole response to `GET path` on a loopback port, retried for five seconds while
/// the server starts.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("nothing answered on port {port}");
}

/// Certificates made for a test: a private CA, a server certificate for `127.0.0.1` and
/// `localhost`, and a client certificate, written as PEM files in a directory of their own.
pub mod tls {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    /// PEM files: `ca.pem`, `server.pem` + `server-key.pem`, `client.pem` + `client-key.pem`.
    pub struct Pki {
        /// The directory holding them.
        pub dir: PathBuf,
    }

    impl Pki {
        /// The CA certificate.
        pub fn ca(&self) -> PathBuf {
            self.dir.join("ca.pem")
        }
        /// The server certificate (signed by the CA).
        pub fn server_cert(&self) -> PathBuf {
            self.dir.join("server.pem")
        }
        /// The server's key.
        pub fn server_key(&self) -> PathBuf {
            self.dir.join("server-key.pem")
        }
        /// The client certificate (signed by the CA).
        pub fn client_cert(&self) -> PathBuf {
            self.dir.join("client.pem")
        }
        /// The client's key.
        pub fn client_key(&self) -> PathBuf {
            self.dir.join("client-key.pem")
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn write(dir: &Path, name: &str, pem: String) {
        std::fs::write(dir.join(name), pem).expect("write a PEM file");
    }

    /// A TLS listener on a loopback port, with `pki`'s server certificate, that relays each
    /// connection to `upstream` (a service without TLS); with `client_certificates`, it
    /// refuses a client without a certificate signed by `pki`'s CA. Returns its port.
    pub async fn front(
        pki: &Pki,
        upstream: std::net::SocketAddr,
        client_certificates: bool,
    ) -> u16 {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::Arc;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.server_cert())
            .expect("server certificate")
            .collect::<Result<_, _>>()
            .expect("PEM");
        let key = PrivateKeyDer::from_pem_file(pki.server_key()).expect("server key");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = if client_certificates {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(pki.ca()).expect("CA") {
                roots.add(ca.expect("PEM")).expect("CA certificate");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(certs, key).expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A refused handshake just closes the connection, as a server's would.
                    if let Ok(mut tls) = acceptor.accept(tcp).await
                        && let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    }
                });
            }
        });
        port
    }

    /// A new CA (named `ca_name`) with a server and a client certificate, under a fresh
    /// directory in the temporary directory.
    pub fn pki(ca_name: &str) -> Pki {
        let dir = std::env::temp_dir().join(outbox_core::testkit::unique_name("outbox_pki"));
        std::fs::create_dir_all(&dir).expect("PKI directory");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        write(&dir, "ca.pem", ca.pem());
        for (name, sans, usage) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["outbox-relay".to_owned()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca).expect("certificate");
            write(&dir, &format!("{name}.pem"), cert.pem());
            write(&dir, &format!("{name}-key.pem"), key.serialize_pem());
        }
        Pki { dir }
    }
}
