//! Driving the real relay: the `[sources.*]` / `[publishers.*]` configuration a user would
//! write for `outbox run`, parsed by the relay's own config code and wired by the same
//! functions `outbox run` calls (`open_source`, `open_router`, `source_relay`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::{CountingMetrics, Envelope, PublishOutcome, Publisher};
use outbox_relay::Router;
use outbox_relay::commands::{open_router, open_source, source_relay};
use outbox_relay::config::Config;

use crate::Res;
use crate::broker::Dest;
use crate::db::Fixture;

/// Where the relay publishes.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A real broker destination.
    Broker(&'a Dest),
    /// A publisher that acknowledges at once: the relay's claim+mark cost alone.
    Null,
}

/// A publisher that acknowledges every event at once, without I/O.
#[derive(Clone, Copy, Debug)]
pub struct NullPublisher;

impl Publisher for NullPublisher {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        events.iter().map(|_| PublishOutcome::Published).collect()
    }

    fn ordered_runs(&self) -> bool {
        true
    }
}

/// The configuration text `outbox run` would read for this case.
pub fn config_text(fx: &Fixture, target: Target<'_>, relay: &str) -> String {
    let publisher = match target {
        Target::Broker(d) => d.publisher_toml(),
        Target::Null => "kind = \"stdout\"\n".to_owned(),
    };
    format!(
        "default_publisher = \"bench\"\n\n[sources.bench]\nurl = \"{}\"\ntable = \"{}\"\n\n[sources.bench.relay]\n{relay}\n\n[publishers.bench]\n{publisher}",
        fx.url, fx.table
    )
}

/// What one relay run did.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Events published.
    pub published: u64,
    /// Wall time until the last expected event was published, or until the cap.
    pub secs: f64,
    /// Whether every expected event was published before the cap.
    pub complete: bool,
    /// CPU seconds this process used meanwhile (the relay is all it runs).
    pub cpu_secs: f64,
    /// Share of the machine's CPU time busy meanwhile (all processes: relay, database,
    /// broker), 0 to 1.
    pub machine_busy: f64,
}

impl Outcome {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.published as f64 / self.secs.max(1e-9)
    }
}

/// Process CPU time (user + system), in seconds, from `/proc/self/stat`.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in USER_HZ (100 per second on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's CPU counters from `/proc/stat`: (busy, total) jiffies over all cores.
pub fn machine_cpu() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0, 0);
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The busy share between two [`machine_cpu`] readings.
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / total as f64
}

/// A relay wired as `outbox run` wires it, with its counters.
pub struct Wired {
    /// The relay.
    pub relay: outbox_core::Relay<outbox_sqlx::AnyStore, Arc<Router>>,
    /// Its counters.
    pub metrics: Arc<CountingMetrics>,
}

/// A relay running on a task of its own until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<outbox_core::BatchReport>,
}

