//! The benchmark's sections, each adding rows to the one table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::broker::{Broker, Dest};
use crate::db::{Db, Fixture, event};
use crate::drive::{
    Outcome, Target, busy_share, check_broker, config_text, cpu_seconds, drive, machine_cpu,
    naive_poller,
};
use crate::report::{Goal, Report, Row, millis, per_sec, thousands};
use crate::{Res, Scale, Urls, latency};

/// Section names for `OUTBOX_BENCH_ONLY`, in the order they run.
pub const SECTIONS: &[&str] = &[
    "ceiling", "claim", "drain", "keys", "latency", "write", "cdc", "idle", "memory",
];

/// What the sections share: settings, figures later sections compare against, the table.
struct Ctx {
    urls: Urls,
    scale: Scale,
    report: Report,
    /// Claim+mark alone (null publisher), per database.
    claim_mark: HashMap<Db, f64>,
    /// The broker client's own pipelined loop, per broker.
    raw: HashMap<Broker, f64>,
    /// PG -> JetStream drain at 1000 keys, default settings (the reference for other sections).
    pg_nats: Option<Outcome>,
    /// The polling relay's drains from PostgreSQL, per broker (the CDC section's baseline).
    pg_drains: HashMap<Broker, Outcome>,
    /// `OUTBOX_BENCH_RELAY`: extra `[sources.*.relay]` lines for the ceiling and drain cases.
    relay: String,
}

fn row(section: &str, case: impl Into<String>, figure: impl Into<String>) -> Row {
    Row {
        section: section.to_owned(),
        case: case.into(),
        figure: figure.into(),
        baseline: String::new(),
        ratio: None,
        goal: None,
    }
}

fn cap(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

/// A drain's figure: the rate, and how far it got if the cap cut it short.
fn drain_figure(o: &Outcome, expected: usize) -> String {
    let cpu = format!("CPU {:.0} %", o.machine_busy * 100.0);
    if o.complete {
        format!("{} ({cpu})", per_sec(o.rate()))
    } else {
        format!(
            "{} (cut at {:.0} s: {} of {}; {cpu})",
            per_sec(o.rate()),
            o.secs,
            thousands(o.published as f64),
            thousands(expected as f64)
        )
    }
}

/// After a complete drain every row is published and none is left or dead.
async fn check_rows(fx: &Fixture, o: &Outcome, n: usize) -> Res<()> {
    if !o.complete {
        return Ok(());
    }
    let (unfinished, published, dead) = fx.counts().await?;
    if unfinished != 0 || dead != 0 || published != n as i64 {
        return Err(format!(
            "{}: after the drain {unfinished} rows are unfinished, {published} published, {dead} dead (expected {n} published)",
            fx.table
        )
        .into());
    }
    Ok(())
}

/// Runs the sections `OUTBOX_BENCH_ONLY` selects (all by default) and prints the table.
pub async fn run_all(urls: Urls) -> Res<()> {
    let scale = Scale::from_env()?;
    let only: Option<Vec<String>> = match std::env::var("OUTBOX_BENCH_ONLY") {
        Ok(v) if !v.trim().is_empty() => {
            let names: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
            for n in &names {
                if !SECTIONS.contains(&n.as_str()) {
                    return Err(format!(
                        "OUTBOX_BENCH_ONLY names {n:?}, which is not a section; sections: {}",
                        SECTIONS.join(", ")
                    )
                    .into());
                }
            }
            Some(names)
        }
        _ => None,
    };
    let want = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    eprintln!(
        "outbox-bench: scale {} (OUTBOX_BENCH_SCALE), sections: {}",
        scale.0,
        SECTIONS
            .iter()
            .filter(|s| want(s))
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    );
    let started = Instant::now();
    let mut c = Ctx {
        urls,
        scale,
        report: Report::default(),
        claim_mark: HashMap::new(),
        raw: HashMap::new(),
        pg_nats: None,
        pg_drains: HashMap::new(),
        relay: std::env::var("OUTBOX_BENCH_RELAY").unwrap_or_default(),
    };
    if !c.relay.trim().is_empty() {
        let relay = c.relay.clone();
        c.report.note(format!(
            "ceiling and drain cases ran with OUTBOX_BENCH_RELAY = {relay:?} (not the defaults)"
        ));
    }
    if want("ceiling") {
        ceiling(&mut c).await?;
    }
    if want("claim") {
        claim_cost(&mut c).await?;
    }
    if want("drain") {
        drain(&mut c).await?;
    }
    if want("keys") {
        keys(&mut c).await?;
    }
    if want("latency") {
        latency_section(&mut c).await?;
    }
    if want("write") {
        write_cost(&mut c).await?;
    }
    if want("cdc") {
        cdc_section(&mut c).await?;
    }
    if want("idle") {
        idle(&mut c).await?;
    }
    if want("memory") {
        memory(&mut c).await?;
    }
    let wall = started.elapsed().as_secs_f64();
    let missed = c.report.missed();
    c.report.note(format!(
        "scale {}, wall time {wall:.0} s; {missed} goal(s) missed",
        c.scale.0
    ));
    println!("{}", c.report.render());
    Ok(())
}

/// Holds the head of every key with pending rows under a foreign lease for an hour.
fn hold_heads_sql(fx: &Fixture) -> String {
    let t = fx.quoted();
    let until = match fx.db {
        Db::Postgres => "now() + interval '1 hour'".to_owned(),
        Db::Maria => "UTC_TIMESTAMP(6) + INTERVAL 1 HOUR".to_owned(),
        Db::Sqlite => "(CAST(strftime('%s', 'now') AS INTEGER) + 3600) * 1000000".to_owned(),
    };
    format!(
        "UPDATE {t} SET status = 1, lease_token = 1, lease_until = {until} WHERE seq IN \
         (SELECT seq FROM (SELECT min(seq) AS seq FROM {t} WHERE status = 0 GROUP BY ordering_key) h)"
    )
}

/// Median and largest of `n` timed claims of 100 rows, each released again (so every claim
/// sees the same backlog). Returns (median ms, max ms, rows per claim).
async fn time_claims(store: &outbox_sqlx::AnyStore, n: usize) -> Res<(f64, f64, usize)> {
    use outbox_core::store::Store;
    let mut ms = Vec::with_capacity(n);
    let mut rows = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        let claim = store.claim(100, Duration::from_secs(30)).await?;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        rows = claim.len();
        let ids: Vec<_> = claim.events.iter().map(|e| e.envelope.id()).collect();
        store.release(&claim.lease, &ids).await?;
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[ms.len() - 1], rows))
}

