//! outbox-cdc against the machine's real PostgreSQL (wal_level = logical): rows the sqlx
//! store writes are read back from a pgoutput slot, decoded, and equal what was committed.
#![cfg(feature = "postgres")]

use outbox_cdc::ledger::{LedgerTable, PgLedger};
use outbox_cdc::pgoutput::{Change, Relations, outbox_row, read_changes};
use outbox_cdc::slot::SlotSpec;
use outbox_core::testkit::{round_trip_event, unique_name};
use outbox_core::{Envelope, TableName, ValidationLimits};
use std::time::Duration;

use sqlx::PgPool;

/// What the slot holds for the publication, in binary format, decoded into envelopes.
async fn read_inserts(pool: &PgPool, spec: &SlotSpec) -> Vec<Envelope> {
    let mut relations = Relations::default();
    let mut out = Vec::new();
    for change in read_changes(pool, spec).await.expect("read the slot") {
        match change {
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
            _ => {}
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

/// The server's WAL position now, past every commit so far.
async fn wal_now(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .expect("wal position")
}

/// A `CdcRelay` streaming a slot in a task of its own, into an in-memory publisher, writing
/// down into a real `PgLedger`.
struct Streaming {
    publisher: outbox_core::InMemoryPublisher,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<outbox_core::Result<outbox_cdc::relay::CdcReport>>,
}

impl Streaming {
    async fn start(url: &str, spec: &SlotSpec, prefix: &str) -> Streaming {
        let pool = PgPool::connect(url).await.expect("pool");
        let ledger = match &spec.table {
            Some(t) => PgLedger::new(pool, LedgerTable::Outbox(t.clone())),
            None => PgLedger::new(
                pool,
                LedgerTable::DeadLetters {
                    table: dead_table(&spec.slot),
                    prefix: prefix.to_owned(),
                },
            ),
        };
        ledger.migrate().await.expect("dead-letter table");
        Streaming::with(
            url,
            spec,
            prefix,
            outbox_core::InMemoryPublisher::new(),
            ledger,
            1_000,
        )
        .await
    }

    async fn with(
        url: &str,
        spec: &SlotSpec,
        prefix: &str,
        publisher: outbox_core::InMemoryPublisher,
        ledger: PgLedger,
        max_piece_events: usize,
    ) -> Streaming {
        use outbox_cdc::postgres::{PgChangeStream, PgStreamConfig};
        use outbox_cdc::relay::{CdcRelay, CdcRelayConfig};
        let mut config = PgStreamConfig::new(url, spec.clone());
        config.prefix = prefix.to_owned();
        config.max_piece_events = max_piece_events;
        let stream = PgChangeStream::connect(config).await.expect("stream");
        let relay_config = CdcRelayConfig {
            retry: outbox_core::RetryPolicy::backoff(
                Duration::from_millis(10),
                Duration::from_millis(50),
                3,
            ),
            ..CdcRelayConfig::default()
        };
        let relay = CdcRelay::new(stream, publisher.clone(), ledger, relay_config).expect("relay");
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

    async fn stop(self) -> outbox_cdc::relay::CdcReport {
        let _ = self.stop.send(());
        self.run.await.expect("relay task").expect("relay")
    }
}

/// A message-mode slot of its own (`prefix_…`, also the test's message prefix).
async fn message_slot(url: &str, prefix: &str) -> (PgPool, String, SlotSpec) {
    let pool = PgPool::connect(url).await.expect("pool");
    let name = unique_name(prefix);
    let spec = SlotSpec {
        slot: name.clone(),
        publication: format!("{name}_pub"),
        table: None,
    };
    spec.ensure(&pool).await.expect("slot");
    (pool, name, spec)
}

/// Message mode's ledger for a test whose slot and prefix are `name`, its table created.
async fn message_ledger(pool: &PgPool, name: &str) -> PgLedger {
    let ledger = PgLedger::new(
        pool.clone(),
        LedgerTable::DeadLetters {
            table: dead_table(name),
            prefix: name.to_owned(),
        },
    );
    ledger.migrate().await.expect("dead-letter table");
    ledger
}

/// Message mode's dead-letter table for a test whose slot is `slot`.
fn dead_table(slot: &str) -> TableName {
    TableName::with_schema(slot, "dead_letters").expect("name")
}

/// Whether the slot's confirmed position reached `through` (`None`: no such slot).
async fn slot_confirmed(pool: &PgPool, spec: &SlotSpec, through: &str) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots \
         WHERE slot_name = $2",
    )
    .bind(through)
    .bind(&spec.slot)
    .fetch_optional(pool)
    .await
    .expect("slot position")
}

/// Waits until the slot's confirmed position reached `through` (20 s at most).
async fn wait_confirmed(pool: &PgPool, spec: &SlotSpec, through: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let confirmed = slot_confirmed(pool, spec, through).await;
        if confirmed == Some(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot {} not confirmed through {through}",
            spec.slot
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drops a test's slot, publication and schema.
async fn cleanup(pool: &PgPool, spec: &SlotSpec) {
    spec.drop_all(pool).await.expect("drop");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        spec.slot
    )))
    .execute(pool)
    .await
    .expect("drop schema");
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
        let confirmed = slot_confirmed(&pool, spec, through).await;
        if publisher.delivered_count() >= want && confirmed == Some(true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relayed {} of {want}; slot confirmed through {through}: {confirmed:?}",
            publisher.delivered_count()
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
    let (pool, name, spec) = message_slot(&url, "outbox_cdcm").await;
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
    // Sampled every 200 ms. Other tests' transactions (one of 100k events among them) pass
    // through this slot too and briefly hold WAL while they stream: the median and the
    // settled end are what must stay small.
    let mut samples = Vec::new();
    while tokio::time::Instant::now() < until {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (pad) SELECT repeat('x', 200) FROM generate_series(1, 500)"
        )))
        .execute(&other)
        .await
        .expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push(lag(&pool, &read).await);
    }
    let written: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - $1::pg_lsn)::bigint")
        .bind(&start)
        .fetch_one(&pool)
        .await
        .expect("WAL written");
    let unread_lag = lag(&pool, &unread).await;
    // Once the writes stop, the lag falls to (near) nothing within a few status intervals.
    let mut settled = lag(&pool, &read).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while settled >= written / 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        settled = lag(&pool, &read).await;
    }
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or(i64::MAX);
    let delivered = running.publisher.delivered_count();
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
        median < written / 10,
        "the read slot's median lag stayed small: {median} of {written} bytes written"
    );
    assert!(
        settled < written / 20,
        "the read slot's lag fell once writes stopped: {settled} of {written} bytes written"
    );
}