impl Running {
    /// Starts `relay` with `run_until`, as `outbox run` does.
    pub fn spawn(relay: outbox_core::Relay<outbox_sqlx::AnyStore, Arc<Router>>) -> Running {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(relay.run_until(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        Running { stop, task }
    }

    /// Asks the relay to stop and waits until it has (in-flight batches finish first).
    pub async fn stop(self) -> Res<()> {
        let _ = self.stop.send(true);
        self.task.await?;
        Ok(())
    }
}

/// Builds the relay for `fx` to `target` with extra `[sources.bench.relay]` lines.
pub async fn wire(fx: &Fixture, target: Target<'_>, relay: &str) -> Res<Wired> {
    let text = config_text(fx, target, relay);
    let config = Config::parse(&text, "benchmark case", std::iter::empty())?;
    let router = match target {
        Target::Broker(_) => open_router(&config).await?,
        Target::Null => Arc::new(Router::new(
            vec![("bench".to_owned(), Arc::new(NullPublisher))],
            &[],
            Some("bench"),
        )),
    };
    let source = config
        .sources
        .get("bench")
        .ok_or("benchmark config lost its source")?;
    let store = open_source("bench", source).await?;
    let metrics = Arc::new(CountingMetrics::default());
    let relay = source_relay("bench", source, store, router, Arc::clone(&metrics)).await?;
    Ok(Wired { relay, metrics })
}

/// Waits until `metrics` count `expected` events published (or dead) or `cap` has passed
/// since `start`; whether they all were, and the seconds since `start`.
pub async fn until_published(
    metrics: &CountingMetrics,
    start: Instant,
    expected: u64,
    cap: Duration,
) -> (bool, f64) {
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let m = metrics.snapshot();
        if m.published + m.dead_lettered >= expected {
            return (true, start.elapsed().as_secs_f64());
        }
        if start.elapsed() >= cap {
            return (false, start.elapsed().as_secs_f64());
        }
    }
}

/// Runs the relay until `expected` events are published or `cap` has passed.
pub async fn drive(
    fx: &Fixture,
    target: Target<'_>,
    relay: &str,
    expected: u64,
    cap: Duration,
) -> Res<Outcome> {
    let Wired { relay, metrics } = wire(fx, target, relay).await?;
    let cpu0 = cpu_seconds();
    let machine0 = machine_cpu();
    let start = Instant::now();
    let running = Running::spawn(relay);
    let (complete, secs) = until_published(&metrics, start, expected, cap).await;
    let cpu_secs = cpu_seconds() - cpu0;
    let machine_busy = busy_share(machine0, machine_cpu());
    running.stop().await?;
    valid_outcome(
        &metrics.snapshot(),
        &format!("the relay on {}", fx.table),
        (complete, secs, cpu_secs, machine_busy),
    )
}

/// The [`Outcome`] of a drain whose relay reported `m`, given (complete, seconds, process
/// CPU seconds, machine busy share); an error naming `relay` if it retried or
/// dead-lettered anything (the drain is then not a clean measurement).
pub fn valid_outcome(
    m: &outbox_core::metrics::MetricsSnapshot,
    relay: &str,
    (complete, secs, cpu_secs, machine_busy): (bool, f64, f64, f64),
) -> Res<Outcome> {
    if m.dead_lettered > 0 || m.retried > 0 {
        return Err(format!(
            "{relay} dead-lettered {} and retried {} events: the run is invalid",
            m.dead_lettered, m.retried
        )
        .into());
    }
    Ok(Outcome {
        published: m.published,
        secs,
        complete,
        cpu_secs,
        machine_busy,
    })
}

/// Checks that the broker holds at least `published` messages (exactly, when
/// `exact`): a relay that marked rows without the broker taking them would fail here.
pub async fn check_broker(dest: &Dest, published: u64, exact: bool) -> Res<()> {
    // The broker may count acknowledged messages a moment later (RabbitMQ queue stats).
    let mut held = 0;
    for _ in 0..50 {
        held = dest
            .count(if exact { published + 1 } else { published })
            .await?;
        if held >= published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if held < published || (exact && held != published) {
        return Err(format!(
            "{} {} holds {held} messages, the relay reported {published} published",
            dest.broker.label(),
            dest.name
        )
        .into());
    }
    Ok(())
}

/// The naive baseline, as a first outbox poller is written: select pending rows, publish
/// them one at a time to JetStream awaiting each acknowledgement, mark each row, sleep 1 s
/// when nothing is pending. Runs until `expected` rows are published or `cap`.
pub async fn naive_poller(fx: &Fixture, dest: &Dest, expected: u64, cap: Duration) -> Res<Outcome> {
    let pool = fx.pg()?;
    let js = crate::broker::nats(dest.urls()).await?;
    let t = fx.quoted();
    let select =
        format!("SELECT id, destination, payload FROM {t} WHERE status = 0 ORDER BY seq LIMIT 100");
    let mark = format!("UPDATE {t} SET status = 2, processed_at = now() WHERE id = $1");
    let cpu0 = cpu_seconds();
    let machine0 = machine_cpu();
    let start = Instant::now();
    let mut published = 0u64;
    'outer: while published < expected && start.elapsed() < cap {
        let rows: Vec<(uuid::Uuid, String, Vec<u8>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(select.clone()))
                .fetch_all(pool)
                .await?;
        if rows.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        for (id, destination, payload) in rows {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id.to_string());
            js.publish_with_headers(destination, h, payload.into())
                .await
                .map_err(|e| format!("JetStream publish: {e}"))?
                .await
                .map_err(|e| format!("JetStream ack: {e}"))?;
            sqlx::query(sqlx::AssertSqlSafe(mark.clone()))
                .bind(id)
                .execute(pool)
                .await?;
            published += 1;
            if published >= expected || start.elapsed() >= cap {
                break 'outer;
            }
        }
    }
    Ok(Outcome {
        published,
        secs: start.elapsed().as_secs_f64(),
        complete: published >= expected,
        cpu_secs: cpu_seconds() - cpu0,
        machine_busy: busy_share(machine0, machine_cpu()),
    })
}
