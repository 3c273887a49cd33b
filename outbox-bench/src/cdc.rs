//! CDC cases: a `[cdc.bench]` source on a PostgreSQL fixture, wired and run exactly as
//! `outbox run` runs it (`outbox_relay::cdc`), to a benchmark destination.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::CountingMetrics;
use outbox_relay::Config;
use outbox_relay::cdc::CdcSource;
use outbox_relay::commands::open_router;

use crate::Res;
use crate::broker::Dest;
use crate::db::{Fixture, event};
use crate::drive::{Outcome, busy_share, cpu_seconds, machine_cpu, until_published, valid_outcome};

/// Which CDC mode a case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `emit`: logical decoding messages, no outbox table.
    Message,
    /// The outbox table's inserts, marked published in bulk.
    Table,
}

impl Mode {
    /// For the table.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Message => "message mode (emit)",
            Mode::Table => "table mode (outbox inserts)",
        }
    }
}

/// The configuration `outbox run` would read: slot and prefix are the fixture's own name.
fn config_text(fx: &Fixture, dest: &Dest, mode: Mode) -> String {
    let name = fx.container();
    let mode_lines = match mode {
        Mode::Message => format!(
            "mode = \"message\"\nprefix = \"{name}\"\ndead_letter_table = \"{name}.dead_letters\""
        ),
        Mode::Table => format!("mode = \"table\"\ntable = \"{}\"", fx.table),
    };
    // The polling relay reads the same database without TLS (its sqlx is built without
    // it), so the replication connection goes without too: the comparison is of relays,
    // not of transports (with the default `prefer`, the walsender encrypts every change).
    let separator = if fx.url.contains('?') { '&' } else { '?' };
    format!(
        "default_publisher = \"bench\"\n\n[cdc.bench]\nurl = \"{}{separator}sslmode=disable\"\nslot = \"{name}\"\n{mode_lines}\n\n[publishers.bench]\n{}",
        fx.url,
        dest.publisher_toml()
    )
}

/// A CDC source created (slot, publication, ledger table) and not running yet.
pub struct Prepared {
    source: CdcSource,
    config: Config,
}

/// Opens and migrates the source: the slot starts at the current end of the WAL, so what
/// is written after this is what the relay will read.
pub async fn prepare(fx: &Fixture, dest: &Dest, mode: Mode) -> Res<Prepared> {
    let text = config_text(fx, dest, mode);
    let config = Config::parse(&text, "benchmark CDC case", std::iter::empty())?;
    let c = config
        .cdc
        .get("bench")
        .ok_or("benchmark config lost its source")?;
    let source = outbox_relay::cdc::open("bench", c).await?;
    source.migrate().await?;
    Ok(Prepared { source, config })
}

/// A CDC source running on a task of its own until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    source: CdcSource,
    /// Its counters.
    pub metrics: Arc<CountingMetrics>,
}

impl Prepared {
    /// Drops the slot and publication without relaying.
    pub async fn discard(self) -> Res<()> {
        self.source.spec.drop_all(&self.source.pool).await?;
        Ok(())
    }

    /// Starts relaying, as `outbox run` does.
    pub async fn spawn(self) -> Res<Running> {
        let router = open_router(&self.config).await?;
        let metrics = Arc::new(CountingMetrics::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(
            self.source
                .clone()
                .run(router, Arc::clone(&metrics), stop_rx),
        );
        Ok(Running {
            stop,
            task,
            source: self.source,
            metrics,
        })
    }
}

impl Running {
    /// Stops the relay and drops the slot and publication.
    pub async fn stop(self) -> Res<()> {
        let _ = self.stop.send(true);
        self.task.await?;
        self.source.spec.drop_all(&self.source.pool).await?;
        Ok(())
    }
}

/// Writes `n` events over `keys` keys in transactions of 100: emitted (message mode) or
/// enqueued (table mode).
pub async fn backlog(
    fx: &Fixture,
    mode: Mode,
    n: usize,
    keys: usize,
    destination: &str,
) -> Res<()> {
    let pool = fx.pg()?;
    let outbox = outbox_sqlx::postgres::PgOutbox::new(fx.table.clone());
    let mut start = 0;
    while start < n {
        let end = (start + 100).min(n);
        let events = (start..end)
            .map(|i| event(i, keys, destination))
            .collect::<Res<Vec<_>>>()?;
        let mut tx = pool.begin().await?;
        match mode {
            Mode::Message => {
                outbox_sqlx::postgres::emit_with_prefix(&mut tx, fx.container(), &events).await?
            }
            Mode::Table => outbox.enqueue_all(&mut tx, &events).await?,
        }
        tx.commit().await?;
        start = end;
    }
    Ok(())
}

/// Drains a backlog of `expected` events written after `prepared` (see [`backlog`]): runs
/// the relay until all are published or `cap` has passed.
pub async fn drain(prepared: Prepared, expected: u64, cap: Duration) -> Res<Outcome> {
    let cpu0 = cpu_seconds();
    let machine0 = machine_cpu();
    let start = Instant::now();
    let running = prepared.spawn().await?;
    let (complete, secs) = until_published(&running.metrics, start, expected, cap).await;
    let cpu_secs = cpu_seconds() - cpu0;
    let machine_busy = busy_share(machine0, machine_cpu());
    let m = running.metrics.snapshot();
    running.stop().await?;
    valid_outcome(
        &m,
        "the CDC relay",
        (complete, secs, cpu_secs, machine_busy),
    )
}
