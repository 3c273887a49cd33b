//! The conformance test kit (feature `testkit`).
//!
//! Every store adapter implements [`StoreHarness`] for its real database and calls
//! [`run_store_suite`]; every publisher adapter implements [`PublisherHarness`] for its real
//! broker and calls [`run_publisher_suite`]. Each test of a suite gets a fresh harness, which
//! must isolate itself (its own table, schema, topic, subject, stream or queue) so that
//! suites of different adapters run in parallel against shared services.
//!
//! [`service_url`] is the gate integration tests pass first: it finds the service's URL,
//! checks that it answers, and either skips the test with a printed notice or, under
//! `OUTBOX_REQUIRE_SERVICES=1`, fails it.

mod inbox_suite;
mod proxy;
mod publisher_suite;
mod store_suite;

pub use inbox_suite::{Delivery, InboxHarness, run_inbox_suite};
pub use proxy::TcpProxy;

pub use publisher_suite::{
    CUT_EVENTS, PublisherHarness, Received, relay_survives_connection_cut, run_publisher_suite,
};
pub use store_suite::{StoreHarness, run_operations_suite, run_store_suite};

use std::io::Write as _;
use std::time::Duration;

/// The environment variable that turns a missing service into a test failure.
pub const REQUIRE_SERVICES_VAR: &str = "OUTBOX_REQUIRE_SERVICES";

/// Whether missing services fail tests (`OUTBOX_REQUIRE_SERVICES=1`) instead of skipping them.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// A SQLite database file of a test's own: a fresh path in the temporary directory,
/// removed with its `-wal` and `-shm` companions when the value drops.
#[derive(Debug)]
pub struct TempDb(std::path::PathBuf);

impl TempDb {
    /// A new path `{tmp}/{prefix}_{random}.db` (the file is created by whoever opens it).
    pub fn new(prefix: &str) -> TempDb {
        TempDb(std::env::temp_dir().join(format!("{}.db", unique_name(prefix))))
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// A `sqlite://` URL that creates the file when it opens it.
    pub fn url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.0.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A service of the machine the integration tests use: its environment variable, and the
/// URL of the local service when that variable is unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Service {
    /// PostgreSQL (`OUTBOX_TEST_POSTGRES_URL`).
    Postgres,
    /// MySQL or MariaDB (`OUTBOX_TEST_MYSQL_URL`).
    MySql,
    /// NATS with JetStream (`OUTBOX_TEST_NATS_URL`).
    Nats,
    /// RabbitMQ (`OUTBOX_TEST_AMQP_URL`).
    Amqp,
    /// A Kafka-protocol broker (`OUTBOX_TEST_KAFKA_URL`).
    Kafka,
    /// An SQS endpoint (`OUTBOX_TEST_SQS_URL`).
    Sqs,
}

impl Service {
    /// The environment variable that overrides [`Service::default_url`].
    pub fn env_var(self) -> &'static str {
        match self {
            Service::Postgres => "OUTBOX_TEST_POSTGRES_URL",
            Service::MySql => "OUTBOX_TEST_MYSQL_URL",
            Service::Nats => "OUTBOX_TEST_NATS_URL",
            Service::Amqp => "OUTBOX_TEST_AMQP_URL",
            Service::Kafka => "OUTBOX_TEST_KAFKA_URL",
            Service::Sqs => "OUTBOX_TEST_SQS_URL",
        }
    }

    /// The local service's URL (what `scripts/services.sh` starts).
    pub fn default_url(self) -> &'static str {
        match self {
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Service::MySql => "mysql://root@127.0.0.1:3306/test",
            Service::Nats => "nats://127.0.0.1:4222",
            Service::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Service::Kafka => "kafka://127.0.0.1:9092",
            Service::Sqs => "http://127.0.0.1:4566",
        }
    }
}