/// The cost of one claim of 100 over a 100k backlog on 1000 keys: with every key free, and
/// with every key's head in flight (nothing to take); PostgreSQL also on a freshly
/// truncated, never analysed table holding 100k published rows.
async fn claim_cost(c: &mut Ctx) -> Res<()> {
    let backlog = c.scale.events(100_000);
    let cases: [(Db, bool); 4] = [
        (Db::Postgres, false),
        (Db::Postgres, true),
        (Db::Maria, false),
        (Db::Sqlite, false),
    ];
    for (db, fresh) in cases {
        let state = if fresh {
            "freshly truncated, never analysed, 100k published rows"
        } else {
            "analysed"
        };
        eprintln!("[claim] {}, {state}", db.label());
        let fx = Fixture::new(db, &c.urls, "claim").await?;
        let t = fx.quoted();
        if fresh {
            fx.execute(format!("ALTER TABLE {t} SET (autovacuum_enabled = false)"))
                .await?;
            fx.execute(format!("TRUNCATE {t}")).await?;
            published_history(&fx, c.scale.events(100_000)).await?;
        }
        fx.fill(backlog, 1000, "claim").await?;
        if !fresh {
            fx.execute(match db {
                Db::Postgres | Db::Sqlite => format!("ANALYZE {t}"),
                Db::Maria => format!("ANALYZE TABLE {t}"),
            })
            .await?;
        }
        let store = outbox_sqlx::AnyStore::connect(&fx.url, fx.table.clone(), 4).await?;
        let (free_med, _, free_rows) = time_claims(&store, 20).await?;
        fx.execute(hold_heads_sql(&fx)).await?;
        let (held_med, held_max, held_rows) = time_claims(&store, 20).await?;
        fx.drop_all().await?;
        if held_rows != 0 {
            return Err(format!(
                "claim case: {held_rows} rows claimed while every key's head was held"
            )
            .into());
        }
        let mut r = row(
            "claim",
            format!(
                "{}, {state}: claim of 100 with every key's head in flight, {} pending on 1000 keys",
                db.label(),
                thousands(backlog as f64)
            ),
            format!("median {} / max {}", millis(held_med), millis(held_max)),
        );
        r.baseline = format!(
            "a claim of 100 with every key free ({} rows, median {})",
            free_rows,
            millis(free_med)
        );
        r.ratio = Some(held_med / free_med);
        if db == Db::Postgres {
            r.goal = Some(Goal::at_most(held_med, 5.0, " ms (median)"));
        }
        c.report.push(r);
    }
    Ok(())
}

