//! No secret in any output of the `outbox` binary, at `trace` level, dependencies included:
//! `outbox run` relaying from PostgreSQL (polling and log tailing) and MariaDB to NATS,
//! RabbitMQ and SQS, with a Kafka publisher holding a SASL password besides, and a password
//! in every URL and credential field; its `/healthz` and `/metrics`, `outbox status`, and a
//! config error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outbox_core::testkit::{order_event, unique_name};
use outbox_core::{Envelope, TableName};
use outbox_tests as fixtures;

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

/// A distinct password per service, so a leak names its origin.
fn password(service: &str, run: &str) -> String {
    format!("S3cret{service}{}", run.replace('_', ""))
}

/// `url` with `user:password@` put in front of its host.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{rest}")
}

/// `url` with its path replaced by `/db` (query kept off).
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{host}/{db}")
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl (the test makes a RabbitMQ user with a password of its own)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every line of `text` holding one of `secrets`.
fn leaks<'a>(text: &'a str, secrets: &[String]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| secrets.iter().any(|s| l.contains(s.as_str())))
        .collect()
}

fn outbox(args: &[&str], config: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("OUTBOX_LOG", "trace")
        .output()
        .expect("run outbox");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_any_output_at_trace_level() {
    let [pg_url, my_url, nats_url, amqp_url, kafka_url, sqs_url] =
        outbox_core::service_or_skip!("secrets", [Postgres, MySql, Nats, Amqp, Kafka, Sqs]);
    let kafka_bootstrap = kafka_url
        .trim_start_matches("kafka://")
        .trim_end_matches('/');
    let name = unique_name("outbox_sec");
    let secrets: Vec<String> = ["Pg", "Maria", "Nats", "NatsAuth", "Rabbit", "Kafka", "Sqs"]
        .iter()
        .map(|s| password(s, &name))
        .collect();
    let [
        pg_pw,
        my_pw,
        nats_pw,
        nats_auth_pw,
        amqp_pw,
        kafka_pw,
        sqs_pw,
    ] = <[String; 7]>::try_from(secrets.clone()).expect("seven");

    // Users with these passwords: MariaDB and RabbitMQ check them; PostgreSQL (trust
    // authentication here) and NATS (no authentication) are handed them anyway.
    let my_admin = sqlx::MySqlPool::connect(&my_url).await.expect("mariadb");
    for stmt in [
        format!("CREATE DATABASE `{name}`"),
        format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{my_pw}'"),
        format!("GRANT ALL ON `{name}`.* TO '{name}'@'%'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&my_admin)
            .await
            .expect("mariadb set-up");
    }
    rabbitmqctl(&["add_user", &name, &amqp_pw]);
    rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);

    let pg = with_credentials(&pg_url, "postgres", &pg_pw);
    let my = with_credentials(&with_database(&my_url, &name), &name, &my_pw);
    let nats = with_credentials(&nats_url, "relay", &nats_pw);
    let amqp = with_credentials(&amqp_url, &name, &amqp_pw);
    let http_port = fixtures::free_port();
    let config: PathBuf = std::env::temp_dir().join(format!("{name}.toml"));
    let fast = "lease = \"30s\"\npublish_timeout = \"5s\"\npoll_interval = \"20ms\"\nmax_poll_interval = \"200ms\"";
    std::fs::write(
        &config,
        format!(
            r#"[http]
listen = "127.0.0.1:{http_port}"

[sources.pg]
url = "{pg}"
table = "{name}.outbox_events"
[sources.pg.relay]
{fast}

[sources.maria]
url = "{my}"
[sources.maria.relay]
{fast}

[cdc.tail]
url = "{pg}"
mode = "message"
prefix = "{name}"
slot = "{name}"
dead_letter_table = "{name}.dead_letters"

[publishers.bus]
kind = "nats"
url = "{nats}"

[publishers.bus_auth]
kind = "nats"
url = "{nats_url}"
[publishers.bus_auth.auth]
kind = "user_password"
user = "relay"
password = "{nats_auth_pw}"

[publishers.rabbit]
kind = "amqp"
url = "{amqp}"

[publishers.kafka]
kind = "kafka"
bootstrap_servers = "{kafka_bootstrap}"
[publishers.kafka.sasl]
mechanism = "PLAIN"
username = "relay"
password = "{kafka_pw}"

[publishers.sqs]
kind = "sqs"
region = "us-east-1"
endpoint_url = "{sqs_url}"
[publishers.sqs.credentials]
access_key_id = "test"
secret_access_key = "{sqs_pw}"

[[routes]]
destination_prefix = "{name}.orders."
publisher = "bus"

[[routes]]
destination_prefix = "{name}.tail."
publisher = "bus_auth"

[[routes]]
destination_prefix = "{name}.rabbit/"
publisher = "rabbit"

[[routes]]
destination_prefix = "{name}-sqs"
publisher = "sqs"
"#
        ),
    )
    .expect("config");

    let js = fixtures::nats::jetstream(&nats_url).await;
    fixtures::nats::memory_stream(&js, &name.to_uppercase(), &format!("{name}.>")).await;
    let (_amqp, ch) = fixtures::amqp::admin(&amqp_url).await;
    fixtures::amqp::topic_queue(&ch, &format!("{name}.rabbit"), &name).await;
    let sqs = fixtures::sqs::client(&sqs_url);
    let queue_url = fixtures::sqs::create_queue(&sqs, &format!("{name}-sqs")).await;
    let (ok, migrate_out) = outbox(&["migrate"], &config);
    assert!(ok, "migrate: {migrate_out}");

    // Events for each source and route.
    let pg_pool = sqlx::PgPool::connect(&pg_url).await.expect("pg");
    let to_nats: Vec<Envelope> = (0..5)
        .map(|i| order_event(&format!("{name}.orders.x"), "k", i))
        .collect();
    let tailed: Vec<Envelope> = (0..5)
        .map(|i| order_event(&format!("{name}.tail.x"), "k", i))
        .collect();
    let to_rabbit: Vec<Envelope> = (0..5)
        .map(|i| order_event(&format!("{name}.rabbit/orders"), "k", i))
        .collect();
    let to_sqs: Vec<Envelope> = (0..5)
        .map(|i| order_event(&format!("{name}-sqs"), "k", i))
        .collect();
    let mut tx = pg_pool.begin().await.expect("begin");
    outbox_sqlx::postgres::PgOutbox::new(
        TableName::with_schema(&name, "outbox_events").expect("name"),
    )
    .enqueue_all(&mut tx, &[to_nats.clone(), to_sqs.clone()].concat())
    .await
    .expect("enqueue");
    outbox_sqlx::postgres::emit_with_prefix(&mut tx, &name, &tailed)
        .await
        .expect("emit");
    tx.commit().await.expect("commit");
    let my_pool = sqlx::MySqlPool::connect(&with_database(&my_url, &name))
        .await
        .expect("mariadb");
    let mut tx = my_pool.begin().await.expect("begin");
    outbox_sqlx::mysql::MySqlOutbox::default()
        .enqueue_all(&mut tx, &to_rabbit)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    // `outbox run` at trace level until everything arrived.
    let log_path = std::env::temp_dir().join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut relay = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("OUTBOX_LOG", "trace")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("outbox run");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_queue = 0;
    let mut in_sqs = 0;
    loop {
        let in_stream = fixtures::nats::stored_ids(&js, &name.to_uppercase())
            .await
            .len();
        in_queue += fixtures::amqp::take_ids(&ch, &name).await.len();
        in_sqs += fixtures::sqs::receive_ids(&sqs, &queue_url).await.len();
        if in_stream == to_nats.len() + tailed.len()
            && in_queue == to_rabbit.len()
            && in_sqs >= to_sqs.len()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything was relayed: {in_stream} in the stream, {in_queue} in the queue, {in_sqs} in SQS; log {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = fixtures::http_get(http_port, "/healthz");
    let metrics = fixtures::http_get(http_port, "/metrics");
    let _ = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status();
    let _ = relay.wait();
    let run_log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        run_log.lines().count() > 100,
        "a trace-level run logs a lot; got:\n{run_log}"
    );

    let (ok, status) = outbox(&["status"], &config);
    assert!(ok, "status: {status}");
    assert!(
        status.contains("maria") && status.contains("tail"),
        "{status}"
    );

    // A config error in a file full of passwords.
    let bad = std::env::temp_dir().join(format!("{name}-bad.toml"));
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &bad,
        text.replace(
            "[sources.maria.relay]",
            "[sources.maria.relay]\nbatch_sise = 3",
        ),
    )
    .expect("bad config");
    let (ok, config_error) = outbox(&["status"], &bad);
    assert!(!ok && config_error.contains("batch_sise"), "{config_error}");
    // A source that refuses the password: the error names it without the password.
    let refused = std::env::temp_dir().join(format!("{name}-refused.toml"));
    std::fs::write(&refused, text.replace(&my_pw, "S3cretWrongPassword")).expect("config");
    let (_, refused_out) = outbox(&["status"], &refused);
    assert!(refused_out.contains("maria"), "{refused_out}");

    let mut all = secrets.clone();
    all.push("S3cretWrongPassword".to_owned());
    for (what, text) in [
        ("migrate", &migrate_out),
        ("run at trace level", &run_log),
        ("/healthz", &health),
        ("/metrics", &metrics),
        ("status", &status),
        ("a config error", &config_error),
        ("a refused password", &refused_out),
    ] {
        let found = leaks(text, &all);
        assert!(
            found.is_empty(),
            "{what} shows a password ({} lines), e.g.:\n{}",
            found.len(),
            found.iter().take(5).copied().collect::<Vec<_>>().join("\n")
        );
    }

    // Clean-up.
    let (_, _) = outbox(&["drop-slot", "tail"], &config);
    rabbitmqctl(&["delete_user", &name]);
    for stmt in [
        format!("DROP USER '{name}'@'%'"),
        format!("DROP DATABASE `{name}`"),
    ] {
        let _ = sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&my_admin)
            .await;
    }
    let _ = js.delete_stream(&name.to_uppercase()).await;
    let _ = sqs.delete_queue().queue_url(&queue_url).send().await;
    for f in [config, bad, refused, log_path] {
        let _ = std::fs::remove_file(f);
    }
}