/// The URL of a service an integration test needs, or an early `return` from that test.
///
/// `let url = outbox_core::service_or_skip!("test name", Postgres);` (a [`Service`]) or
/// `service_or_skip!("test name", "ENV_VAR", "default://url")` is [`service_url`] with its
/// `None` turned into `return` (after it printed the skip, or panicked under
/// `OUTBOX_REQUIRE_SERVICES=1`). For tests whose body returns `()`. Several services at
/// once: `let [pg, nats] = service_or_skip!("test name", [Postgres, Nats]);`.
#[macro_export]
macro_rules! service_or_skip {
    ($name:expr, [$($service:ident),+ $(,)?]) => {
        [$($crate::service_or_skip!($name, $service)),+]
    };
    ($name:expr, $service:ident $(,)?) => {
        $crate::service_or_skip!(
            $name,
            $crate::testkit::Service::$service.env_var(),
            $crate::testkit::Service::$service.default_url(),
        )
    };
    ($name:expr, $env_var:expr, $default_url:expr $(,)?) => {
        match $crate::testkit::service_url($name, $env_var, $default_url).await {
            ::core::option::Option::Some(url) => url,
            ::core::option::Option::None => return,
        }
    };
}

/// Finds a service for an integration test.
///
/// Reads the URL from `env_var` (falling back to `default_url`), and checks that its host
/// and port accept a TCP connection within two seconds. Returns the URL if so. If not, it
/// prints that the test `name` is skipped and returns `None`, or panics when
/// [`services_required`].
pub async fn service_url(name: &str, env_var: &str, default_url: &str) -> Option<String> {
    let url = std::env::var(env_var).unwrap_or_else(|_| default_url.to_owned());
    let addr = host_port(&url);
    let reachable = match &addr {
        Some(addr) => matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(addr.as_str())
            )
            .await,
            Ok(Ok(_))
        ),
        None => false,
    };
    if reachable {
        return Some(url);
    }
    let shown = addr.unwrap_or_else(|| "<no host:port in URL>".to_owned());
    if services_required() {
        panic!(
            "{name}: service at {shown} (from {env_var} or its default) is not reachable, and {REQUIRE_SERVICES_VAR}=1"
        );
    }
    // Written to the stderr handle, not with eprintln!, so the test harness does not
    // capture it: a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {name}: no service at {shown}; set {env_var} or start it (scripts/test.sh does)"
    );
    None
}

/// `host:port` of a URL such as `postgres://user:pw@127.0.0.1:5432/db` or `nats://h:4222`.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = hostport.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    Some(format!("{host}:{port}"))
}

/// A name for an isolated test resource: `prefix_` and 10 random lowercase letters and
/// digits, valid as an SQL identifier, topic, subject token or queue name.
pub fn unique_name(prefix: &str) -> String {
    let mut rng = fastrand::Rng::new();
    let suffix: String = (0..10)
        .map(|_| rng.alphanumeric().to_ascii_lowercase())
        .collect();
    format!("{prefix}_{suffix}")
}

/// Runs one named check, printing its name, so a failure in a long suite says where.
pub(crate) async fn step<F: std::future::Future<Output = ()>>(suite: &str, name: &str, f: F) {
    eprintln!("[{suite}] {name} ...");
    f.await;
    eprintln!("[{suite}] {name} ok");
}

/// A plain `order.placed` event for `key` to `destination`, with `{"n": n}` as its JSON
/// payload: what most service tests publish.
pub fn order_event(destination: &str, key: &str, n: usize) -> crate::Envelope {
    crate::Envelope::builder("order", key, "order.placed", destination)
        .json(&serde_json::json!({ "n": n }))
        .build()
        .expect("a valid test envelope")
}

/// Relay settings for service tests: batches of 50, two in flight, a 10 s lease, a 5 s
/// publish timeout, and polls every 20 ms (200 ms at most) so tests finish quickly.
pub fn fast_relay_config() -> crate::RelayConfig {
    crate::RelayConfig {
        batch_size: 50,
        concurrency: 2,
        lease: std::time::Duration::from_secs(10),
        publish_timeout: std::time::Duration::from_secs(5),
        poll_interval: std::time::Duration::from_millis(20),
        max_poll_interval: std::time::Duration::from_millis(200),
        ..crate::RelayConfig::default()
    }
}

