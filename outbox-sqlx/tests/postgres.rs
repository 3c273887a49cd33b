//! outbox-sqlx against the machine's real PostgreSQL. Each test works in its own schema.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use outbox_core::testkit::{
    assert_relays_exactly, run_operations_suite, run_store_suite, unique_name,
};
use outbox_core::{Envelope, InMemoryPublisher, Relay, TableName};
use outbox_sqlx::postgres::{PgBackend, PgNotifier, PgWakeUp};
use sqlx::postgres::{PgPool, PgPoolOptions};

mod common;
use common::{assert_once_in_key_order, ev};

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(12)
        .connect(url)
        .await
        .expect("connect to PostgreSQL")
}

common::harness!(Pg, PgBackend, PgPool);

impl Pg {
    /// A schema of its own, named `{prefix}_{random}`.
    async fn new(url: &str, prefix: &str) -> Pg {
        let schema = unique_name(prefix);
        let table = TableName::with_schema(&schema, "outbox_events").expect("valid name");
        let orders = format!("\"{schema}\".orders");
        Pg::setup(pool(url).await, table, orders, schema).await
    }
}

/// Drops the schemas whose names start with `prefix` (a test's own).
async fn drop_schemas(url: &str, prefix: &str) {
    let pool = pool(url).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(prefix)
            .fetch_all(&pool)
            .await
            .expect("list schemas");
    assert!(!names.is_empty(), "the test's own schemas were found");
    for n in names {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA \"{n}\" CASCADE")))
            .execute(&pool)
            .await
            .expect("drop schema");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_postgres() {
    let url = outbox_core::service_or_skip!("conformance_suite_on_postgres", Postgres);
    let prefix = unique_name("outbox_conf");
    run_store_suite(|| Pg::new(&url, &prefix)).await;
    run_operations_suite(|| Pg::new(&url, &prefix)).await;
    Pg::new(&url, &prefix)
        .await
        .assert_unknown_status_refused()
        .await;
    drop_schemas(&url, &prefix).await;
}

/// Commit, rollback and a crash before commit: exactly the committed events are relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_committed_events_are_relayed() {
    let url = outbox_core::service_or_skip!("exactly_committed_events_are_relayed", Postgres);
    let prefix = unique_name("outbox_test");
    let pg = Pg::new(&url, &prefix).await;
    let committed = common::committed_pair();
    pg.write(&committed, true).await.expect("commit");
    pg.write(&[ev("c", 3)], false).await.expect("rollback");

    // The application crashes mid-transaction: its session is killed before COMMIT.
    let mut tx = pg.pool.begin().await.expect("begin");
    pg.outbox
        .enqueue(&mut tx, &ev("d", 4))
        .await
        .expect("enqueue");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .expect("pid");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pg.pool)
        .await
        .expect("terminate");
    assert!(killed);
    assert!(
        tx.commit().await.is_err(),
        "commit on a killed session must fail"
    );

    assert_relays_exactly(pg.store.clone(), &committed).await;
    assert_eq!(
        pg.orders().await,
        2,
        "business rows and events commit together"
    );
    drop_schemas(&url, &prefix).await;
}

