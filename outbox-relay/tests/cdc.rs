//! CDC conformance through the `outbox` binary, against the real PostgreSQL, NATS
//! JetStream and RabbitMQ: a message-mode source (events written with
//! `outbox_sqlx::postgres::emit`) routed to NATS and a table-mode source (the outbox table's
//! inserts) routed to RabbitMQ, while a writer commits, rolls back and commits out of begin
//! order, and the relay is SIGKILLed at random points several times and restarted.
#![cfg(feature = "cdc")]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{Envelope, EventId, TableName};
use outbox_tests::{self as fixtures, RelayProcess};
use sqlx::PgPool;

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

/// A committed transaction as the writer saw it: its events, and the WAL position just
/// after its commit returned (at or past the commit's end).
struct Committed {
    events: Vec<Envelope>,
    after: u64,
}

/// What the writer did, in commit order.
#[derive(Default)]
struct Written {
    committed: Vec<Committed>,
    rolled_back: Vec<EventId>,
}

impl Written {
    fn ids(&self) -> HashSet<EventId> {
        self.committed
            .iter()
            .flat_map(|c| c.events.iter().map(Envelope::id))
            .collect()
    }
}

/// A small deterministic random sequence (the seed is printed), so a failing run can be
/// reproduced.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

async fn wal_now(pool: &PgPool) -> u64 {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .expect("WAL position");
    lsn(&text)
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

/// The slot's confirmed position.
async fn confirmed(pool: &PgPool, slot: &str) -> u64 {
    let text: Option<String> = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_one(pool)
    .await
    .expect("the slot");
    lsn(&text.expect("a confirmed position"))
}

/// One writer round for one mode: a transaction of three events committed, one rolled
/// back, and two that begin in one order and commit in the other.
async fn write_round(
    pool: &PgPool,
    table: Option<&TableName>,
    prefix: &str,
    destination: &str,
    round: usize,
    written: &mut Written,
) {
    let event = |n: usize| {
        order_event(
            destination,
            &format!("k{}", (round + n) % 4),
            round * 10 + n,
        )
    };
    let write = async |tx: &mut sqlx::PgConnection, events: &[Envelope]| match table {
        Some(t) => outbox_sqlx::postgres::PgOutbox::new(t.clone())
            .enqueue_all(tx, events)
            .await
            .expect("enqueue"),
        None => outbox_sqlx::postgres::emit_with_prefix(tx, prefix, events)
            .await
            .expect("emit"),
    };
    let plain: Vec<Envelope> = (0..3).map(event).collect();
    let mut tx = pool.begin().await.expect("begin");
    write(&mut tx, &plain).await;
    tx.commit().await.expect("commit");
    written.committed.push(Committed {
        events: plain,
        after: wal_now(pool).await,
    });

    let rolled = vec![event(3)];
    let mut tx = pool.begin().await.expect("begin");
    write(&mut tx, &rolled).await;
    tx.rollback().await.expect("rollback");
    written.rolled_back.push(rolled[0].id());

    let (early, late) = (vec![event(4)], vec![event(5)]);
    let mut began_first = pool.begin().await.expect("begin");
    write(&mut began_first, &early).await;
    let mut began_second = pool.begin().await.expect("begin");
    write(&mut began_second, &late).await;
    began_second.commit().await.expect("commit");
    written.committed.push(Committed {
        events: late,
        after: wal_now(pool).await,
    });
    began_first.commit().await.expect("commit");
    written.committed.push(Committed {
        events: early,
        after: wal_now(pool).await,
    });
}

/// Checks one source's deliveries (in the broker's order, duplicates included) against
/// what was written, given the slot's confirmed position at each SIGKILL.
fn check(source: &str, delivered: &[EventId], written: &Written, kills: &[u64]) {
    let want = written.ids();
    let got: HashSet<EventId> = delivered.iter().copied().collect();
    let missing = want.difference(&got).count();
    assert_eq!(
        missing, 0,
        "{source}: {missing} committed events never arrived"
    );
    for id in &written.rolled_back {
        assert!(
            !got.contains(id),
            "{source}: a rolled-back event was published"
        );
    }
    assert!(
        got.is_subset(&want),
        "{source}: an event nobody committed arrived"
    );
    // Duplicates only from a replayed window: an event published twice committed past the
    // position its slot had confirmed when some SIGKILL struck.
    let mut seen: HashMap<EventId, usize> = HashMap::new();
    for id in delivered {
        *seen.entry(*id).or_default() += 1;
    }
    let after: HashMap<EventId, u64> = written
        .committed
        .iter()
        .flat_map(|c| c.events.iter().map(move |e| (e.id(), c.after)))
        .collect();
    let duplicated: Vec<&EventId> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    for id in &duplicated {
        let written_by = after[id];
        assert!(
            kills.iter().any(|k| *k < written_by),
            "{source}: event {id} was published twice though every SIGKILL came after the slot confirmed it"
        );
    }
    // Commit order per key, in the order each event first arrived.
    let key_of: HashMap<EventId, String> = written
        .committed
        .iter()
        .flat_map(|c| {
            c.events
                .iter()
                .map(|e| (e.id(), e.ordering_key().to_owned()))
        })
        .collect();
    let mut first_seen: HashMap<String, Vec<EventId>> = HashMap::new();
    let mut once: HashSet<EventId> = HashSet::new();
    for id in delivered {
        if once.insert(*id) {
            first_seen.entry(key_of[id].clone()).or_default().push(*id);
        }
    }
    let mut committed_order: HashMap<String, Vec<EventId>> = HashMap::new();
    for c in &written.committed {
        for e in &c.events {
            committed_order
                .entry(e.ordering_key().to_owned())
                .or_default()
                .push(e.id());
        }
    }
    assert_eq!(
        first_seen, committed_order,
        "{source}: commit order per key"
    );
    println!(
        "{source}: {} events, {} published more than once, {} SIGKILLs",
        want.len(),
        duplicated.len(),
        kills.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_sources_survive_sigkills_at_random_points() {
    let [pg_url, nats_url, amqp_url] =
        outbox_core::service_or_skip!("outbox run cdc", [Postgres, Nats, Amqp]);
    let name = unique_name("outbox_cdcrun");
    let stream = name.to_uppercase();
    let table = TableName::with_schema(&name, "outbox_events").expect("name");
    let http_port = fixtures::free_port();
    let config: PathBuf = std::env::temp_dir().join(format!("{name}.toml"));
    let retry = "[cdc.{s}.relay]\npublish_timeout = \"2s\"\n[cdc.{s}.relay.retry]\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 1000";
    std::fs::write(
        &config,
        format!(
            r#"[http]
listen = "127.0.0.1:{http_port}"

[cdc.msg]
url = "{pg_url}"
mode = "message"
prefix = "{name}"
slot = "{name}_m"
dead_letter_table = "{name}.dead_letters"
{msg_retry}

[cdc.tbl]
url = "{pg_url}"
mode = "table"
table = "{name}.outbox_events"
slot = "{name}_t"
{tbl_retry}

[publishers.bus]
kind = "nats"
url = "{nats_url}"

[publishers.rabbit]
kind = "amqp"
url = "{amqp_url}"

[[routes]]
destination_prefix = "{name}.orders."
publisher = "bus"

[[routes]]
destination_prefix = "{name}.rabbit/"
publisher = "rabbit"
"#,
            msg_retry = retry.replace("{s}", "msg"),
            tbl_retry = retry.replace("{s}", "tbl"),
        ),
    )
    .expect("config");

    let js = fixtures::nats::jetstream(&nats_url).await;
    fixtures::nats::memory_stream(&js, &stream, &format!("{name}.orders.>")).await;
    let (_amqp, ch) = fixtures::amqp::admin(&amqp_url).await;
    fixtures::amqp::topic_queue(&ch, &format!("{name}.rabbit"), &name).await;
    // Creates the outbox table, the dead-letter table, both publications and both slots.
    fixtures::migrate(BIN, &config);
    fixtures::migrate(BIN, &config); // idempotent

    let pool = PgPool::connect(&pg_url).await.expect("pool");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    println!("SIGKILL points from seed {seed}");
    let mut rng = Lcg(seed);

    let mut msg = Written::default();
    let mut tbl = Written::default();
    let (mut msg_kills, mut tbl_kills) = (Vec::new(), Vec::new());
    let mut relay = RelayProcess::start(BIN, &config);
    let rounds = 60;
    let mut next_kill = 5 + rng.below(10) as usize;
    for round in 0..rounds {
        write_round(
            &pool,
            None,
            &name,
            &format!("{name}.orders.x"),
            round,
            &mut msg,
        )
        .await;
        write_round(
            &pool,
            Some(&table),
            &name,
            &format!("{name}.rabbit/orders"),
            round,
            &mut tbl,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
        if round == next_kill && msg_kills.len() < 4 {
            relay.kill9();
            msg_kills.push(confirmed(&pool, &format!("{name}_m")).await);
            tbl_kills.push(confirmed(&pool, &format!("{name}_t")).await);
            relay = RelayProcess::start(BIN, &config);
            next_kill = round + 4 + rng.below(10) as usize;
        }
    }
    assert!(msg_kills.len() >= 3, "SIGKILLed {} times", msg_kills.len());

    // Everything arrives.
    let want_nats = msg.ids();
    let want_rabbit = tbl.ids();
    let mut rabbit: Vec<EventId> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let nats = loop {
        let nats = fixtures::nats::stored_ids(&js, &stream).await;
        rabbit.extend(fixtures::amqp::take_ids(&ch, &name).await);
        let rabbit_set: HashSet<EventId> = rabbit.iter().copied().collect();
        let nats_set: HashSet<EventId> = nats.iter().copied().collect();
        if want_nats.is_subset(&nats_set) && want_rabbit.is_subset(&rabbit_set) {
            break nats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything arrived: nats {}/{}, rabbitmq {}/{}",
            nats_set.len(),
            want_nats.len(),
            rabbit_set.len(),
            want_rabbit.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A last look for late duplicates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rabbit.extend(fixtures::amqp::take_ids(&ch, &name).await);
    check("message mode to NATS", &nats, &msg, &msg_kills);
    check("table mode to RabbitMQ", &rabbit, &tbl, &tbl_kills);
    assert_eq!(
        nats.len(),
        want_nats.len(),
        "JetStream kept each event once (Nats-Msg-Id absorbed the replays)"
    );

    // A message that is no envelope: a dead letter `outbox dead-letters` lists and purges.
    let path = config.to_str().expect("path");
    sqlx::query("SELECT pg_logical_emit_message(true, $1, '\\x00ff'::bytea)")
        .bind(&name)
        .execute(&pool)
        .await
        .expect("poison");
    let list = ["dead-letters", "list", "--source", "msg", "--config", path];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let out = fixtures::run_outbox(BIN, &list);
        if !out.trim().is_empty() || tokio::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 1, "{listed}");
    let dead: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(dead["kind"], "undecodable", "{dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("undecodable")),
        "{dead}"
    );
    let purge = ["dead-letters", "purge", "--source", "msg", "--config", path];
    assert_eq!(fixtures::run_outbox(BIN, &purge).trim(), "1");
    assert!(fixtures::run_outbox(BIN, &list).trim().is_empty());

    // Operators' view: status, metrics, health, dead letters; then the slots are dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let out = fixtures::run_outbox(
            BIN,
            &[
                "status",
                "--json",
                "--config",
                config.to_str().expect("path"),
            ],
        );
        let rows: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
        let settled = rows.as_array().is_some_and(|rows| {
            rows.iter().all(|r| {
                r["active"] == true && r["lag_bytes"].as_i64().is_some_and(|l| l < 1 << 20)
            })
        });
        if settled || tokio::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in rows {
        assert_eq!(r["active"], true, "{r}");
        assert_eq!(r["dead"], 0, "{r}");
        assert!(r["confirmed_lsn"].as_str().is_some(), "{r}");
        assert!(r["lag_bytes"].as_i64().is_some_and(|l| l < 1 << 20), "{r}");
    }
    let store = outbox_sqlx::postgres::PgStore::new(pool.clone(), table.clone());
    let stats = outbox_core::StoreStats::stats(&store).await.expect("stats");
    assert_eq!(
        (stats.pending, stats.dead),
        (0, 0),
        "table mode marked every row: {stats:?}"
    );
    let metrics = fixtures::http_get(http_port, "/metrics");
    for source in ["msg", "tbl"] {
        let line = format!("outbox_published_total{{source=\"{source}\"}} ");
        let published: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no published counter for {source}: {metrics}"));
        assert!(published > 0.0, "{source}: {metrics}");
    }
    let health = fixtures::http_get(http_port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains("source msg") && health.contains("source tbl"),
        "{health}"
    );
    let status = relay.sigterm();
    assert!(
        status.success(),
        "SIGTERM ends the relay cleanly: {status:?}"
    );

    fixtures::run_outbox(BIN, &["drop-slot", "msg", "--config", path]);
    fixtures::run_outbox(BIN, &["drop-slot", "tbl", "--config", path]);
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE $1")
            .bind(format!("{name}%"))
            .fetch_one(&pool)
            .await
            .expect("slots");
    assert_eq!(left, 0, "drop-slot dropped both slots");

    let _ = js.delete_stream(&stream).await;
    let _ = ch
        .queue_delete(name.as_str().into(), Default::default())
        .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{name}\" CASCADE"
    )))
    .execute(&pool)
    .await;
    let _ = std::fs::remove_file(&config);
}