/// The ceiling: claim+mark alone per database, the raw publish loop per broker.
async fn ceiling(c: &mut Ctx) -> Res<()> {
    let n = c.scale.events(100_000);
    eprintln!("[ceiling] claim+mark alone, {n} events per database");
    for db in Db::ALL {
        let fx = Fixture::new(db, &c.urls, "cm").await?;
        fx.fill(n, 1000, "bench.events").await?;
        let o = drive(
            &fx,
            Target::Null,
            &c.relay,
            n as u64,
            cap(c.scale.secs(300.0)),
        )
        .await?;
        check_rows(&fx, &o, n).await?;
        fx.drop_all().await?;
        c.claim_mark.insert(db, o.rate());
        let mut r = row(
            "ceiling",
            format!(
                "claim+mark alone, {} ({n} events, 1000 keys, batch {}, null publisher)",
                db.label(),
                default_batch()
            ),
            drain_figure(&o, n),
        );
        if let Some(pg) = c.claim_mark.get(&Db::Postgres).copied() {
            r.baseline = format!("PG claim+mark alone ({})", per_sec(pg));
            r.ratio = Some(o.rate() / pg);
            if db == Db::Maria {
                r.goal = Some(Goal::at_least(o.rate() / pg, 0.6));
            }
        }
        c.report.push(r);
    }
    eprintln!("[ceiling] raw publish loops, {n} messages per broker");
    for broker in Broker::ALL {
        let (rate, busy) = raw_loop(c, broker, n).await?;
        let mut r = row(
            "ceiling",
            format!(
                "raw publish loop, {} (client's own, 1000 acks in flight)",
                broker.label()
            ),
            format!("{} (CPU {:.0} %)", per_sec(rate), busy * 100.0),
        );
        if let Some(js) = c.raw.get(&Broker::Nats).copied() {
            r.baseline = format!("JetStream raw loop ({})", per_sec(js));
            r.ratio = Some(rate / js);
        }
        c.report.push(r);
    }
    Ok(())
}

/// Drain a backlog from every database to every broker, against `L*`.
async fn drain(c: &mut Ctx) -> Res<()> {
    let n = c.scale.events(100_000);
    for db in Db::ALL {
        for broker in Broker::ALL {
            eprintln!("[drain] {} -> {}, {n} events", db.label(), broker.label());
            let o = drain_case(c, db, broker, n).await?;
            let mut r = row(
                "drain",
                format!(
                    "{} -> {} ({n} events, 1000 keys, batch {})",
                    db.label(),
                    broker.label(),
                    default_batch()
                ),
                drain_figure(&o, n),
            );
            if let (Some(cm), Some(raw)) = (c.claim_mark.get(&db), c.raw.get(&broker)) {
                let ceiling = cm.min(*raw);
                r.baseline = format!(
                    "L* = min(claim+mark {}, raw {})",
                    thousands(*cm),
                    thousands(*raw)
                );
                r.ratio = Some(o.rate() / ceiling);
                if db == Db::Postgres && matches!(broker, Broker::Nats | Broker::Rabbit) {
                    r.goal = Some(Goal::at_least(o.rate() / ceiling, 0.8));
                }
            }
            c.report.push(r);
            if db == Db::Postgres && broker == Broker::Nats {
                c.pg_nats = Some(o);
            }
            if db == Db::Postgres {
                c.pg_drains.insert(broker, o);
            }
        }
    }
    Ok(())
}

/// One polling-relay drain of a backlog of `n` events (1000 keys) from `db` to `broker`,
/// with the run's relay settings, for at most 300 s.
async fn drain_case(c: &Ctx, db: Db, broker: Broker, n: usize) -> Res<Outcome> {
    drain_backlog(c, db, broker, n, 1000, &c.relay, 300.0, "drain").await
}

/// A polling-relay drain of `n` events over `keys` keys from a fresh `db` fixture to a
/// fresh `broker` destination (both tagged `tag`), with `relay` settings, for at most
/// `cap_secs` (scaled); broker and rows checked, fixtures removed.
#[allow(clippy::too_many_arguments)]
async fn drain_backlog(
    c: &Ctx,
    db: Db,
    broker: Broker,
    n: usize,
    keys: usize,
    relay: &str,
    cap_secs: f64,
    tag: &str,
) -> Res<Outcome> {
    let fx = Fixture::new(db, &c.urls, tag).await?;
    let dest = Dest::create(broker, &c.urls, tag).await?;
    fx.fill(n, keys, &dest.destination).await?;
    let o = drive(
        &fx,
        Target::Broker(&dest),
        relay,
        n as u64,
        cap(c.scale.secs(cap_secs)),
    )
    .await?;
    check_broker(&dest, o.published, o.complete).await?;
    check_rows(&fx, &o, n).await?;
    fx.drop_all().await?;
    dest.delete().await?;
    Ok(o)
}

/// One PG -> JetStream relay drain of `n` events over `keys` keys at `batch`.
async fn pg_nats_drain(c: &Ctx, n: usize, keys: usize, batch: usize) -> Res<Outcome> {
    let relay = format!("batch_size = {batch}");
    drain_backlog(c, Db::Postgres, Broker::Nats, n, keys, &relay, 30.0, "keys").await
}

fn keys_label(k: usize) -> String {
    if k == 1 {
        "1 key".to_owned()
    } else {
        format!("{k} keys")
    }
}

