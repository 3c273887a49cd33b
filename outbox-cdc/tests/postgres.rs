//! outbox-cdc against the machine's real PostgreSQL (wal_level = logical): rows the sqlx
//! store writes are read back from a pgoutput slot, decoded, and equal what was committed.
#![cfg(feature = "postgres")]

use outbox_cdc::pgoutput::{Change, Relations, decode, outbox_row};
use outbox_cdc::slot::SlotSpec;
use outbox_core::testkit::{round_trip_event, unique_name};
use outbox_core::{Envelope, TableName, ValidationLimits};
use std::time::Duration;

use sqlx::PgPool;

/// What the slot holds for the publication, in binary format, decoded into envelopes.
async fn read_inserts(pool: &PgPool, spec: &SlotSpec) -> Vec<Envelope> {
    let messages: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
         'proto_version', '1', 'publication_names', $2, 'binary', 'true')",
    )
    .bind(&spec.slot)
    .bind(&spec.publication)
    .fetch_all(pool)
    .await
    .expect("read the slot");
    let mut relations = Relations::default();
    let mut out = Vec::new();
    for m in &messages {
        match decode(m).expect("a pgoutput message") {
            Change::Relation(r) => relations.learn(r),
            Change::Insert { relation, tuple } => {
                let rel = relations.get(relation).expect("described before");
                let row = outbox_row(rel, &tuple).expect("an outbox row");
                let claimed = row
                    .into_claimed(&ValidationLimits::default())
                    .expect("a valid envelope");
                assert_eq!(claimed.attempts, 0);
                out.push(claimed.envelope);
            }
            Change::Other(_) => {}
        }
    }
    out
}

