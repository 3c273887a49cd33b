//! Least privilege, as the README's grants give it: a writer that may only INSERT into the
//! outbox table writes its events, and `outbox run` (with retention) and `outbox status`
//! work as a role that may only SELECT, UPDATE and DELETE its rows; on PostgreSQL and
//! MariaDB. Each role is also shown to lack what it was not granted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{Envelope, EventId, TableName};
use outbox_tests::{self as fixtures, RelayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

/// `url` with `user[:password]@` in front of its host and `/db` as its path.
fn as_user(url: &str, user: &str, password: Option<&str>, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    let auth = match password {
        Some(p) => format!("{user}:{p}"),
        None => user.to_owned(),
    };
    format!("{scheme}://{auth}@{host}/{db}")
}

/// Writes the relay's config (`source_url`, a JSON-lines sink) and returns its path.
fn relay_config(name: &str, source_url: &str, table: Option<&str>, sink: &Path) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}.toml"));
    let table = table.map_or(String::new(), |t| format!("table = \"{t}\"\n"));
    std::fs::write(
        &path,
        format!(
            r#"default_publisher = "sink"

[sources.app]
url = "{source_url}"
{table}retention = "1h"
[sources.app.relay]
poll_interval = "20ms"
max_poll_interval = "200ms"

[publishers.sink]
kind = "file"
path = "{}"
"#,
            sink.display()
        ),
    )
    .expect("config");
    path
}

/// Runs the relay on `config` until `sink` holds every one of `events`, then checks
/// `outbox status` as the same role.
fn relay_everything(config: &Path, sink: &Path, events: &[Envelope]) {
    let want: HashSet<EventId> = events.iter().map(Envelope::id).collect();
    let relay = RelayProcess::start(BIN, config);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(sink).unwrap_or_default();
        let got: HashSet<EventId> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["id"].as_str().and_then(|s| s.parse().ok()))
            .collect();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restricted relay delivered {} of {} events (config {})",
            got.len(),
            want.len(),
            config.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(relay.sigterm().success(), "the relay stops cleanly");
    let config = config.to_str().expect("UTF-8 path");
    let status = fixtures::run_outbox(BIN, &["status", "--config", config]);
    assert!(
        status.lines().any(|l| l.starts_with("app ")),
        "status as the relay's role: {status}"
    );
    let dead = fixtures::run_outbox(BIN, &["dead-letters", "list", "--config", config]);
    assert!(!dead.contains("error"), "{dead}");
}

