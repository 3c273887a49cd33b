//! End to end with redelivery: a producer's outbox on one database, the relay, a real
//! broker, and a consumer on another database whose inbox makes each effect happen once
//! although the broker delivers every message twice (the consumer refuses each first
//! delivery after committing, as if it crashed before acknowledging).
//!
//! - NATS JetStream: producer on MariaDB (outbox-sqlx), consumer on PostgreSQL (outbox-sqlx
//!   inbox); redelivery by a negative acknowledgement.
//! - SQS (moto): producer on SQLite (outbox-sqlx), consumer on MariaDB (outbox-seaorm inbox);
//!   redelivery by resetting the visibility timeout.
//!
//! RabbitMQ (diesel) and Kafka (event-table source) are shown the same way by the
//! `order_shipping` and `ledger_kafka` examples, which CI runs.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use outbox_core::testkit::unique_name;
use outbox_core::{Envelope, EventId, TableName};
use sqlx::AssertSqlSafe;

const EVENTS: usize = 20;

fn events(destination: &str) -> Vec<Envelope> {
    (0..EVENTS)
        .map(|n| {
            Envelope::builder("order", format!("o-{n}"), "order.placed", destination)
                .json(&serde_json::json!({ "order": n }))
                .build()
                .expect("valid envelope")
        })
        .collect()
}

/// The deliveries a consumer saw, and how many of them its inbox recognised as repeats.
struct Tally {
    deliveries: usize,
    duplicates: usize,
    deadline: tokio::time::Instant,
}

impl Tally {
    /// A tally that gives the broker a minute to deliver everything twice.
    fn new() -> Tally {
        Tally {
            deliveries: 0,
            duplicates: 0,
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        }
    }

    /// Whether to fetch again: not every message came twice yet, and time is left.
    fn waiting(&self) -> bool {
        self.deliveries < 2 * EVENTS && tokio::time::Instant::now() < self.deadline
    }

    /// One delivery, whose inbox record was new or a repeat.
    fn delivered(&mut self, new: bool) {
        self.deliveries += 1;
        if !new {
            self.duplicates += 1;
        }
    }