/// A pool, an outbox table in a schema of its own (`prefix_…`, also the slot's name), and a
/// slot whose publication covers the table's inserts.
async fn table_slot(url: &str, prefix: &str) -> (PgPool, TableName, SlotSpec) {
    let pool = PgPool::connect(url).await.expect("pool");
    let schema = unique_name(prefix);
    let table = TableName::with_schema(&schema, "outbox_events").expect("name");
    outbox_sqlx::postgres::migrate(&pool, &table)
        .await
        .expect("migrate");
    let spec = SlotSpec {
        slot: schema.to_owned(),
        publication: format!("{schema}_pub"),
        table: Some(table.clone()),
    };
    spec.ensure(&pool).await.expect("slot");
    (pool, table, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_outbox_inserts_decode_from_the_slot_in_commit_order() {
    let url = outbox_core::service_or_skip!("cdc committed_outbox_inserts_decode", Postgres);
    let (pool, table, spec) = table_slot(&url, "outbox_cdc").await;
    let schema = spec.slot.clone();
    spec.ensure(&pool).await.expect("slot again");
    let outbox = outbox_sqlx::postgres::PgOutbox::new(table.clone());

    // Two transactions that commit in the other order than they began, and a rollback.
    let (first, second) = (
        round_trip_event("a", 1, "orders"),
        round_trip_event("b", 2, "orders"),
    );
    let mut began_first = pool.begin().await.expect("begin");
    outbox
        .enqueue(&mut began_first, &first)
        .await
        .expect("enqueue");
    let mut began_second = pool.begin().await.expect("begin");
    outbox
        .enqueue_all(&mut began_second, std::slice::from_ref(&second))
        .await
        .expect("enqueue");
    began_second.commit().await.expect("commit");
    began_first.commit().await.expect("commit");
    let mut rolled = pool.begin().await.expect("begin");
    outbox
        .enqueue(&mut rolled, &round_trip_event("c", 3, "orders"))
        .await
        .expect("enqueue");
    rolled.rollback().await.expect("rollback");

    let lag = spec.status(&pool).await.expect("status").expect("exists");
    assert!(lag.lag_bytes.unwrap_or_default() > 0, "{lag:?}");
    let got = read_inserts(&pool, &spec).await;
    assert_eq!(
        got,
        vec![second, first],
        "commit order, field for field, no rollback"
    );

    spec.drop_all(&pool).await.expect("drop");
    assert!(spec.status(&pool).await.expect("status").is_none());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
}

/// Dead events, kept in memory by the tests.
#[derive(Clone, Default)]
struct Kept(std::sync::Arc<std::sync::Mutex<Vec<outbox_cdc::relay::DeadEvent>>>);

impl outbox_cdc::relay::DeadLetters for Kept {
    async fn record(&self, dead: &[outbox_cdc::relay::DeadEvent]) -> outbox_core::Result<()> {
        self.0.lock().expect("lock").extend_from_slice(dead);
        Ok(())
    }
}

/// The server's WAL position now, past every commit so far.
async fn wal_now(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .expect("wal position")
}

/// A `CdcRelay` streaming a slot in a task of its own, into an in-memory publisher.
struct Streaming {
    publisher: outbox_core::InMemoryPublisher,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<outbox_core::Result<outbox_cdc::relay::CdcReport>>,
}

impl Streaming {
    async fn start(url: &str, spec: &SlotSpec, prefix: &str) -> Streaming {
        use outbox_cdc::postgres::{PgChangeStream, PgStreamConfig};
        use outbox_cdc::relay::{CdcRelay, CdcRelayConfig};
        let stream = PgChangeStream::connect(PgStreamConfig {
            url: url.to_owned(),
            spec: spec.clone(),
            prefix: prefix.to_owned(),
            limits: ValidationLimits::default(),
        })
        .await
        .expect("stream");
        let publisher = outbox_core::InMemoryPublisher::new();
        let config = CdcRelayConfig::default();
        let relay =
            CdcRelay::new(stream, publisher.clone(), Kept::default(), config).expect("relay");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(relay.run_until(async move {
            let _ = stopped.await;
        }));
        Streaming {
            publisher,
            stop,
            run,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.run.await.expect("relay task").expect("relay");
    }
}

/// Streams the slot through a `CdcRelay` until `want` events were published and the slot's
/// confirmed position reached `through` (20 s at most), then `linger`s before stopping
/// (what a replay would deliver shows up then); returns what the publisher received.
async fn relay_from_slot(
    url: &str,
    spec: &SlotSpec,
    prefix: &str,
    want: usize,
    through: &str,
    linger: std::time::Duration,
) -> Vec<Envelope> {
    let running = Streaming::start(url, spec, prefix).await;
    let publisher = running.publisher.clone();
    let pool = PgPool::connect(url).await.expect("pool");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let confirmed: Option<bool> = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = $2",
        )
        .bind(through)
        .bind(&spec.slot)
        .fetch_optional(&pool)
        .await
        .expect("slot position");
        if publisher.deliveries().len() >= want && confirmed == Some(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relayed {} of {want}; slot confirmed through {through}: {confirmed:?}",
            publisher.deliveries().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(linger).await;
    running.stop().await;
    publisher
        .deliveries()
        .into_iter()
        .map(|d| d.envelope)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_relays_committed_emits_in_commit_order_and_confirms_the_slot() {
    let url = outbox_core::service_or_skip!("cdc message_mode_relays", Postgres);
    let pool = PgPool::connect(&url).await.expect("pool");
    let name = unique_name("outbox_cdcm");
    let spec = SlotSpec {
        slot: name.clone(),
        publication: format!("{name}_pub"),
        table: None,
    };
    spec.ensure(&pool).await.expect("slot");
    // Every message reaches every slot of the database: this test's own prefix keeps the
    // other tests' emits out.
    let emit = async |tx: &mut sqlx::PgConnection, events: &[Envelope]| {
        outbox_sqlx::postgres::emit_with_prefix(tx, &name, events)
            .await
            .expect("emit");
    };
    let events: Vec<Envelope> = (0..3).map(|n| round_trip_event("k", n, "orders")).collect();
    let mut first = pool.begin().await.expect("begin");
    emit(&mut first, &events[..2]).await;
    let mut second = pool.begin().await.expect("begin");
    emit(&mut second, &events[2..]).await;
    second.commit().await.expect("commit");
    first.commit().await.expect("commit");
    let mut rolled = pool.begin().await.expect("begin");
    emit(&mut rolled, &[round_trip_event("k", 9, "orders")]).await;
    rolled.rollback().await.expect("rollback");

    let through = wal_now(&pool).await;
    let got = relay_from_slot(&url, &spec, &name, 3, &through, Duration::ZERO).await;
    let want = vec![events[2].clone(), events[0].clone(), events[1].clone()];
    assert_eq!(got, want, "commit order, field for field, no rollback");
    // Confirmed: a new stream on the same slot replays nothing in two seconds.
    let again = relay_from_slot(&url, &spec, &name, 0, &through, Duration::from_secs(2)).await;
    assert!(again.is_empty(), "replayed {} events", again.len());
    spec.drop_all(&pool).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_mode_relays_the_outbox_tables_inserts() {
    let url = outbox_core::service_or_skip!("cdc table_mode_relays", Postgres);
    let (pool, table, spec) = table_slot(&url, "outbox_cdct").await;
    let schema = spec.slot.clone();
    let events: Vec<Envelope> = (0..4).map(|n| round_trip_event("k", n, "orders")).collect();
    let outbox = outbox_sqlx::postgres::PgOutbox::new(table);
    let mut tx = pool.begin().await.expect("begin");
    outbox.enqueue_all(&mut tx, &events).await.expect("enqueue");
    tx.commit().await.expect("commit");

    let through = wal_now(&pool).await;
    let got = relay_from_slot(&url, &spec, "outbox", 4, &through, Duration::ZERO).await;
    assert_eq!(got, events, "in order, field for field");
    spec.drop_all(&pool).await.expect("drop");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
}

/// The WAL a slot holds beyond its confirmed position, in bytes.
async fn lag(pool: &PgPool, spec: &SlotSpec) -> i64 {
    let status = spec.status(pool).await.expect("status").expect("the slot");
    status.lag_bytes.expect("a confirmed position")
}

/// A relay with nothing to publish for a minute, while another database writes WAL, keeps
/// its slot's lag bounded; a slot nobody reads, beside it, holds all of that WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_keeps_its_slot_lag_bounded_while_other_databases_write() {
    let url = outbox_core::service_or_skip!("cdc idle_relay_slot_lag", Postgres);
    let pool = PgPool::connect(&url).await.expect("pool");
    let name = unique_name("outbox_cdci");
    let spec = |slot: String| SlotSpec {
        publication: format!("{slot}_pub"),
        slot,
        table: None,
    };
    let (read, unread) = (spec(name.clone()), spec(format!("{name}_unread")));
    for s in [&read, &unread] {
        s.ensure(&pool).await.expect("slot");
    }
    // A prefix no one writes: this relay has nothing to publish.
    let running = Streaming::start(&url, &read, &name).await;

    // Another database's traffic: a table of its own in `root`, written for a minute.
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let other = PgPool::connect(&format!("{base}/root"))
        .await
        .expect("the root database");
    let table = format!("\"{name}\"");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGSERIAL, pad TEXT)"
    )))
    .execute(&other)
    .await
    .expect("table");
    let start = wal_now(&pool).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut worst_read = 0;
    while tokio::time::Instant::now() < until {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (pad) SELECT repeat('x', 200) FROM generate_series(1, 500)"
        )))
        .execute(&other)
        .await
        .expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        worst_read = worst_read.max(lag(&pool, &read).await);
    }
    let written: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - $1::pg_lsn)::bigint")
        .bind(&start)
        .fetch_one(&pool)
        .await
        .expect("WAL written");
    let unread_lag = lag(&pool, &unread).await;
    let delivered = running.publisher.deliveries().len();
    running.stop().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&other)
        .await
        .expect("drop table");
    for s in [&read, &unread] {
        s.drop_all(&pool).await.expect("drop");
    }

    assert_eq!(delivered, 0, "nothing was emitted");
    assert!(
        unread_lag >= written,
        "the unread slot holds all {written} bytes: {unread_lag}"
    );
    assert!(
        worst_read < written / 4,
        "the read slot's lag stayed bounded: at most {worst_read} of {written} bytes written"
    );
}