/// Key distributions and batch sizes (PG -> JetStream), and the naive poller on each.
///
/// Each distribution runs at batch 100, at the default batch size and at batch 1000. The
/// goals: at the default, at least 5x the naive poller and a quarter of the 1000-key rate;
/// batch 1000 at least as fast as batch 100.
async fn keys(c: &mut Ctx) -> Res<()> {
    let n = c.scale.events(100_000);
    let default = default_batch();
    // Ascending and without repeats, so a default of 100 or 1000 is not drained twice.
    let mut batches = vec![100usize, default, 1000];
    batches.sort_unstable();
    batches.dedup();
    let mut thousand_keys: HashMap<usize, Outcome> = HashMap::new();
    if let Some(o) = c.pg_nats
        && c.relay.is_empty()
    {
        thousand_keys.insert(default, o);
    }
    for k in [1000usize, 10, 1] {
        eprintln!("[keys] naive poller, {k} keys");
        let naive_n = c.scale.events(20_000);
        let fx = Fixture::new(Db::Postgres, &c.urls, "naive").await?;
        let dest = Dest::create(Broker::Nats, &c.urls, "naive").await?;
        fx.fill(naive_n, k, &dest.destination).await?;
        let naive = naive_poller(&fx, &dest, naive_n as u64, cap(c.scale.secs(10.0))).await?;
        check_broker(&dest, naive.published, true).await?;
        fx.drop_all().await?;
        dest.delete().await?;
        c.report.push(row(
            "keys",
            format!(
                "naive poller, {} (publish one, await its ack, mark it)",
                keys_label(k)
            ),
            drain_figure(&naive, naive_n),
        ));
        let mut rates: HashMap<usize, Outcome> = HashMap::new();
        for &batch in &batches {
            let o = match (k, thousand_keys.get(&batch)) {
                (1000, Some(o)) => *o,
                _ => {
                    eprintln!("[keys] relay, {k} keys, batch {batch}");
                    pg_nats_drain(c, n, k, batch).await?
                }
            };
            if k == 1000 {
                thousand_keys.insert(batch, o);
            }
            rates.insert(batch, o);
            let label = batch_label(batch, default);
            let mut r = row(
                "keys",
                format!("PG -> JetStream, {}, {label} ({n} events)", keys_label(k)),
                drain_figure(&o, n),
            );
            r.baseline = format!(
                "naive poller, {} ({})",
                keys_label(k),
                per_sec(naive.rate())
            );
            let ratio = o.rate() / naive.rate();
            r.ratio = Some(ratio);
            if batch == default {
                r.goal = Some(Goal::at_least(ratio, 5.0));
            }
            c.report.push(r);
            if k != 1000
                && let Some(reference) = thousand_keys.get(&batch)
            {
                let mut r = row(
                    "keys",
                    format!(
                        "PG -> JetStream, {}, {label}, against 1000 keys",
                        keys_label(k)
                    ),
                    per_sec(o.rate()),
                );
                r.baseline = format!("1000 keys, same batch ({})", per_sec(reference.rate()));
                r.ratio = Some(o.rate() / reference.rate());
                if batch == default {
                    r.goal = Some(Goal::at_least(o.rate() / reference.rate(), 0.25));
                }
                c.report.push(r);
            }
        }
        if let (Some(b100), Some(b1000)) = (rates.get(&100), rates.get(&1000)) {
            let mut r = row(
                "keys",
                format!(
                    "PG -> JetStream, {}, batch 1000 against batch 100",
                    keys_label(k)
                ),
                per_sec(b1000.rate()),
            );
            r.baseline = format!("batch 100 ({})", per_sec(b100.rate()));
            r.ratio = Some(b1000.rate() / b100.rate());
            r.goal = Some(Goal::at_least(b1000.rate() / b100.rate(), 1.0));
            c.report.push(r);
        }
    }
    Ok(())
}

/// The relay's default `batch_size`.
fn default_batch() -> usize {
    outbox_core::RelayConfig::default().batch_size
}

/// `batch N`, marked `(default)` when it is the default.
fn batch_label(batch: usize, default: usize) -> String {
    if batch == default {
        format!("batch {batch} (default)")
    } else {
        format!("batch {batch}")
    }
}

/// Inserts `rows` published rows over 1000 keys, as a long-running outbox accumulates.
async fn published_history(fx: &Fixture, rows: usize) -> Res<()> {
    fx.execute(format!(
        "INSERT INTO {} (id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
           payload, content_type, headers, created_at, available_at, status, processed_at) \
         SELECT gen_random_uuid(), 'order', 'order-' || (g % 1000), 'order.placed', 'history', \
           'order-' || (g % 1000), convert_to(repeat('x', 256), 'UTF8'), 'application/json', '{{}}', \
           now() - interval '1 hour', now() - interval '1 hour', 2, now() - interval '1 hour' \
         FROM generate_series(1, {rows}) g",
        fx.quoted()
    ))
    .await
}

