//! The `outbox` binary as a process: the demo, config errors, and `run` across PostgreSQL,
//! MariaDB and SQLite sources (rows written through sqlx and SeaORM) to NATS, RabbitMQ and a
//! JSON-lines file, including a SIGKILL mid-run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{Envelope, EventId, TableName};
use outbox_tests::{self as fixtures, RelayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique_name(name))
}

/// Distinct event ids in a JSON-lines file, and how many lines it has.
fn sink_ids(path: &Path) -> (HashSet<EventId>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ids = HashSet::new();
    let mut lines = 0;
    for l in text.lines() {
        lines += 1;
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        let id: EventId = v["id"].as_str().expect("id").parse().expect("uuid");
        ids.insert(id);
    }
    (ids, lines)
}

#[test]
fn demo_delivers_every_committed_event() {
    let out = temp("outbox_demo_sink");
    let status = Command::new(BIN)
        .args(["demo", "--orders", "8", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run the demo");
    let story = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "demo failed: {story}");
    let (ids, lines) = sink_ids(&out);
    assert_eq!(ids.len(), 7, "8 orders, one rolled back: {story}");
    assert!(lines >= ids.len());
    assert!(story.contains("crashed before marking"), "{story}");
    let _ = std::fs::remove_file(out);
}

#[test]
fn config_errors_name_the_file_and_key() {
    let path = temp("outbox_bad").with_extension("toml");
    std::fs::write(
        &path,
        "[sources.a]\nurl = \"sqlite:///tmp/x.db\"\n[sources.a.relay]\nbatch_sise = 3\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&path.display().to_string()) && err.contains("batch_sise"),
        "{err}"
    );
    let _ = std::fs::remove_file(path);
}

/// Three sources (PostgreSQL and SQLite written through sqlx, MariaDB through SeaORM), three
/// routed publishers (RabbitMQ for the MariaDB events, NATS for the PostgreSQL ones, a
/// JSON-lines file for the rest). The relay is
/// SIGKILLed mid-run and restarted: every event reaches its routed broker, NATS holds each
/// once (its dedupe window drops the re-sends), and SIGTERM ends the process cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_relays_mixed_sources_and_survives_sigkill() {
    let [pg_url, my_url, nats_url, amqp_url] =
        outbox_core::service_or_skip!("outbox run", [Postgres, MySql, Nats, Amqp]);
    let name = unique_name("outbox_e2e");
    let sqlite = temp("outbox_e2e").with_extension("db");
    let sink = temp("outbox_e2e_sink").with_extension("jsonl");
    let stream = name.to_uppercase();
    let my_base = my_url
        .rsplit_once('/')
        .map_or(my_url.as_str(), |(b, _)| b)
        .to_owned();
    let config = temp("outbox_e2e").with_extension("toml");
    let http_port = fixtures::free_port();
    // Every source: short leases and polls, so a SIGKILL's claims come back within seconds.
    let fast = "lease = \"2s\"\npublish_timeout = \"1500ms\"\npoll_interval = \"20ms\"\nmax_poll_interval = \"200ms\"";
    std::fs::write(
        &config,
        format!(
            r#"default_publisher = "audit"

[http]
listen = "127.0.0.1:{http_port}"

[sources.pg]
url = "{pg_url}"
table = "{name}.outbox_events"
[sources.pg.relay]
{fast}

[sources.maria]
url = "{my_base}/{name}"
[sources.maria.relay]
{fast}

[sources.lite]
url = "sqlite://{}"
[sources.lite.relay]
{fast}

[publishers.bus]
kind = "nats"
url = "{nats_url}"

[publishers.audit]
kind = "file"
path = "{}"

[publishers.rabbit]
kind = "amqp"
url = "{amqp_url}"

[[routes]]
destination_prefix = "{name}.rabbit/"
publisher = "rabbit"

[[routes]]
destination_prefix = "{name}.orders."
publisher = "bus"
"#,
            sqlite.display(),
            sink.display()
        ),
    )
    .expect("config");

    // The NATS stream, the MariaDB database; then `outbox migrate` creates the three tables.
    let js = fixtures::nats::jetstream(&nats_url).await;
    fixtures::nats::memory_stream(&js, &stream, &format!("{name}.orders.>")).await;
    let (_amqp, ch) = fixtures::amqp::admin(&amqp_url).await;
    fixtures::amqp::topic_queue(&ch, &format!("{name}.rabbit"), &name).await;
    let my_admin = sqlx::MySqlPool::connect(&my_url).await.expect("mariadb");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&my_admin)
        .await
        .expect("database");
    fixtures::migrate(BIN, &config);

    // Writers: sqlx on PostgreSQL and SQLite, SeaORM on MariaDB.
    let orders = |n: usize, key: &str| -> Vec<Envelope> {
        (0..n)
            .map(|i| {
                order_event(
                    &format!("{name}.orders.{key}"),
                    &format!("{key}-{}", i % 4),
                    i,
                )
            })
            .collect()
    };
    let pg_events = orders(60, "pg");
    let my_events: Vec<Envelope> = (0..60)
        .map(|i| {
            order_event(
                &format!("{name}.rabbit/orders"),
                &format!("maria-{}", i % 4),
                i,
            )
        })
        .collect();
    let audit_events: Vec<Envelope> = (0..40)
        .map(|i| order_event("audit", &format!("a-{}", i % 3), i))
        .collect();
    let pg = sqlx::PgPool::connect(&pg_url).await.expect("pg");
    let pg_outbox = outbox_sqlx::postgres::PgOutbox::new(
        TableName::with_schema(&name, "outbox_events").expect("name"),
    );
    let lite = outbox_sqlx::sqlite::connect(&format!("sqlite://{}", sqlite.display()))
        .await
        .expect("sqlite");
    let lite_outbox = outbox_sqlx::sqlite::SqliteOutbox::default();
    let sea = sea_orm::Database::connect(format!("{my_base}/{name}"))
        .await
        .expect("seaorm");
    let write_all = |from: usize, to: usize| {
        let (pg, lite, sea) = (pg.clone(), lite.clone(), sea.clone());
        let (pg_outbox, lite_outbox) = (pg_outbox.clone(), lite_outbox.clone());
        let (p, m, a) = (
            pg_events[from..to].to_vec(),
            my_events[from..to].to_vec(),
            audit_events[from.min(40)..to.min(40)].to_vec(),
        );
        async move {
            let mut tx = pg.begin().await.expect("begin");
            pg_outbox
                .enqueue_all(&mut tx, &p)
                .await
                .expect("pg enqueue");
            tx.commit().await.expect("commit");
            let mut tx = lite.begin().await.expect("begin");
            lite_outbox
                .enqueue_all(&mut tx, &a)
                .await
                .expect("sqlite enqueue");
            tx.commit().await.expect("commit");
            use sea_orm::TransactionTrait as _;
            let txn = sea.begin().await.expect("begin");
            outbox_seaorm::enqueue_all(&txn, &m)
                .await
                .expect("seaorm enqueue");
            txn.commit().await.expect("commit");
        }
    };
    write_all(0, 30).await;

    // First run: SIGKILL once some events are through.
    let relay = RelayProcess::start(BIN, &config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fixtures::nats::stored_ids(&js, &stream).await.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing relayed to NATS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill9();
    write_all(30, 60).await;

    // Restart; everything arrives.
    let relay = RelayProcess::start(BIN, &config);
    let want_nats: HashSet<EventId> = pg_events.iter().map(Envelope::id).collect();
    let want_rabbit: HashSet<EventId> = my_events.iter().map(Envelope::id).collect();
    let mut got_rabbit: HashSet<EventId> = HashSet::new();
    let want_sink: HashSet<EventId> = audit_events.iter().map(Envelope::id).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<EventId> = fixtures::nats::stored_ids(&js, &stream)
            .await
            .into_iter()
            .collect();
        let (sunk, _) = sink_ids(&sink);
        got_rabbit.extend(fixtures::amqp::take_ids(&ch, &name).await);
        if got == want_nats && sunk == want_sink && got_rabbit == want_rabbit {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not everything arrived: nats {}/{}, rabbitmq {}/{}, file {}/{}",
            got.len(),
            want_nats.len(),
            got_rabbit.len(),
            want_rabbit.len(),
            sunk.len(),
            want_sink.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .expect("status");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    for r in rows.as_array().expect("a row per source") {
        assert_eq!(r["pending"], 0, "{r}");
        assert_eq!(r["in_flight"], 0, "{r}");
        assert!(r["published_last_minute"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    let health = fixtures::http_get(http_port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains("source pg") && health.contains("publisher bus"),
        "{health}"
    );
    let metrics = fixtures::http_get(http_port, "/metrics");
    let published = metrics
        .lines()
        .find(|l| l.starts_with("outbox_published_total{source=\"maria\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a published counter for maria");
    assert!(published >= 30.0, "{metrics}");
    let status = relay.sigterm();
    assert!(
        status.success(),
        "SIGTERM ends the relay cleanly: {status:?}"
    );
    let stored = fixtures::nats::stored_ids(&js, &stream).await;
    assert_eq!(
        stored.len(),
        want_nats.len(),
        "NATS dropped the re-sent copies (Nats-Msg-Id)"
    );

    // Clean up.
    let _ = js.delete_stream(&stream).await;
    let _ = ch
        .queue_delete(name.as_str().into(), Default::default())
        .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .execute(&my_admin)
        .await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{name}\" CASCADE"
    )))
    .execute(&pg)
    .await;
    for p in [&sqlite, &sink, &config] {
        let _ = std::fs::remove_file(p);
    }
}

/// The `[event_tables.ledger]` section relaying the table [`create_ledger`] makes at `url`.
fn ledger_section(url: &str) -> String {
    format!(
        "[event_tables.ledger]\nurl = \"{url}\"\nowner = \"test-relay\"\n\
         [event_tables.ledger.mapping]\ntable = \"ledger\"\naggregate_id = \"account\"\n\
         event_type = \"kind\"\npayload = \"body\"\ndestination = \"ledger\"\n\
         [event_tables.ledger.relay]\npoll_interval = \"20ms\"\nmax_poll_interval = \"100ms\"\n"
    )
}

/// A ledger: an append-only table of postings, relayed without an outbox.
async fn create_ledger(pool: &sqlx::SqlitePool) {
    sqlx::query(
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, \
         kind TEXT NOT NULL, body TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .expect("ledger table");
}

/// `outbox run` with an `[event_tables.*]` source: a SQLite ledger relayed to a file with
/// no outbox table; rows added while the relay is SIGKILLed are published after a restart
/// with the same owner, and every row is in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_relays_an_event_table_across_a_sigkill() {
    let db = temp("outbox_ledger").with_extension("db");
    let sink = temp("outbox_ledger_sink");
    let cfg = temp("outbox_ledger").with_extension("toml");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let pool = outbox_sqlx::sqlite::connect(&url).await.expect("open");
    create_ledger(&pool).await;
    let insert = |n: usize| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO ledger (account, kind, body) VALUES (?, 'posted', ?)")
                .bind(format!("acc-{}", n % 3))
                .bind(format!("{{\"n\": {n}}}"))
                .execute(&pool)
                .await
                .expect("insert");
        }
    };
    std::fs::write(
        &cfg,
        format!(
            "default_publisher = \"file\"\n\
             [publishers.file]\nkind = \"file\"\npath = \"{}\"\n{}",
            sink.display(),
            ledger_section(&url)
        ),
    )
    .expect("config");
    for n in 0..30 {
        insert(n).await;
    }
    let relay = RelayProcess::start(BIN, &cfg);
    let wait_for = |want: usize| {
        let sink = sink.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let (ids, _) = sink_ids(&sink);
                if ids.len() >= want || tokio::time::Instant::now() > deadline {
                    return ids.len();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(wait_for(30).await, 30);
    relay.kill9();
    for n in 30..50 {
        insert(n).await;
    }
    let relay = RelayProcess::start(BIN, &cfg);
    assert_eq!(
        wait_for(50).await,
        50,
        "rows written while the relay was down are published"
    );
    let status = relay.sigterm();
    assert!(status.success(), "graceful stop: {status:?}");
    let (ids, lines) = sink_ids(&sink);
    let want: HashSet<EventId> = (1..=50)
        .map(|p| outbox_core::event_table::derived_event_id("ledger", p))
        .collect();
    assert_eq!(
        ids, want,
        "exactly the table's rows, with ids derived from their positions"
    );
    assert!(
        lines - ids.len() <= 100,
        "duplicates only from the SIGKILL's round"
    );
    for p in [&db, &sink, &cfg] {
        let _ = std::fs::remove_file(p);
    }
}

/// Runs the binary with `args` and returns its stdout; fails the test on a non-zero exit.
fn outbox(args: &[&str]) -> String {
    fixtures::run_outbox(BIN, args)
}

/// One table holds a row another tool wrote with `headers` that are not a JSON object and
/// a valid dead letter. The relay dead-letters the bad row; `dead-letters list` shows both
/// (the bad one as `"kind": "undecodable"` with its decode error), `requeue --id` and
/// `purge --id` each act on one, and the requeued event is then published. `--config` is
/// accepted after the subcommand and before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_admin_survives_an_undecodable_row() {
    let db = temp("outbox_dlq").with_extension("db");
    let sink = temp("outbox_dlq_sink").with_extension("jsonl");
    let config = temp("outbox_dlq").with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "default_publisher = \"audit\"\n\n[sources.lite]\nurl = \"sqlite://{}\"\n\
             [sources.lite.relay]\npoll_interval = \"20ms\"\nmax_poll_interval = \"100ms\"\n\n\
             [publishers.audit]\nkind = \"file\"\npath = \"{}\"\n",
            db.display(),
            sink.display()
        ),
    )
    .expect("write config");
    let cfg = config.to_str().expect("utf-8 path");
    outbox(&["migrate", "--config", cfg]);

    let pool = outbox_sqlx::sqlite::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("sqlite");
    let good = order_event("dlq.good", "g", 0);
    let bad = order_event("dlq.bad", "b", 0);
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::sqlite::SqliteOutbox::default()
        .enqueue_all(&mut tx, &[good.clone(), bad.clone()])
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    // The good event was dead-lettered earlier; the bad row was rewritten by another tool.
    sqlx::query(
        "UPDATE outbox_events SET status = 3, attempts = 3, last_error = 'broker said no', \
         processed_at = 1 WHERE id = ?",
    )
    .bind(good.id().to_string())
    .execute(&pool)
    .await
    .expect("dead-letter the good event");
    sqlx::query("UPDATE outbox_events SET headers = '[\"not\", \"an object\"]' WHERE id = ?")
        .bind(bad.id().to_string())
        .execute(&pool)
        .await
        .expect("corrupt the bad row");

    // The relay claims the bad row, cannot decode it, and dead-letters it.
    let relay = RelayProcess::start(BIN, &config);
    let listed = {
        let mut lines = Vec::new();
        for _ in 0..100 {
            lines = outbox(&["dead-letters", "list", "--config", cfg])
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
                .collect::<Vec<_>>();
            if lines.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lines
    };
    relay.sigterm();
    assert_eq!(listed.len(), 2, "both dead letters listed: {listed:?}");
    let find = |id: EventId| {
        listed
            .iter()
            .find(|l| l["id"] == id.to_string())
            .unwrap_or_else(|| panic!("{id} listed: {listed:?}"))
    };
    let (g, b) = (find(good.id()), find(bad.id()));
    assert_eq!(g["kind"], "event", "{g}");
    assert_eq!(g["last_error"], "broker said no", "{g}");
    assert_eq!(b["kind"], "undecodable", "{b}");
    assert!(
        b["decode_error"]
            .as_str()
            .is_some_and(|e| e.contains("header")),
        "{b}"
    );
    assert_eq!(b["headers_raw"], "[\"not\", \"an object\"]", "{b}");
    assert!(b["seq"].as_i64().is_some(), "{b}");

    let good_id = good.id().to_string();
    let bad_id = bad.id().to_string();
    assert_eq!(
        outbox(&["dead-letters", "requeue", "--id", &good_id, "--config", cfg]).trim(),
        "1"
    );
    assert_eq!(
        outbox(&["--config", cfg, "dead-letters", "purge", "--id", &bad_id]).trim(),
        "1"
    );
    assert_eq!(
        outbox(&["--config", cfg, "dead-letters", "list"]).trim(),
        "",
        "nothing dead is left"
    );

    // The requeued event is published.
    let relay = RelayProcess::start(BIN, &config);
    let mut published = HashSet::new();
    for _ in 0..100 {
        published = sink_ids(&sink).0;
        if published.contains(&good.id()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relay.sigterm().success());
    assert_eq!(published, HashSet::from([good.id()]));
    for f in [&db, &sink, &config] {
        let _ = std::fs::remove_file(f);
    }
}

/// The value of `metric{source="<source>"}` in a Prometheus text page.
fn metric(page: &str, name: &str, source: &str) -> Option<f64> {
    let prefix = format!("{name}{{source=\"{source}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// `outbox run` with an outbox source and an event-table source side by side: both are
/// relayed, and `/metrics` and `/healthz` report both, under the same metric names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_outbox_and_event_table_sources_alike() {
    let db = temp("outbox_both").with_extension("db");
    let sink = temp("outbox_both_sink").with_extension("jsonl");
    let config = temp("outbox_both").with_extension("toml");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let http_port = fixtures::free_port();
    std::fs::write(
        &config,
        format!(
            "default_publisher = \"file\"\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [publishers.file]\nkind = \"file\"\npath = \"{}\"\n\
             [sources.orders]\nurl = \"{url}\"\n\
             [sources.orders.relay]\npoll_interval = \"20ms\"\nmax_poll_interval = \"100ms\"\n{}",
            sink.display(),
            ledger_section(&url)
        ),
    )
    .expect("config");
    let cfg = config.to_str().expect("utf-8 path");
    outbox(&["migrate", "--config", cfg]);
    let pool = outbox_sqlx::sqlite::connect(&url).await.expect("open");
    create_ledger(&pool).await;
    let events: Vec<Envelope> = (0..12).map(|n| order_event("orders", "o-1", n)).collect();
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::sqlite::SqliteOutbox::default()
        .enqueue_all(&mut tx, &events)
        .await
        .expect("enqueue");
    for n in 0..7 {
        sqlx::query("INSERT INTO ledger (account, kind, body) VALUES ('acc', 'posted', ?)")
            .bind(format!("{{\"n\": {n}}}"))
            .execute(&mut *tx)
            .await
            .expect("ledger row");
    }
    tx.commit().await.expect("commit");

    let relay = RelayProcess::start(BIN, &config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sink_ids(&sink).0.len() < 19 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sink_ids(&sink).0.len(),
        19,
        "12 outbox events and 7 ledger rows"
    );
    // The counters move when a publish call returns, a moment after the file was written.
    let mut page = fixtures::http_get(http_port, "/metrics");
    for _ in 0..100 {
        let done = metric(&page, "outbox_published_total", "orders") == Some(12.0)
            && metric(&page, "outbox_published_total", "ledger") == Some(7.0);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        page = fixtures::http_get(http_port, "/metrics");
    }
    assert_eq!(
        metric(&page, "outbox_published_total", "orders"),
        Some(12.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, "outbox_published_total", "ledger"),
        Some(7.0),
        "{page}"
    );
    for name in [
        "outbox_claimed_rows_total",
        "outbox_claims_total",
        "outbox_retried_total",
        "outbox_dead_lettered_total",
        "outbox_store_errors_total",
        "outbox_publish_seconds_total",
    ] {
        for source in ["orders", "ledger"] {
            assert!(
                metric(&page, name, source).is_some(),
                "{name} for {source}: {page}"
            );
        }
    }
    assert!(
        metric(&page, "outbox_claimed_rows_total", "ledger").is_some_and(|v| v >= 7.0),
        "{page}"
    );
    let health = fixtures::http_get(http_port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains("\"source orders\":\"ok\"") && health.contains("\"source ledger\":\"ok\""),
        "{health}"
    );
    assert!(relay.sigterm().success());
    for p in [&db, &sink, &config] {
        let _ = std::fs::remove_file(p);
    }
}

/// `outbox migrate --print` writes each source's DDL without connecting (the PostgreSQL and
/// MariaDB sources point at a closed port, the SQLite file is not created), and the SQLite
/// DDL, run by another tool, makes a table the relay works on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_print_writes_ddl_a_migration_tool_can_run() {
    let db = temp("outbox_print").with_extension("db");
    let config = temp("outbox_print").with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[sources.lite]\nurl = \"sqlite://{}\"\n\
             [sources.pg]\nurl = \"postgres://u:secret@127.0.0.1:1/app\"\ntable = \"sales.events\"\n\
             [sources.my]\nurl = \"mysql://root@127.0.0.1:1/app\"\n",
            db.display()
        ),
    )
    .expect("write config");
    let printed = outbox(&[
        "migrate",
        "--print",
        "--config",
        &config.display().to_string(),
    ]);
    assert!(!db.exists(), "--print opened the SQLite file");
    assert!(printed.contains("\"sales\".\"events\""), "{printed}");
    assert!(printed.contains("`outbox_events`"), "{printed}");
    assert!(!printed.contains("secret"), "{printed}");
    let lite: String = printed
        .split("-- source ")
        .find(|s| s.starts_with("lite:"))
        .expect("the SQLite section")
        .to_owned();
    let only_lite = outbox(&[
        "migrate",
        "--print",
        "--source",
        "lite",
        "--config",
        &config.display().to_string(),
    ]);
    assert_eq!(only_lite, format!("-- source {lite}"));
    // Another tool runs the printed statements; the relay then works on that table.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", db.display()))
        .await
        .expect("open");
    for stmt in lite
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
    {
        if !stmt.trim().is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(stmt.to_owned()))
                .execute(&pool)
                .await
                .expect("printed DDL runs");
        }
    }
    let table = TableName::default();
    let mut tx = pool.begin().await.expect("begin");
    let events: Vec<Envelope> = (0..3).map(|n| order_event("orders", "k", n)).collect();
    outbox_sqlx::sqlite::SqliteOutbox::new(table.clone())
        .enqueue_all(&mut tx, &events)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    let publisher = outbox_core::InMemoryPublisher::new();
    let store = outbox_sqlx::sqlite::SqliteStore::new(pool.clone(), table);
    let relay =
        outbox_core::Relay::new(store, publisher.clone(), Default::default()).expect("relay");
    assert_eq!(relay.drain().await.expect("drain").published, 3);
    let want: Vec<EventId> = events.iter().map(|e| e.id()).collect();
    assert_eq!(publisher.delivered_ids(), want);
    pool.close().await;
    let _ = std::fs::remove_file(db);
    let _ = std::fs::remove_file(config);
}
