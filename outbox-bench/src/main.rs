#![doc = include_str!("../README.md")]

mod broker;
mod cdc;
mod db;
mod drive;
mod latency;
mod report;
mod sections;

use std::process::ExitCode;

/// Any error, with a message that says where.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Results of the benchmark's steps.
pub type Res<T> = Result<T, BoxError>;

/// The services, from the same variables the test suite reads.
#[derive(Clone, Debug)]
pub struct Urls {
    /// PostgreSQL.
    pub postgres: String,
    /// MariaDB.
    pub mysql: String,
    /// NATS.
    pub nats: String,
    /// RabbitMQ.
    pub amqp: String,
    /// Kafka (`kafka://host:port`).
    pub kafka: String,
}

impl Urls {
    fn from_env() -> Urls {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Urls {
            postgres: var(
                "OUTBOX_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            mysql: var("OUTBOX_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
            nats: var("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222"),
            amqp: var(
                "OUTBOX_TEST_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            kafka: var("OUTBOX_TEST_KAFKA_URL", "kafka://127.0.0.1:9092"),
        }
    }
}

/// `OUTBOX_BENCH_SCALE`: multiplies every event count and duration (default 1).
#[derive(Clone, Copy, Debug)]
pub struct Scale(pub f64);

impl Scale {
    fn from_env() -> Res<Scale> {
        match std::env::var("OUTBOX_BENCH_SCALE") {
            Err(_) => Ok(Scale(1.0)),
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Ok(Scale(s)),
                _ => Err(format!(
                    "OUTBOX_BENCH_SCALE = {v:?}: expected a positive number such as 0.1"
                )
                .into()),
            },
        }
    }

    /// `n` events scaled, at least 200.
    pub fn events(self, n: usize) -> usize {
        ((n as f64 * self.0) as usize).max(200)
    }

    /// `secs` seconds scaled, at least 1 s.
    pub fn secs(self, secs: f64) -> f64 {
        (secs * self.0).max(1.0)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The memory section runs the relay as a child process of this binary, so its peak
    // RSS is the relay's alone: `outbox-bench relay-child CONFIG` is `outbox run`.
    if args.get(1).map(String::as_str) == Some("relay-child") {
        return relay_child(args.get(2).map(String::as_str));
    }
    if args.len() > 1 {
        eprintln!(
            "usage: outbox-bench   (settings by environment: OUTBOX_BENCH_SCALE, OUTBOX_BENCH_ONLY, OUTBOX_TEST_*_URL; see the crate README)"
        );
        return ExitCode::from(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outbox-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sections::run_all(Urls::from_env())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn relay_child(config: Option<&str>) -> ExitCode {
    let Some(config) = config else {
        eprintln!("usage: outbox-bench relay-child CONFIG");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outbox-bench relay-child: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(outbox_relay::commands::run(std::path::Path::new(config))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-bench relay-child: {e}");
            ExitCode::FAILURE
        }
    }
}