/// Four relays on one table: nothing published twice, nothing lost, per-key order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_share_one_table() {
    let url = outbox_core::service_or_skip!("several_relays_share_one_table", Postgres);
    let prefix = unique_name("outbox_test");
    let pg = Pg::new(&url, &prefix).await;
    let publisher = InMemoryPublisher::new();
    let notifier = PgNotifier::spawn(pg.pool.clone(), pg.store.table(), Duration::from_millis(5));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for i in 0..4 {
        let wake = PgWakeUp::listen(&pg.pool, pg.store.table())
            .await
            .expect("listen");
        let relay = Relay::new(
            pg.store.clone(),
            publisher.clone(),
            outbox_core::testkit::fast_relay_config(),
        )
        .expect("relay")
        .with_name(format!("relay-{i}"))
        .with_wakeup(Arc::new(wake));
        let mut stop = stop_rx.clone();
        relays.push(tokio::spawn(relay.run_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let mut written = Vec::new();
    for round in 0..40 {
        let batch: Vec<Envelope> = (0..10).map(|k| ev(&format!("key-{k}"), round)).collect();
        pg.write(&batch, true).await.expect("commit");
        notifier.notify();
        written.extend(batch);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while publisher.delivered_ids().len() < written.len() && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    for r in relays {
        r.await.expect("relay task");
    }
    assert_once_in_key_order(&publisher, &written);
    drop_schemas(&url, &prefix).await;
}

#[tokio::test]
async fn injected_table_names_are_refused() {
    for bad in ["outbox; DROP TABLE x", "a.b.c", "\"quoted\""] {
        let err = TableName::parse(bad).expect_err("must refuse");
        assert!(err.to_string().contains("not a valid identifier"), "{err}");
    }
}

/// The logical decoding messages with `prefix` a pgoutput slot holds, in WAL order: each
/// `M` message is `M`, flags, LSN, the prefix (NUL-terminated), a length and the content,
/// decoded as an envelope.
async fn slot_messages(
    pool: &PgPool,
    slot: &str,
    publication: &str,
    prefix: &str,
) -> Vec<Envelope> {
    let changes: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
         'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
    )
    .bind(slot)
    .bind(publication)
    .fetch_all(pool)
    .await
    .expect("read the slot");
    let mut out = Vec::new();
    for data in changes.iter().filter(|d| d.first() == Some(&b'M')) {
        let rest = &data[10..];
        let nul = rest.iter().position(|b| *b == 0).expect("prefix end");
        if &rest[..nul] != prefix.as_bytes() {
            continue;
        }
        let body = &rest[nul + 1..];
        let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
        assert_eq!(data[1], 1, "the message is transactional");
        out.push(body[4..4 + len].to_vec());
    }
    let limits = outbox_core::ValidationLimits::default();
    out.iter()
        .map(|m| outbox_core::codec::decode(m, &limits).expect("a decodable envelope"))
        .collect()
}

/// `emit` writes the envelope into the WAL inside the caller's transaction: a committed
/// one is read back from a slot byte for byte, a rolled-back one never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_envelopes_reach_the_wal_only_when_committed() {
    use outbox_core::codec;
    let url = outbox_core::service_or_skip!("emitted_envelopes_reach_the_wal", Postgres);
    let pool = pool(&url).await;
    let level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&pool)
        .await
        .expect("wal_level");
    assert_eq!(
        level, "logical",
        "scripts/services.sh sets wal_level = logical"
    );
    let slot = unique_name("outbox_emit");
    let publication = unique_name("outbox_emit_pub");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE PUBLICATION {publication}"
    )))
    .execute(&pool)
    .await
    .expect("publication");
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(&pool)
        .await
        .expect("slot");

    let committed = vec![ev("a", 1), ev("a", 2), ev("b", 3)];
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::postgres::emit(&mut tx, &committed[0])
        .await
        .expect("emit");
    outbox_sqlx::postgres::emit_all(&mut tx, &committed[1..])
        .await
        .expect("emit all");
    tx.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::postgres::emit(&mut tx, &ev("c", 4))
        .await
        .expect("emit");
    tx.rollback().await.expect("rollback");
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::postgres::emit_with_prefix(&mut tx, "someone_else", &[ev("d", 5)])
        .await
        .expect("emit with another prefix");
    tx.commit().await.expect("commit");

    let decoded = slot_messages(&pool, &slot, &publication, codec::MESSAGE_PREFIX).await;
    assert_eq!(
        decoded, committed,
        "the committed envelopes, in order, nothing else"
    );

    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&pool)
        .await
        .expect("drop slot");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION {publication}"
    )))
    .execute(&pool)
    .await
    .expect("drop publication");
}

/// `emitting` runs the caller's statement and the emit as one statement: the row and the
/// events commit together, a rollback keeps neither, and a statement that fails emits
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_emitting_events_commits_both_or_neither() {
    use outbox_sqlx::postgres::{bind_events, emitting};
    let url = outbox_core::service_or_skip!("a_statement_emitting_events", Postgres);
    let pool = pool(&url).await;
    let schema = unique_name("outbox_emitting");
    let slot = unique_name("outbox_emitting");
    let publication = unique_name("outbox_emitting_pub");
    // Its own prefix: the other emit test of this binary writes the default one meanwhile.
    let prefix = unique_name("outbox_emitting_prefix");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.orders \
         (id bigint PRIMARY KEY, customer text NOT NULL); CREATE PUBLICATION {publication} \
         FOR TABLE {schema}.orders"
    )))
    .execute(&pool)
    .await
    .expect("schema, table and publication");
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(&pool)
        .await
        .expect("slot");
    let sql = emitting(
        &format!("INSERT INTO {schema}.orders (id, customer) VALUES ($1, $2);"),
        2,
    )
    .expect("one statement");
    let insert = |id: i64, events: &[Envelope]| {
        bind_events(
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .bind("c-4711"),
            &prefix,
            events,
        )
    };

    let committed = vec![ev("a", 1), ev("b", 2)];
    let mut tx = pool.begin().await.expect("begin");
    insert(1, &committed)
        .execute(&mut *tx)
        .await
        .expect("insert + emit");
    tx.commit().await.expect("commit");
    let mut tx = pool.begin().await.expect("begin");
    insert(2, &[ev("c", 3)])
        .execute(&mut *tx)
        .await
        .expect("insert + emit");
    tx.rollback().await.expect("rollback");
    let mut tx = pool.begin().await.expect("begin");
    let err = insert(1, &[ev("d", 4)])
        .execute(&mut *tx)
        .await
        .expect_err("a duplicate key fails the statement");
    assert!(err.to_string().contains("duplicate key"), "{err}");
    drop(tx);

    let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {schema}.orders ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .expect("rows");
    assert_eq!(ids, vec![1], "only the committed row");
    let decoded = slot_messages(&pool, &slot, &publication, &prefix).await;
    assert_eq!(
        decoded, committed,
        "the committed events, in order, nothing else"
    );
    let empty = emitting(" ; ", 0).expect_err("no statement");
    assert!(empty.to_string().contains("is empty"), "{empty}");

    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&slot)
        .execute(&pool)
        .await
        .expect("drop slot");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION {publication}; DROP SCHEMA {schema} CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("clean up");
}