/// Commit-to-broker latency, PG -> JetStream, analysed vs freshly truncated table, polling
/// vs the after-commit notifier, at 500 events/s and at half the measured drain.
async fn latency_section(c: &mut Ctx) -> Res<()> {
    let half = c.pg_nats.map(|o| o.rate() / 2.0);
    if half.is_none() {
        c.report.note(
            "latency: no PG -> JetStream drain in this run, so the second load is 2,500 ev/s instead of half the drain",
        );
    }
    let loads = [500.0, half.unwrap_or(2500.0)];
    let secs = c.scale.secs(10.0);
    let history = c.scale.events(100_000);
    let mut analysed_p99: HashMap<(u64, bool), f64> = HashMap::new();
    for fresh in [false, true] {
        for load in loads {
            for notify in [false, true] {
                let state = if fresh {
                    "freshly truncated"
                } else {
                    "analysed"
                };
                let mode = if notify {
                    "PgNotifier + LISTEN"
                } else {
                    "polling"
                };
                eprintln!("[latency] {state}, {load:.0} ev/s, {mode}");
                let fx = Fixture::new(Db::Postgres, &c.urls, "lat").await?;
                let dest = Dest::create(Broker::Nats, &c.urls, "lat").await?;
                let t = fx.quoted();
                if fresh {
                    // Keep autovacuum from analysing it during the case: the state a table is
                    // in for the first minutes after TRUNCATE.
                    fx.execute(format!("ALTER TABLE {t} SET (autovacuum_enabled = false)"))
                        .await?;
                    fx.execute(format!("TRUNCATE {t}")).await?;
                    published_history(&fx, history).await?;
                } else {
                    published_history(&fx, history).await?;
                    fx.execute(format!("ANALYZE {t}")).await?;
                }
                let feed = if notify {
                    latency::Feed::Notify
                } else {
                    latency::Feed::Polling
                };
                let l = latency::measure(&fx, &dest, load, secs, feed).await?;
                fx.drop_all().await?;
                dest.delete().await?;
                let key = (load as u64, notify);
                let mut r = row(
                    "latency",
                    format!(
                        "{state} ({history} published rows), {mode}, offered {} ev/s (achieved {}, {} events)",
                        thousands(load),
                        thousands(l.achieved_rate),
                        l.committed
                    ),
                    format!(
                        "p50 {} / p99 {} / max {}",
                        millis(l.p50),
                        millis(l.p99),
                        millis(l.max)
                    ),
                );
                if fresh {
                    if let Some(a) = analysed_p99.get(&key) {
                        r.baseline =
                            format!("p99, analysed table, same load and mode ({})", millis(*a));
                        let ratio = l.p99 / a;
                        r.ratio = Some(ratio);
                        if load == 500.0 {
                            r.goal = Some(if notify {
                                Goal {
                                    target: "ratio <= 2, p50 <= 5 ms, p99 <= 25 ms".into(),
                                    met: ratio <= 2.0 && l.p50 <= 5.0 && l.p99 <= 25.0,
                                }
                            } else {
                                Goal::at_most(ratio, 2.0, "")
                            });
                        }
                    }
                } else {
                    analysed_p99.insert(key, l.p99);
                    if notify && let Some(p) = analysed_p99.get(&(load as u64, false)) {
                        r.baseline = format!("p99, polling, same table and load ({})", millis(*p));
                        r.ratio = Some(l.p99 / p);
                    }
                }
                c.report.push(r);
            }
        }
    }
    Ok(())
}

/// Business insert + enqueue against the business insert alone, 1 and 16 writers.
async fn write_cost(c: &mut Ctx) -> Res<()> {
    for db in Db::ALL {
        for writers in [1usize, 16] {
            let total = c.scale.events(if writers == 1 { 2000 } else { 4000 });
            let per = (total / writers).max(1);
            let mut rates = [0.0f64; 2];
            for (slot, with_enqueue) in [(0usize, false), (1, true)] {
                eprintln!(
                    "[write] {}, {writers} writer(s), enqueue {with_enqueue}",
                    db.label()
                );
                let fx = std::sync::Arc::new(Fixture::new(db, &c.urls, "write").await?);
                let start = Instant::now();
                let mut tasks = Vec::new();
                for w in 0..writers {
                    let fx = std::sync::Arc::clone(&fx);
                    tasks.push(tokio::spawn(async move {
                        for i in 0..per {
                            let n = w * per + i;
                            let e = if with_enqueue {
                                Some(event(n, 1000, "orders.placed")?)
                            } else {
                                None
                            };
                            fx.business_tx(n, e.as_ref()).await?;
                        }
                        Ok::<(), crate::BoxError>(())
                    }));
                }
                for t in tasks {
                    t.await??;
                }
                rates[slot] = (per * writers) as f64 / start.elapsed().as_secs_f64();
                if let Ok(fx) = std::sync::Arc::try_unwrap(fx) {
                    fx.drop_all().await?;
                }
            }
            let ratio = rates[1] / rates[0];
            let mut r = row(
                "write cost",
                format!(
                    "{}, {writers} writer{}: business insert + enqueue ({} tx)",
                    db.label(),
                    if writers == 1 { "" } else { "s" },
                    per * writers
                ),
                format!("{} tx/s", thousands(rates[1])),
            );
            r.baseline = format!("business insert alone ({} tx/s)", thousands(rates[0]));
            r.ratio = Some(ratio);
            if writers == 16 {
                r.goal = Some(Goal::at_least(ratio, 0.9));
            }
            c.report.push(r);
        }
    }
    Ok(())
}