/// Ids in the order the publisher received them.
fn delivered_ids(publisher: &outbox_core::InMemoryPublisher) -> Vec<outbox_core::EventId> {
    publisher.delivered_ids()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_mode_marks_rows_published_and_dead_where_the_admin_commands_look() {
    use outbox_core::{DeadLetterAdmin, DeadLetterFilter, ErrorKind, StoreStats};
    let url = outbox_core::service_or_skip!("cdc table_mode_marks_rows", Postgres);
    let (pool, table, spec) = table_slot(&url, "outbox_cdcl").await;
    let events: Vec<Envelope> = (0..5)
        .map(|n| round_trip_event(&format!("k{n}"), n, "orders"))
        .collect();
    let publisher = outbox_core::InMemoryPublisher::new();
    publisher.fail_event(events[1].id(), 1, ErrorKind::Rejected);
    let ledger = PgLedger::new(pool.clone(), LedgerTable::Outbox(table.clone()));
    let running = Streaming::with(
        &url,
        &spec,
        "outbox",
        publisher.clone(),
        ledger.clone(),
        1_000,
    )
    .await;
    let outbox = outbox_sqlx::postgres::PgOutbox::new(table.clone());
    let mut tx = pool.begin().await.expect("begin");
    outbox.enqueue_all(&mut tx, &events).await.expect("enqueue");
    tx.commit().await.expect("commit");
    wait_confirmed(&pool, &spec, &wal_now(&pool).await).await;

    let store = outbox_sqlx::postgres::PgStore::new(pool.clone(), table.clone());
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        (
            stats.pending,
            stats.in_flight,
            stats.dead,
            stats.published_last_minute
        ),
        (0, 0, 1, 4),
        "{stats:?}"
    );
    let dead = ledger
        .list_dead(&DeadLetterFilter::default(), 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, events[1].id());
    assert_eq!(dead[0].envelope(), Some(&events[1]));
    assert!(dead[0].last_error.is_some(), "{:?}", dead[0].last_error);

    // Requeued: written again as an insert, which the relay reads and publishes.
    let requeued = ledger
        .requeue_dead(&DeadLetterFilter::default())
        .await
        .expect("requeue");
    assert_eq!(requeued, 1);
    wait_confirmed(&pool, &spec, &wal_now(&pool).await).await;
    let report = running.stop().await;
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.pending, stats.dead), (0, 0), "{stats:?}");
    assert_eq!(report.dead, 1);
    let delivered = delivered_ids(&publisher);
    let mut want: Vec<_> = events.iter().map(Envelope::id).collect();
    want.remove(1);
    want.push(events[1].id());
    assert_eq!(delivered, want, "each event once; the requeued one last");
    cleanup(&pool, &spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_dead_letters_land_in_a_table_and_requeue_emits_them_again() {
    use outbox_core::{DeadLetterAdmin, DeadLetterFilter, ErrorKind};
    let url = outbox_core::service_or_skip!("cdc message_mode_dead_letters", Postgres);
    let (pool, name, spec) = message_slot(&url, "outbox_cdcd").await;
    let events: Vec<Envelope> = (0..3).map(|n| round_trip_event("k", n, "orders")).collect();
    let publisher = outbox_core::InMemoryPublisher::new();
    publisher.fail_event(events[1].id(), 1, ErrorKind::Rejected);
    let ledger = message_ledger(&pool, &name).await;
    let running =
        Streaming::with(&url, &spec, &name, publisher.clone(), ledger.clone(), 1_000).await;
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::postgres::emit_with_prefix(&mut tx, &name, &events)
        .await
        .expect("emit");
    // Not an envelope: dead-lettered as it is, with its bytes.
    sqlx::query("SELECT pg_logical_emit_message(true, $1, '\\x00ff'::bytea)")
        .bind(&name)
        .execute(&mut *tx)
        .await
        .expect("poison");
    tx.commit().await.expect("commit");
    wait_confirmed(&pool, &spec, &wal_now(&pool).await).await;

    let dead = ledger
        .list_dead(&DeadLetterFilter::default(), 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let event = dead
        .iter()
        .find(|d| d.envelope().is_some())
        .expect("the event");
    assert_eq!(event.envelope(), Some(&events[1]));
    let poison = dead
        .iter()
        .find(|d| d.envelope().is_none())
        .expect("the poison");
    assert!(
        poison
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("undecodable")),
        "{poison:?}"
    );

    let requeued = ledger
        .requeue_dead(&DeadLetterFilter::default())
        .await
        .expect("requeue");
    assert_eq!(requeued, 1, "the poison is no event: it stays");
    wait_confirmed(&pool, &spec, &wal_now(&pool).await).await;
    running.stop().await;
    let left = ledger
        .list_dead(&DeadLetterFilter::default(), 10)
        .await
        .expect("list");
    assert_eq!(left.len(), 1);
    assert!(left[0].envelope().is_none());
    assert_eq!(
        ledger
            .purge_dead(&DeadLetterFilter::default())
            .await
            .expect("purge"),
        1
    );
    let want = vec![events[0].id(), events[2].id(), events[1].id()];
    assert_eq!(delivered_ids(&publisher), want);
    cleanup(&pool, &spec).await;
}

/// 100 000 events in one commit stream through in pieces: all published in order, and the
/// slot confirmed once past the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_100k_events_streams_through_in_pieces() {
    let url = outbox_core::service_or_skip!("cdc large_transaction", Postgres);
    let (pool, name, spec) = message_slot(&url, "outbox_cdcx").await;
    let ledger = message_ledger(&pool, &name).await;
    let publisher = outbox_core::InMemoryPublisher::new();
    let running = Streaming::with(&url, &spec, &name, publisher.clone(), ledger, 1_000).await;
    let events: Vec<Envelope> = (0..100_000)
        .map(|n| round_trip_event(&format!("k{}", n % 1_000), n, "orders"))
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    for chunk in events.chunks(10_000) {
        outbox_sqlx::postgres::emit_with_prefix(&mut tx, &name, chunk)
            .await
            .expect("emit");
    }
    tx.commit().await.expect("commit");
    let through = wal_now(&pool).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while publisher.delivered_count() < events.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "published {} of {}",
            publisher.delivered_count(),
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_confirmed(&pool, &spec, &through).await;
    let report = running.stop().await;
    assert_eq!((report.transactions, report.published), (1, 100_000));
    let want: Vec<_> = events.iter().map(Envelope::id).collect();
    assert_eq!(delivered_ids(&publisher), want, "commit order");
    cleanup(&pool, &spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_connection_honours_sslmode() {
    let url = outbox_core::service_or_skip!("cdc sslmode", Postgres);
    let (pool, name, spec) = message_slot(&url, "outbox_cdcs").await;
    let bad = outbox_cdc::postgres::PgChangeStream::connect(
        outbox_cdc::postgres::PgStreamConfig::new(format!("{url}?sslmode=sometimes"), spec.clone()),
    )
    .await
    .err()
    .expect("refused");
    assert!(bad.to_string().contains("`sslmode`"), "{bad}");

    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .expect("ssl setting");
    if ssl != "on" {
        assert!(
            std::env::var_os("OUTBOX_REQUIRE_SERVICES").is_none(),
            "PostgreSQL runs without ssl: the TLS relay cannot be tested"
        );
        println!("PostgreSQL runs without ssl: the TLS relay is not exercised");
        cleanup(&pool, &spec).await;
        return;
    }
    // verify-full against the server's own certificate as root, by the name it carries
    // (`localhost`): connected; against a CA that did not sign it: refused, and the error
    // says why. (verify-ca by IP fails here: pgwire-replication 0.5 forgives only the
    // older rustls name error, so it checks the name as verify-full does.)
    let cert: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&pool)
        .await
        .expect("ssl_cert_file");
    let by_name = url.replacen("127.0.0.1", "localhost", 1);
    let verified =
        outbox_cdc::postgres::PgChangeStream::connect(outbox_cdc::postgres::PgStreamConfig::new(
            format!("{by_name}?sslmode=verify-full&sslrootcert={cert}"),
            spec.clone(),
        ))
        .await
        .expect("verify-full with the server's certificate as root");
    drop(verified);
    let other = outbox_tests::tls::pki("not the server's CA");
    let refused =
        outbox_cdc::postgres::PgChangeStream::connect(outbox_cdc::postgres::PgStreamConfig::new(
            format!(
                "{by_name}?sslmode=verify-full&sslrootcert={}",
                other.ca().display()
            ),
            spec.clone(),
        ))
        .await
        .err()
        .map(|e| e.to_report())
        .unwrap_or_default();
    println!("another CA: {refused}");
    assert!(
        refused.contains("UnknownIssuer"),
        "refused with a foreign CA: {refused:?}"
    );
    let ledger = message_ledger(&pool, &name).await;
    let publisher = outbox_core::InMemoryPublisher::new();
    let tls_url = format!("{url}?sslmode=require");
    let running = Streaming::with(&tls_url, &spec, &name, publisher, ledger, 1_000).await;
    let event = round_trip_event("k", 1, "orders");
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::postgres::emit_with_prefix(&mut tx, &name, std::slice::from_ref(&event))
        .await
        .expect("emit");
    tx.commit().await.expect("commit");
    wait_confirmed(&pool, &spec, &wal_now(&pool).await).await;
    let encrypted: Option<bool> = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_replication_slots r JOIN pg_stat_ssl s ON s.pid = r.active_pid \
         WHERE r.slot_name = $1",
    )
    .bind(&name)
    .fetch_optional(&pool)
    .await
    .expect("the slot's connection");
    let published = delivered_ids(&running.publisher);
    running.stop().await;
    assert_eq!(encrypted, Some(true), "the replication connection uses TLS");
    assert_eq!(published, vec![event.id()]);
    cleanup(&pool, &spec).await;
}

/// A relay restarted at once takes its slot over as soon as the old session let go; a slot
/// another relay streams is refused after the wait, with PostgreSQL's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_slot_is_taken_over_and_a_held_one_refused() {
    let url = outbox_core::service_or_skip!("cdc slot takeover", Postgres);
    let (pool, name, spec) = message_slot(&url, "outbox_cdcr").await;
    for _ in 0..3 {
        Streaming::start(&url, &spec, &name).await.stop().await;
    }
    let holder = Streaming::start(&url, &spec, &name).await;
    let started = tokio::time::Instant::now();
    let err = outbox_cdc::postgres::PgChangeStream::connect(
        outbox_cdc::postgres::PgStreamConfig::new(url.clone(), spec.clone()),
    )
    .await
    .err()
    .expect("the slot is held");
    assert!(format!("{err:?}").contains("is active for PID"), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "it waited for the slot"
    );
    holder.stop().await;
    cleanup(&pool, &spec).await;
}