/// An event for round-trip tests: times cut to whole microseconds (what every database
/// keeps), a user header and a W3C trace context, so that a row read back through any store
/// must compare equal to the envelope written, field for field.
pub fn round_trip_event(key: &str, n: usize, destination: &str) -> crate::Envelope {
    use chrono::DurationRound as _;
    let now = chrono::Utc::now()
        .duration_trunc(chrono::Duration::microseconds(1))
        .unwrap_or_else(|_| chrono::Utc::now());
    crate::Envelope::builder("order", key, "order.placed", destination)
        .with_created_at(now)
        .with_header("x-tenant", "acme")
        .with_trace(
            crate::TraceContext::new(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                None,
            )
            .expect("a valid traceparent"),
        )
        .json(&serde_json::json!({ "n": n }))
        .build()
        .expect("a valid test envelope")
}

/// Drains `store` through a [`crate::Relay`] into an [`crate::InMemoryPublisher`] and asserts
/// that exactly `want` was published, field for field, whatever the order: the check of every
/// mixed-stack test (events written by one client, relayed by another store).
pub async fn assert_relays_exactly<S>(store: S, want: &[crate::Envelope])
where
    S: crate::Store + 'static,
{
    let publisher = crate::InMemoryPublisher::new();
    let relay =
        crate::Relay::new(store, publisher.clone(), fast_relay_config()).expect("a valid relay");
    let report = relay.drain().await.expect("the relay drains");
    assert_eq!(report.published, want.len(), "events published");
    let mut got: Vec<crate::Envelope> = publisher
        .deliveries()
        .into_iter()
        .map(|d| d.envelope)
        .collect();
    got.sort_by_key(crate::Envelope::id);
    let mut want = want.to_vec();
    want.sort_by_key(crate::Envelope::id);
    assert_eq!(
        got, want,
        "exactly the committed envelopes, field for field"
    );
}

/// A relay running in a task of its own until [`RunningRelay::stop`], as a process runs it.
pub struct RunningRelay {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<crate::BatchReport>,
}

impl RunningRelay {
    /// Spawns `relay.run_until(..)` on the current runtime.
    pub fn spawn<S, P>(relay: crate::Relay<S, P>) -> RunningRelay
    where
        S: crate::Store + 'static,
        P: crate::Publisher + 'static,
    {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(relay.run_until(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        RunningRelay { stop, task }
    }

    /// Asks the relay to shut down and waits for its report of everything it did.
    pub async fn stop(self) -> crate::BatchReport {
        let _ = self.stop.send(true);
        self.task
            .await
            .expect("the relay task ends without a panic")
    }
}

/// Waits until `store` has nothing pending or in flight, checking every 50 ms; panics with
/// the last stats after `within`.
pub async fn wait_until_drained<S: crate::StoreStats>(store: &S, within: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = store.stats().await.expect("backlog stats");
        if s.pending == 0 && s.in_flight == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not drain the store in {within:?}: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parses_urls() {
        for (url, want) in [
            ("postgres://u:p@127.0.0.1:5432/test", "127.0.0.1:5432"),
            ("mysql://root@localhost:3306/test?x=1", "localhost:3306"),
            ("nats://127.0.0.1:4222", "127.0.0.1:4222"),
            ("127.0.0.1:9092", "127.0.0.1:9092"),
        ] {
            assert_eq!(host_port(url).as_deref(), Some(want), "{url}");
        }
        assert_eq!(host_port("sqlite::memory:"), None);
    }

    #[test]
    fn unique_names_are_identifiers() {
        let a = unique_name("t");
        assert!(crate::schema::TableName::parse(&a).is_ok(), "{a}");
        assert_ne!(a, unique_name("t"));
    }
}