/// The raw loop's rate for `broker`: the ceiling section's, or measured now.
async fn raw_rate(c: &mut Ctx, broker: Broker, n: usize) -> Res<f64> {
    if let Some(r) = c.raw.get(&broker) {
        return Ok(*r);
    }
    Ok(raw_loop(c, broker, n).await?.0)
}

/// The broker client's own pipelined loop publishing `n` events to a fresh destination,
/// checked and recorded in `c.raw`: its rate and the machine's busy share.
async fn raw_loop(c: &mut Ctx, broker: Broker, n: usize) -> Res<(f64, f64)> {
    let dest = Dest::create(broker, &c.urls, "raw").await?;
    let events = (0..n)
        .map(|i| event(i, 1000, &dest.destination))
        .collect::<Res<Vec<_>>>()?;
    let machine0 = machine_cpu();
    let rate = dest.raw_publish(&events).await?;
    let busy = busy_share(machine0, machine_cpu());
    check_broker(&dest, n as u64, true).await?;
    dest.delete().await?;
    c.raw.insert(broker, rate);
    Ok((rate, busy))
}

/// The polling relay's PG -> `broker` drain: the drain section's, or measured now.
async fn polling_drain(c: &mut Ctx, broker: Broker, n: usize) -> Res<Outcome> {
    if let Some(o) = c.pg_drains.get(&broker) {
        return Ok(*o);
    }
    let o = drain_case(c, Db::Postgres, broker, n).await?;
    c.pg_drains.insert(broker, o);
    Ok(o)
}