    /// Every message came twice, every second copy was recognised, and the effect of
    /// each sent event stands exactly once in `effects` (the event ids, as text).
    fn assert_each_effect_once(
        &self,
        sent: &[Envelope],
        effects: impl IntoIterator<Item = String>,
    ) {
        let mut per_event: HashMap<String, usize> = HashMap::new();
        for e in effects {
            *per_event.entry(e).or_default() += 1;
        }
        assert_eq!(self.deliveries, 2 * EVENTS, "every message delivered twice");
        assert_eq!(self.duplicates, EVENTS, "every redelivery recognised");
        for e in sent {
            assert_eq!(
                per_event.get(&e.id().to_string()),
                Some(&1),
                "effect of {} applied once",
                e.id()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_redelivery_mariadb_outbox_postgres_inbox() {
    let [nats_url, my_url, pg_url] =
        outbox_core::service_or_skip!("redelivery", [Nats, MySql, Postgres]);

    // Producer: the outbox in a MariaDB database of its own.
    let my = sqlx::MySqlPool::connect(&my_url).await.expect("mariadb");
    let db = unique_name("redeliv");
    let outbox_table = TableName::with_schema(&db, "outbox_events").expect("name");
    outbox_sqlx::mysql::migrate(&my, &outbox_table)
        .await
        .expect("migrate");
    let stream_name = unique_name("redeliv");
    let sent = events(&format!("{stream_name}.orders"));
    let outbox = outbox_sqlx::mysql::MySqlOutbox::new(outbox_table.clone());
    let mut tx = my.begin().await.expect("begin");
    outbox.enqueue_all(&mut tx, &sent).await.expect("enqueue");
    tx.commit().await.expect("commit");

    // Broker: a JetStream stream; the relay publishes into it.
    let publisher = outbox_nats::NatsPublisher::connect(outbox_nats::NatsConfig::new(&nats_url))
        .await
        .expect("nats");
    let js = publisher.jetstream();
    let stream =
        outbox_tests::nats::memory_stream(&js, &stream_name, &format!("{stream_name}.>")).await;
    let store = outbox_sqlx::mysql::MySqlStore::new(my.clone(), outbox_table);
    outbox_tests::drain_into(store, publisher, EVENTS).await;

    // Consumer: the inbox and an effects table on PostgreSQL.
    let pg = sqlx::PgPool::connect(&pg_url).await.expect("postgres");
    let inbox_table = TableName::parse(&unique_name("rinbox")).expect("name");
    let effects = unique_name("reffects");
    let inbox =
        outbox_sqlx::inbox::Inbox::with_table("billing", inbox_table.clone()).expect("inbox");
    inbox
        .migrate(&mut *pg.acquire().await.expect("conn"))
        .await
        .expect("inbox table");
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {effects} (event_id UUID NOT NULL)"
    )))
    .execute(&pg)
    .await
    .expect("effects");

    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("billing".to_owned()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut tally = Tally::new();
    while tally.waiting() {
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            let id = outbox_nats::consumer::event_id(&m).expect("event id");
            let mut tx = pg.begin().await.expect("begin");
            let new = inbox.record(&mut *tx, id).await.expect("record").is_new();
            if new {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {effects} (event_id) VALUES ($1)"
                )))
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await
                .expect("effect");
            }
            tx.commit().await.expect("commit");
            tally.delivered(new);
            let first = m.info().expect("info").delivered == 1;
            if first {
                m.ack_with(async_nats::jetstream::AckKind::Nak(None))
                    .await
                    .expect("nak");
            } else {
                m.ack().await.expect("ack");
            }
        }
    }
    let rows: Vec<(sqlx::types::Uuid,)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT event_id FROM {effects}")))
            .fetch_all(&pg)
            .await
            .expect("effects");
    tally.assert_each_effect_once(
        &sent,
        rows.into_iter()
            .map(|(u,)| EventId::from_uuid(u).to_string()),
    );

    let _ = js.delete_stream(&stream_name).await;
    let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE `{db}`")))
        .execute(&my)
        .await;
    let _ = sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {inbox_table}, {effects}"
    )))
    .execute(&pg)
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_redelivery_sqlite_outbox_seaorm_inbox() {
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

    let [sqs_url, my_url] = outbox_core::service_or_skip!("redelivery", [Sqs, MySql]);

    // Producer: the outbox in a SQLite file.
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("redeliv")));
    let lite = outbox_sqlx::sqlite::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("sqlite");
    outbox_sqlx::sqlite::migrate(&lite, &TableName::default())
        .await
        .expect("migrate");
    let queue = unique_name("redeliv");
    let sent = events(&queue);
    let mut tx = lite.begin().await.expect("begin");
    outbox_sqlx::sqlite::enqueue_all(&mut tx, &sent)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    // Broker: an SQS queue; the relay sends into it.
    let publisher = outbox_sqs::SqsPublisher::connect(&outbox_sqs::SqsConfig {
        region: Some("us-east-1".to_owned()),
        endpoint_url: Some(sqs_url.clone()),
        credentials: Some(outbox_sqs::SqsCredentials {
            access_key_id: "test".to_owned(),
            secret_access_key: "test".into(),
            session_token: None,
        }),
        ca_file: None,
    })
    .await
    .expect("sqs");
    let client = publisher.client().clone();
    let queue_url = outbox_tests::sqs::create_queue(&client, &queue).await;
    let store = outbox_sqlx::sqlite::SqliteStore::new(lite.clone(), TableName::default());
    outbox_tests::drain_into(store, publisher, EVENTS).await;

    // Consumer: SeaORM on MariaDB, the inbox and an effects table.
    let db = sea_orm::Database::connect(&my_url).await.expect("mariadb");
    let inbox_table = TableName::parse(&unique_name("sinbox")).expect("name");
    let effects = unique_name("seffects");
    let inbox =
        outbox_seaorm::inbox::Inbox::with_table("shipping", inbox_table.clone()).expect("inbox");
    inbox.migrate(&db).await.expect("inbox table");
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_string(
        backend,
        format!("CREATE TABLE {effects} (event_id CHAR(36) NOT NULL)"),
    ))
    .await
    .expect("effects");

    let mut tally = Tally::new();
    while tally.waiting() {
        let got = client
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .expect("receive");
        for m in got.messages() {
            let id = outbox_sqs::consumer::event_id(m).expect("event id");
            let txn = db.begin().await.expect("begin");
            let new = inbox.record(&txn, id).await.expect("record").is_new();
            if new {
                txn.execute_raw(Statement::from_string(
                    backend,
                    format!("INSERT INTO {effects} (event_id) VALUES ('{id}')"),
                ))
                .await
                .expect("effect");
            }
            txn.commit().await.expect("commit");
            tally.delivered(new);
            let receipt = m.receipt_handle().expect("receipt handle");
            let count: u32 = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            if count == 1 {
                client
                    .change_message_visibility()
                    .queue_url(&queue_url)
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .expect("release");
            } else {
                client
                    .delete_message()
                    .queue_url(&queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!("SELECT event_id AS e FROM {effects}"),
        ))
        .await
        .expect("effects");
    tally.assert_each_effect_once(
        &sent,
        rows.iter()
            .map(|r| r.try_get::<String>("", "e").expect("event id")),
    );

    let _ = client.delete_queue().queue_url(&queue_url).send().await;
    let _ = db
        .execute_raw(Statement::from_string(
            backend,
            format!("DROP TABLE IF EXISTS {inbox_table}, {effects}"),
        ))
        .await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
