//! A ledger whose transactions table *is* the event log, relayed to Kafka directly: no
//! outbox table, no second write.
//!
//! ```text
//! ledger service ──(sqlx, PostgreSQL: INSERT INTO ledger_transactions, concurrent writers,
//!        │          some transactions roll back, commits land out of id order)
//!   log relay (EventTableSource: gap-aware checkpoint, saved after Kafka acknowledged;
//!        │     stopped gracefully and crashed mid-stream, then restarted)
//!        ▼
//!      Kafka topic ──> balances service (sqlx, SQLite: inbox record + balance update in one
//!                      transaction); then the whole topic is consumed a second time
//! ```
//!
//! The example checks that every committed ledger row reached Kafka, that nothing rolled
//! back did, and that the balances equal the ledger's sums after every event was consumed
//! twice. It exits with an error if not.
//!
//! Needs PostgreSQL and a Kafka broker (`scripts/services.sh` starts tansu):
//!
//! ```text
//! cargo run -p outbox-examples --example ledger_kafka
//! ```
//!
//! URLs come from `OUTBOX_TEST_POSTGRES_URL` and `OUTBOX_TEST_KAFKA_URL` (defaults: the
//! local services). Each run uses a table, checkpoint and topic of its own.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{EventId, LogRelay, LogRelayConfig};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_sqlx::event_table::{EventTableMapping, EventTableSource};
use outbox_sqlx::inbox::Inbox;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use sqlx::{AssertSqlSafe, PgPool, SqlitePool};
use tokio::sync::Mutex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Books one transaction; returns `(id, account, amount)` if it committed.
async fn book(
    pool: &PgPool,
    table: &str,
    account: &str,
    amount: i64,
    hold: Duration,
    commit: bool,
) -> Result<Option<(i64, String, i64)>, BoxError> {
    let mut tx = pool.begin().await?;
    let (id,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO {table} (account_id, kind, amount_cents, body) VALUES ($1, $2, $3, $4) RETURNING id"
    )))
    .bind(account)
    .bind(if amount >= 0 { "credit" } else { "debit" })
    .bind(amount)
    .bind(serde_json::json!({ "account": account, "amount_cents": amount }))
    .fetch_one(&mut *tx)
    .await?;
    // Other writers commit while this one holds its id: commits land out of id order.
    tokio::time::sleep(hold).await;
    if commit {
        tx.commit().await?;
        Ok(Some((id, account.to_owned(), amount)))
    } else {
        tx.rollback().await?;
        Ok(None)
    }
}

/// Applies one Kafka record to the balances, once.
async fn apply(balances: &SqlitePool, inbox: &Inbox, m: &impl Message) -> Result<bool, BoxError> {
    let event_id = outbox_kafka::consumer::event_id(m)?;
    let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
    let account = body["account"].as_str().ok_or("payload has no account")?;
    let amount = body["amount_cents"]
        .as_i64()
        .ok_or("payload has no amount_cents")?;
    let mut tx = balances.begin().await?;
    if !inbox.record(&mut *tx, event_id).await?.is_new() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO balances (account, cents) VALUES (?, ?) \
         ON CONFLICT (account) DO UPDATE SET cents = cents + excluded.cents",
    )
    .bind(account)
    .bind(amount)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Reads the whole topic with a fresh consumer group; returns (records, new, duplicates, ids).
async fn consume_all(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    balances: &SqlitePool,
    inbox: &Inbox,
) -> Result<(usize, usize, usize, HashSet<EventId>), BoxError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("balances-{}", fastrand::u64(..)))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let (mut records, mut new, mut dup) = (0, 0, 0);
    let mut ids = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut quiet_since = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records += 1;
                quiet_since = tokio::time::Instant::now();
                ids.insert(outbox_kafka::consumer::event_id(&m)?);
                if apply(balances, inbox, &m).await? {
                    new += 1;
                } else {
                    dup += 1;
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None if ids.len() >= expected && quiet_since.elapsed() > Duration::from_secs(2) => {
                break;
            }
            None => {}
        }
    }
    Ok((records, new, dup, ids))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let pg_url = env_or(
        "OUTBOX_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let kafka_url = env_or("OUTBOX_TEST_KAFKA_URL", "kafka://127.0.0.1:9092");
    let bootstrap = kafka_url.trim_start_matches("kafka://").to_owned();
    let run = format!("{}_{}", std::process::id(), fastrand::u32(..));
    let table = format!("ledger_transactions_{run}");
    let topic = format!("ledger_{run}");
    let source_name = format!("ledger-to-kafka-{run}");

    let pool = PgPool::connect(&pg_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, account_id TEXT NOT NULL, kind TEXT NOT NULL, \
         amount_cents BIGINT NOT NULL, body JSONB NOT NULL, booked_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )))
    .execute(&pool)
    .await?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &opts,
        )
        .await?
    {
        r.map_err(|(t, e)| format!("creating topic {t}: {e}"))?;
    }

    let outcome = run_example(&pool, &bootstrap, &table, &topic, &source_name).await;

    let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&pool)
        .await;
    let _ = sqlx::query("DELETE FROM outbox_checkpoints WHERE name = $1")
        .bind(&source_name)
        .execute(&pool)
        .await;
    let _ = admin.delete_topics(&[topic.as_str()], &opts).await;
    outcome
}