/// Log tailing (`[cdc.<name>]`, as `outbox run` runs it): drains in both modes to JetStream
/// and RabbitMQ against the raw broker loop and the polling relay, the write-side cost of
/// `emit` against the outbox insert and the business insert alone, and commit-to-publish
/// latency against the polling relay woken by NOTIFY.
async fn cdc_section(c: &mut Ctx) -> Res<()> {
    use crate::cdc::{self, Mode};
    let n = c.scale.events(100_000);
    for broker in [Broker::Nats, Broker::Rabbit] {
        let raw = raw_rate(c, broker, n).await?;
        let polling = polling_drain(c, broker, n).await?;
        for mode in [Mode::Message, Mode::Table] {
            eprintln!(
                "[cdc] PG -> {}, {}, {n} events",
                broker.label(),
                mode.label()
            );
            let fx = Fixture::new(Db::Postgres, &c.urls, "cdc").await?;
            let dest = Dest::create(broker, &c.urls, "cdc").await?;
            let prepared = cdc::prepare(&fx, &dest, mode).await?;
            cdc::backlog(&fx, mode, n, 1000, &dest.destination).await?;
            let o = cdc::drain(prepared, n as u64, cap(c.scale.secs(300.0))).await?;
            check_broker(&dest, o.published, o.complete).await?;
            if mode == Mode::Table {
                // Every row marked published in bulk after the broker's acks.
                check_rows(&fx, &o, n).await?;
            }
            fx.drop_all().await?;
            dest.delete().await?;
            let case = format!(
                "CDC PG -> {}, {} ({n} events in transactions of 100, 1000 keys)",
                broker.label(),
                mode.label()
            );
            let mut r = row("cdc drain", case.clone(), drain_figure(&o, n));
            r.baseline = format!("raw publish loop ({})", per_sec(raw));
            r.ratio = Some(o.rate() / raw);
            r.goal = Some(Goal::at_least(o.rate() / raw, 0.8));
            c.report.push(r);
            let mut r = row("cdc drain", case, per_sec(o.rate()));
            r.baseline = format!("polling relay, same broker ({})", per_sec(polling.rate()));
            r.ratio = Some(o.rate() / polling.rate());
            r.goal = Some(Goal::at_least(o.rate() / polling.rate(), 3.0));
            c.report.push(r);
        }
    }

    // The write side: business insert alone, + outbox insert, + emit (its own statement,
    // or in the business statement).
    let extras = [
        "alone",
        "outbox insert",
        "emit",
        "emit in the same statement",
    ];
    for writers in [1usize, 16] {
        let total = c.scale.events(if writers == 1 { 4000 } else { 16_000 });
        let per = (total / writers).max(1);
        // Each variant three times, interleaved, and its median: the server's background
        // work (checkpoints, autovacuum) lands on all of them alike.
        let mut runs: [Vec<f64>; 4] = Default::default();
        for _ in 0..3 {
            for (slot, extra) in extras.into_iter().enumerate() {
                eprintln!("[cdc] write cost, {writers} writer(s), business insert + {extra}");
                let fx = std::sync::Arc::new(Fixture::new(Db::Postgres, &c.urls, "cdcw").await?);
                // A slot exists, as in production; no relay reads it during the measurement.
                let dest = Dest::create(Broker::Nats, &c.urls, "cdcw").await?;
                let prepared = cdc::prepare(&fx, &dest, Mode::Message).await?;
                let start = Instant::now();
                let mut tasks = Vec::new();
                for w in 0..writers {
                    let fx = std::sync::Arc::clone(&fx);
                    tasks.push(tokio::spawn(async move {
                        for i in 0..per {
                            let k = w * per + i;
                            let e = event(k, 1000, "orders.placed")?;
                            match slot {
                                0 => fx.business_tx(k, None).await?,
                                1 => fx.business_tx(k, Some(&e)).await?,
                                2 => fx.business_emit_tx(k, &e, fx.container()).await?,
                                _ => fx.business_emitting_tx(k, &e, fx.container()).await?,
                            }
                        }
                        Ok::<(), crate::BoxError>(())
                    }));
                }
                for t in tasks {
                    t.await??;
                }
                runs[slot].push((per * writers) as f64 / start.elapsed().as_secs_f64());
                prepared.discard().await?;
                dest.delete().await?;
                if let Ok(fx) = std::sync::Arc::try_unwrap(fx) {
                    fx.drop_all().await?;
                }
            }
        }
        let rates = runs.map(|mut r| {
            r.sort_by(f64::total_cmp);
            r.get(r.len() / 2).copied().unwrap_or(0.0)
        });
        let plural = if writers == 1 { "" } else { "s" };
        for (slot, what) in extras.into_iter().enumerate().skip(1) {
            let mut r = row(
                "cdc write cost",
                format!(
                    "PG, {writers} writer{plural}: business insert + {what} ({} tx, median of 3)",
                    per * writers
                ),
                format!("{} tx/s", thousands(rates[slot])),
            );
            r.baseline = format!("business insert alone ({} tx/s)", thousands(rates[0]));
            r.ratio = Some(rates[slot] / rates[0]);
            if writers == 16 && slot >= 2 {
                r.goal = Some(Goal::at_least(rates[slot] / rates[0], 0.95));
            }
            c.report.push(r);
        }
    }

    // Commit -> publish latency at a steady rate, against the polling relay woken by NOTIFY.
    let secs = c.scale.secs(10.0);
    for load in [500.0, 2500.0] {
        let mut p99 = [0.0f64; 2];
        for (slot, feed) in [(0usize, latency::Feed::Notify), (1, latency::Feed::Cdc)] {
            eprintln!("[cdc] latency, {load:.0} ev/s, {feed:?}");
            let fx = Fixture::new(Db::Postgres, &c.urls, "cdcl").await?;
            let dest = Dest::create(Broker::Nats, &c.urls, "cdcl").await?;
            let l = latency::measure(&fx, &dest, load, secs, feed).await?;
            fx.drop_all().await?;
            dest.delete().await?;
            p99[slot] = l.p99;
            if slot == 1 {
                let mut r = row(
                    "cdc latency",
                    format!(
                        "CDC message mode -> JetStream, offered {} ev/s (achieved {}, {} events)",
                        thousands(load),
                        thousands(l.achieved_rate),
                        l.committed
                    ),
                    format!(
                        "p50 {} / p99 {} / max {}",
                        millis(l.p50),
                        millis(l.p99),
                        millis(l.max)
                    ),
                );
                r.baseline = format!(
                    "p99, polling relay + NOTIFY, same load ({})",
                    millis(p99[0])
                );
                r.ratio = Some(p99[1] / p99[0]);
                c.report.push(r);
            }
        }
    }
    Ok(())
}

