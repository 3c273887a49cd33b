//! Commit-to-broker latency at a steady offered load: writers commit events at a fixed
//! rate, the relay (wired as `outbox run` wires it) moves them to JetStream, and a plain NATS
//! subscriber on the subject notes when each arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use outbox_core::transport;
use outbox_sqlx::postgres::PgNotifier;
use tokio::sync::Semaphore;

use crate::Res;
use crate::broker::Dest;
use crate::db::{Fixture, event};
use crate::drive::{Running, wire};

/// Latency percentiles of one run.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Worst, ms.
    pub max: f64,
    /// Events committed.
    pub committed: usize,
    /// Offered load achieved, events per second.
    pub achieved_rate: f64,
}

/// How committed events reach the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// Outbox table, found by the relay's polling.
    Polling,
    /// Outbox table, each commit followed by a `PgNotifier` poke.
    Notify,
    /// `emit` into the WAL, read by a CDC source (message mode).
    Cdc,
}

/// The relay of one latency run.
enum Relay {
    Polling(Running),
    Cdc(Box<crate::cdc::Running>),
}

/// The value at quantile `q` of sorted `xs`.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let i = ((xs.len() as f64 - 1.0) * q).round() as usize;
    xs[i.min(xs.len() - 1)]
}

/// Writers commit `rate` events per second for `secs`, a transaction every 2 ms carrying
/// the events due by then, fed to the relay as `feed` says; with [`Feed::Notify`], each
/// commit pokes a [`PgNotifier`] (the polling relay, wired as `outbox run` wires it,
/// always listens). Waits for every committed event to arrive (up to 30 s).
pub async fn measure(fx: &Fixture, dest: &Dest, rate: f64, secs: f64, feed: Feed) -> Res<Latency> {
    let pool = fx.pg()?.clone();
    let client = async_nats::connect(&dest.urls().nats).await?;
    let mut sub = client.subscribe(dest.destination.clone()).await?;
    client.flush().await?;
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let collector = {
        let arrived = Arc::clone(&arrived);
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let now = Instant::now();
                let id = m.headers.as_ref().and_then(|h| {
                    transport::event_id(
                        h.iter()
                            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_ref(), v.as_str()))),
                    )
                });
                if let (Some(id), Ok(mut map)) = (id, arrived.lock()) {
                    map.entry(id.to_string()).or_insert(now);
                }
            }
        })
    };

    // The relay is wired as `outbox run` wires it, LISTEN included; only the writers
    // differ: with the notifier they wake it after each commit, without it the relay's
    // polling finds their rows.
    let running = match feed {
        Feed::Cdc => Relay::Cdc(Box::new(
            crate::cdc::prepare(fx, dest, crate::cdc::Mode::Message)
                .await?
                .spawn()
                .await?,
        )),
        Feed::Polling | Feed::Notify => Relay::Polling(Running::spawn(
            wire(fx, crate::drive::Target::Broker(dest), "")
                .await?
                .relay,
        )),
    };
    let notifier =
        (feed == Feed::Notify).then(|| PgNotifier::spawn(pool.clone(), &fx.table, Duration::ZERO));
    let prefix = fx.container().to_owned();
    // Let the relay reach its idle state first, as a running service would be.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let writers = Arc::new(Semaphore::new(16));
    let tick = Duration::from_millis(2);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut owed = 0.0;
    let mut next = 0usize;
    let mut tasks = Vec::new();
    while start.elapsed().as_secs_f64() < secs {
        interval.tick().await;
        owed += rate * tick.as_secs_f64();
        let k = owed.floor() as usize;
        if k == 0 {
            continue;
        }
        owed -= k as f64;
        let events = (next..next + k)
            .map(|i| event(i, 1000, &dest.destination))
            .collect::<Res<Vec<_>>>()?;
        next += k;
        let permit = Arc::clone(&writers).acquire_owned().await?;
        let (committed, notifier, fx_pool, table, prefix) = (
            Arc::clone(&committed),
            notifier.clone(),
            pool.clone(),
            fx.table.clone(),
            prefix.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let mut tx = fx_pool.begin().await?;
            if feed == Feed::Cdc {
                outbox_sqlx::postgres::emit_with_prefix(&mut tx, &prefix, &events).await?;
            } else {
                outbox_sqlx::postgres::PgOutbox::new(table)
                    .enqueue_all(&mut tx, &events)
                    .await?;
            }
            tx.commit().await?;
            let now = Instant::now();
            if let Some(n) = &notifier {
                n.notify();
            }
            if let Ok(mut map) = committed.lock() {
                for e in &events {
                    map.insert(e.id().to_string(), now);
                }
            }
            Ok::<(), crate::BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let wrote_for = start.elapsed().as_secs_f64();
    let total = committed.lock().map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let got = arrived.lock().map(|m| m.len()).unwrap_or(0);
        if got >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match running {
        Relay::Polling(r) => r.stop().await?,
        Relay::Cdc(r) => r.stop().await?,
    }
    collector.abort();

    let committed = committed.lock().map_err(|_| "lock poisoned")?.clone();
    let arrived = arrived.lock().map_err(|_| "lock poisoned")?.clone();
    let mut ms: Vec<f64> = Vec::with_capacity(committed.len());
    let mut missing = 0usize;
    for (id, at) in &committed {
        match arrived.get(id) {
            // A message can arrive before the writer saw its commit return: count 0.
            Some(got) => ms.push(got.saturating_duration_since(*at).as_secs_f64() * 1000.0),
            None => missing += 1,
        }
    }
    if missing > 0 {
        return Err(format!(
            "{missing} of {} committed events never reached {} within 30 s",
            committed.len(),
            dest.name
        )
        .into());
    }
    ms.sort_by(f64::total_cmp);
    Ok(Latency {
        p50: quantile(&ms, 0.50),
        p99: quantile(&ms, 0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
        committed: committed.len(),
        achieved_rate: committed.len() as f64 / wrote_for,
    })
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_of_a_sorted_sample() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), 51.0);
        assert_eq!(quantile(&xs, 0.99), 99.0);
        assert_eq!(quantile(&xs, 1.0), 100.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