async fn run_example(
    pool: &PgPool,
    bootstrap: &str,
    table: &str,
    topic: &str,
    source_name: &str,
) -> Result<(), BoxError> {
    // The user's columns mapped to the envelope; ids are derived from the position.
    let mapping = EventTableMapping {
        table: table.to_owned(),
        position: "id".into(),
        aggregate_id: "account_id".into(),
        event_type: "kind".into(),
        payload: "body".into(),
        created_at: Some("booked_at".into()),
        aggregate_type_name: Some("account".into()),
        destination: topic.to_owned(),
        ..EventTableMapping::default()
    };
    let source = EventTableSource::new(pool.clone(), source_name, mapping)?;
    source.migrate().await?;
    let publisher = KafkaPublisher::new(KafkaConfig::new(bootstrap))?;
    let config = LogRelayConfig {
        poll_interval: Duration::from_millis(20),
        max_poll_interval: Duration::from_millis(200),
        gap_grace: Duration::from_millis(200),
        ..LogRelayConfig::default()
    };
    let start = |owner: &str| {
        let relay = LogRelay::new(source.clone(), publisher.clone(), config.clone())
            .map(|r| r.with_owner(owner));
        relay.map(|relay| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            (
                stop,
                tokio::spawn(relay.run_until(async move {
                    let _ = stopped.await;
                })),
            )
        })
    };

    // Four writers book 50 transactions each; one in ten rolls back.
    let committed = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (pool, table, committed) = (pool.clone(), table.to_owned(), Arc::clone(&committed));
        writers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w);
            for _ in 0..50 {
                let account = format!("acc-{}", rng.u8(0..6));
                let amount = rng.i64(-5_000..10_000);
                let hold = Duration::from_millis(rng.u64(0..20));
                if let Some(row) =
                    book(&pool, &table, &account, amount, hold, rng.u8(0..10) != 0).await?
                {
                    committed.lock().await.push(row);
                }
            }
            Ok::<(), BoxError>(())
        }));
    }
    // The relay runs, is stopped gracefully, a second relay takes over, crashes (its task
    // is aborted wherever it is), and the same owner restarts.
    let (stop, first) = start("relay-a")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    let r1 = first.await?;
    let (_stop_b, second) = start("relay-b")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.abort();
    let _ = second.await;
    let (stop, third) = start("relay-b")?;
    for w in writers {
        w.await??;
    }
    let committed = committed.lock().await.clone();
    // Wait until the checkpoint covers every committed row and no gap is open.
    let last = committed.iter().map(|(id, _, _)| *id).max().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cp = source.checkpoint().await?.ok_or("no checkpoint saved")?;
        if cp.high >= last && cp.gaps.is_empty() && cp.retries.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("relay did not catch up: {cp:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    let r3 = third.await?;

    // The balances service, twice over the whole topic.
    let balances = SqlitePool::connect("sqlite::memory:").await?;
    sqlx::query("CREATE TABLE balances (account TEXT PRIMARY KEY, cents INTEGER NOT NULL)")
        .execute(&balances)
        .await?;
    let inbox = Inbox::new("balances")?;
    inbox.migrate(&mut *balances.acquire().await?).await?;
    let (rec1, new1, dup1, ids) =
        consume_all(bootstrap, topic, committed.len(), &balances, &inbox).await?;
    let (rec2, new2, dup2, _) =
        consume_all(bootstrap, topic, committed.len(), &balances, &inbox).await?;

    // Checks.
    let want_ids: HashSet<EventId> = committed
        .iter()
        .map(|(id, _, _)| outbox_core::event_table::derived_event_id(source_name, *id))
        .collect();
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for (_, account, amount) in &committed {
        *want.entry(account.clone()).or_default() += amount;
    }
    let got: BTreeMap<String, i64> = sqlx::query_as("SELECT account, cents FROM balances")
        .fetch_all(&balances)
        .await?
        .into_iter()
        .collect();
    println!("| measure                                   | value |");
    println!("|-------------------------------------------|-------|");
    println!(
        "| ledger rows committed (4 writers)         | {:>5} |",
        committed.len()
    );
    println!(
        "| distinct events on the topic              | {:>5} |",
        ids.len()
    );
    println!("| records on the topic (1st pass)           | {rec1:>5} |");
    println!("| duplicates from the relay crash (1st pass)| {dup1:>5} |");
    println!("| applied (1st pass)                        | {new1:>5} |");
    println!("| records consumed again (2nd pass)         | {rec2:>5} |");
    println!("| applied again (2nd pass; must be 0)       | {new2:>5} |");
    println!(
        "| published by relay a / restarted relay b  | {:>5} / {:>5} |",
        r1.published, r3.published
    );
    if ids != want_ids {
        let missing = want_ids.difference(&ids).count();
        let ghosts = ids.difference(&want_ids).count();
        return Err(format!("{missing} committed rows missing from Kafka, {ghosts} rows that were not committed on it").into());
    }
    if new1 != committed.len() || new2 != 0 || dup2 != rec2 {
        return Err(format!(
            "expected {} effects once: first pass applied {new1}, second {new2}",
            committed.len()
        )
        .into());
    }
    if got != want {
        return Err(format!("balances {got:?} differ from the ledger's sums {want:?}").into());
    }
    println!(
        "\nevery committed ledger row reached Kafka; balances match the ledger after consuming everything twice"
    );
    Ok(())
}