/// A relay with nothing to do: claims per second and CPU once idle for a minute.
async fn idle(c: &mut Ctx) -> Res<()> {
    let warm = c.scale.secs(60.0);
    let window = c.scale.secs(30.0);
    eprintln!("[idle] {warm:.0} s to settle, then {window:.0} s measured");
    let fx = Fixture::new(Db::Postgres, &c.urls, "idle").await?;
    let dest = Dest::create(Broker::Nats, &c.urls, "idle").await?;
    let wired = crate::drive::wire(&fx, Target::Broker(&dest), "").await?;
    let metrics = std::sync::Arc::clone(&wired.metrics);
    let running = crate::drive::Running::spawn(wired.relay);
    tokio::time::sleep(cap(warm)).await;
    let first = metrics.snapshot().claims;
    let cpu0 = cpu_seconds();
    tokio::time::sleep(cap(window)).await;
    let claims = metrics.snapshot().claims - first;
    let cpu = cpu_seconds() - cpu0;
    running.stop().await?;
    fx.drop_all().await?;
    dest.delete().await?;
    let per_sec_idle = claims as f64 / window;
    let mut r = row(
        "idle",
        format!(
            "claims per second, after {warm:.0} s idle, over {window:.0} s (PG, polling, as `outbox run`)"
        ),
        format!("{per_sec_idle:.2} claims/s"),
    );
    r.baseline = format!(
        "first {warm:.0} s of idling ({:.2} claims/s)",
        first as f64 / warm
    );
    r.ratio = Some(per_sec_idle / (first as f64 / warm).max(1e-9));
    r.goal = Some(Goal::at_most(per_sec_idle, 0.2, " claims/s"));
    c.report.push(r);
    let pct = cpu / window * 100.0;
    let mut r = row(
        "idle",
        "relay process CPU while idle",
        format!("{pct:.2} % of a core"),
    );
    if let Some(o) = c.pg_nats {
        let busy = o.cpu_secs / o.secs * 100.0;
        r.baseline = format!("draining PG -> JetStream ({busy:.0} % of a core)");
        r.ratio = Some(pct / busy.max(1e-9));
    }
    c.report.push(r);
    c.report.note(
        "idle: `outbox run` also samples backlog stats every 5 s (one query), not counted as claims",
    );
    Ok(())
}

/// `VmHWM` (peak resident set) of process `pid`, in MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs `outbox run` (this binary's `relay-child`) on `config` until `done` says the
/// table is drained or `limit` passes; returns (peak RSS MB, seconds).
async fn child_relay(fx: &Fixture, config: &str, n: usize, limit: Duration) -> Res<(f64, f64)> {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "outbox_bench_{}_{}.toml",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::write(&path, config)?;
    let log = path.with_extension("log");
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("relay-child")
        .arg(&path)
        .env("OUTBOX_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("the relay child exited at once")?;
    let start = Instant::now();
    let mut peak = 0.0f64;
    let result = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(mb) = peak_rss_mb(pid) {
            peak = peak.max(mb);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            break Err(format!("the relay child exited ({status}): {text}").into());
        }
        let (unfinished, _, _) = fx.counts().await?;
        if n == 0 && start.elapsed() >= limit {
            break Ok(());
        }
        if n > 0 && unfinished == 0 {
            break Ok(());
        }
        if n > 0 && start.elapsed() >= limit {
            break Err(format!("the relay child did not drain {n} events within {limit:?}").into());
        }
    };
    let secs = start.elapsed().as_secs_f64();
    if let Some(mb) = peak_rss_mb(pid) {
        peak = peak.max(mb);
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&log);
    result.map(|()| (peak, secs))
}

/// Peak RSS of `outbox run` draining a large backlog, against the same relay idle.
async fn memory(c: &mut Ctx) -> Res<()> {
    let n = c.scale.events(1_000_000);
    eprintln!("[memory] idle relay process on an empty table");
    let empty = Fixture::new(Db::Postgres, &c.urls, "mem0").await?;
    let dest0 = Dest::create(Broker::Nats, &c.urls, "mem0").await?;
    let (idle_mb, _) = child_relay(
        &empty,
        &config_text(&empty, Target::Broker(&dest0), ""),
        0,
        cap(3.0),
    )
    .await?;
    empty.drop_all().await?;
    dest0.delete().await?;

    eprintln!("[memory] filling {n} events");
    let fx = Fixture::new(Db::Postgres, &c.urls, "mem").await?;
    let dest = Dest::create(Broker::Nats, &c.urls, "mem").await?;
    fx.fill(n, 1000, &dest.destination).await?;
    eprintln!("[memory] draining {n} events in a relay process");
    let (peak, secs) = child_relay(
        &fx,
        &config_text(&fx, Target::Broker(&dest), ""),
        n,
        cap(c.scale.secs(900.0).max(60.0)),
    )
    .await?;
    check_broker(&dest, n as u64, true).await?;
    fx.drop_all().await?;
    dest.delete().await?;
    let mut r = row(
        "memory",
        format!(
            "peak RSS of `outbox run` draining {} events PG -> JetStream (at {})",
            thousands(n as f64),
            per_sec(n as f64 / secs)
        ),
        format!("{peak:.1} MB"),
    );
    r.baseline = format!("the same relay idle on an empty table ({idle_mb:.1} MB)");
    r.ratio = Some(peak / idle_mb.max(1e-9));
    r.goal = Some(Goal::at_most(peak, 64.0, " MB"));
    c.report.push(r);
    Ok(())
}