fn events(name: &str) -> Vec<Envelope> {
    (0..20)
        .map(|i| order_event(name, &format!("k-{}", i % 3), i))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_and_writer_under_restricted_roles() {
    let pg_url = outbox_core::service_or_skip!("least privilege on PostgreSQL", Postgres);
    let name = unique_name("outbox_priv");
    let (relay_role, writer_role) = (format!("{name}_relay"), format!("{name}_writer"));
    let admin = sqlx::PgPool::connect(&pg_url).await.expect("postgres");
    let table = TableName::with_schema(&name, "outbox_events").expect("name");
    outbox_sqlx::postgres::migrate(&admin, &table)
        .await
        .expect("migrate as the owner");
    let db = pg_url
        .rsplit('/')
        .next()
        .and_then(|d| d.split('?').next())
        .unwrap_or("test")
        .to_owned();
    // The README's grants, verbatim in substance.
    for stmt in [
        format!("CREATE ROLE {relay_role} LOGIN"),
        format!("CREATE ROLE {writer_role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA {name} TO {relay_role}, {writer_role}"),
        format!("GRANT SELECT, UPDATE, DELETE ON {name}.outbox_events TO {relay_role}"),
        format!("GRANT INSERT ON {name}.outbox_events TO {writer_role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&admin)
            .await
            .expect("roles");
    }

    // The writer: its events go in; it cannot read the table back.
    let writer = sqlx::PgPool::connect(&as_user(&pg_url, &writer_role, None, &db))
        .await
        .expect("writer");
    let sent = events(&format!("{name}.orders"));
    let mut tx = writer.begin().await.expect("begin");
    outbox_sqlx::postgres::PgOutbox::new(table.clone())
        .enqueue_all(&mut tx, &sent)
        .await
        .expect("the writer may INSERT");
    tx.commit().await.expect("commit");
    let read = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {name}.outbox_events"
    )))
    .fetch_one(&writer)
    .await;
    assert!(
        read.is_err_and(|e| e.to_string().contains("permission denied")),
        "the writer must not read the outbox"
    );

    // The relay: run, status and dead letters as the relay's role; it cannot insert.
    let relay_url = as_user(&pg_url, &relay_role, None, &db);
    let relay = sqlx::PgPool::connect(&relay_url).await.expect("relay role");
    let insert = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {name}.outbox_events (id) VALUES (gen_random_uuid())"
    )))
    .execute(&relay)
    .await;
    assert!(
        insert.is_err_and(|e| e.to_string().contains("permission denied")),
        "the relay must not write events"
    );
    let sink = std::env::temp_dir().join(format!("{name}.jsonl"));
    let config = relay_config(
        &name,
        &relay_url,
        Some(&format!("{name}.outbox_events")),
        &sink,
    );
    relay_everything(&config, &sink, &sent);

    writer.close().await;
    relay.close().await;
    for stmt in [
        format!("DROP SCHEMA {name} CASCADE"),
        format!("DROP ROLE {relay_role}"),
        format!("DROP ROLE {writer_role}"),
    ] {
        let _ = sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&admin).await;
    }
    let _ = std::fs::remove_file(sink);
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_relay_and_writer_under_restricted_users() {
    let my_url = outbox_core::service_or_skip!("least privilege on MariaDB", MySql);
    let name = unique_name("outbox_priv");
    let (relay_user, writer_user) = (format!("{name}_r"), format!("{name}_w"));
    let password = "Priv1legeTest";
    let admin = sqlx::MySqlPool::connect(&my_url).await.expect("mariadb");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&admin)
        .await
        .expect("database");
    let table = TableName::with_schema(&name, "outbox_events").expect("name");
    outbox_sqlx::mysql::migrate(&admin, &table)
        .await
        .expect("migrate as the owner");
    for stmt in [
        format!("CREATE USER '{relay_user}'@'%' IDENTIFIED BY '{password}'"),
        format!("CREATE USER '{writer_user}'@'%' IDENTIFIED BY '{password}'"),
        format!("GRANT SELECT, UPDATE, DELETE ON `{name}`.`outbox_events` TO '{relay_user}'@'%'"),
        format!("GRANT INSERT ON `{name}`.`outbox_events` TO '{writer_user}'@'%'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&admin)
            .await
            .expect("users");
    }

    let writer = sqlx::MySqlPool::connect(&as_user(&my_url, &writer_user, Some(password), &name))
        .await
        .expect("writer");
    let sent = events(&format!("{name}.orders"));
    let mut tx = writer.begin().await.expect("begin");
    outbox_sqlx::mysql::MySqlOutbox::default()
        .enqueue_all(&mut tx, &sent)
        .await
        .expect("the writer may INSERT");
    tx.commit().await.expect("commit");
    let read = sqlx::query("SELECT count(*) FROM outbox_events")
        .fetch_one(&writer)
        .await;
    assert!(
        read.is_err_and(|e| e.to_string().contains("denied")),
        "the writer must not read the outbox"
    );

    let relay_url = as_user(&my_url, &relay_user, Some(password), &name);
    let relay = sqlx::MySqlPool::connect(&relay_url)
        .await
        .expect("relay user");
    let insert = sqlx::query("INSERT INTO outbox_events (id) VALUES (UUID())")
        .execute(&relay)
        .await;
    assert!(
        insert.is_err_and(|e| e.to_string().contains("denied")),
        "the relay must not write events"
    );
    let sink = std::env::temp_dir().join(format!("{name}.jsonl"));
    let config = relay_config(&name, &relay_url, None, &sink);
    relay_everything(&config, &sink, &sent);

    writer.close().await;
    relay.close().await;
    for stmt in [
        format!("DROP USER '{relay_user}'@'%'"),
        format!("DROP USER '{writer_user}'@'%'"),
        format!("DROP DATABASE `{name}`"),
    ] {
        let _ = sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&admin).await;
    }
    let _ = std::fs::remove_file(sink);
    let _ = std::fs::remove_file(config);
}
