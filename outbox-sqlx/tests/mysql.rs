//! outbox-sqlx against the machine's real MariaDB (or MySQL 8). Each test works in a
//! database of its own, dropped at the end.
#![cfg(feature = "mysql")]

use std::time::Duration;

use outbox_core::store::Store;
use outbox_core::testkit::{
    assert_relays_exactly, run_operations_suite, run_store_suite, unique_name,
};
use outbox_core::{Envelope, EventId, InMemoryPublisher, Relay, TableName};
use outbox_sql::Quote;
use outbox_sqlx::mysql::MySqlBackend;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

mod common;
use common::{assert_once_in_key_order, ev};

common::harness!(My, MySqlBackend, MySqlPool);

impl My {
    /// A database of its own, named `{prefix}_{random}`.
    async fn new(url: &str, prefix: &str) -> My {
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await
            .expect("connect to MariaDB");
        let db = unique_name(prefix);
        let table = TableName::with_schema(&db, "outbox_events").expect("valid name");
        My::setup(pool, table, format!("`{db}`.orders"), db).await
    }

    async fn drop_db(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE `{}`",
            self.owned
        )))
        .execute(&self.pool)
        .await
        .expect("drop test database");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_mariadb() {
    let url = outbox_core::service_or_skip!("conformance_suite_on_mariadb", MySql);
    // Every check gets a database of its own under this run's prefix; drop them after.
    let prefix = unique_name("outbox_conf");
    run_store_suite(|| My::new(&url, &prefix)).await;
    run_operations_suite(|| My::new(&url, &prefix)).await;
    My::new(&url, &prefix)
        .await
        .assert_unknown_status_refused()
        .await;
    My::new(&url, &prefix)
        .await
        .assert_unreadable_id_is_dead_lettered()
        .await;
    let pool = MySqlPool::connect(&url).await.expect("connect");
    let dbs: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?",
    )
    .bind(format!("{prefix}\\_%"))
    .fetch_all(&pool)
    .await
    .expect("list databases");
    assert!(!dbs.is_empty(), "the suite's databases were found");
    for db in dbs {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{db}`")))
            .execute(&pool)
            .await
            .expect("drop test database");
    }
}

/// Commit, rollback and a crash before commit: exactly the committed events are relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_committed_events_are_relayed() {
    let url = outbox_core::service_or_skip!("exactly_committed_events_are_relayed", MySql);
    let my = My::new(&url, "outbox_test").await;
    let committed = common::committed_pair();
    my.write(&committed, true).await.expect("commit");
    my.write(&[ev("c", 3)], false).await.expect("rollback");

    // The application crashes mid-transaction: its connection is killed before COMMIT.
    let mut tx = my.pool.begin().await.expect("begin");
    my.outbox
        .enqueue(&mut tx, &ev("d", 4))
        .await
        .expect("enqueue");
    let conn_id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut *tx)
        .await
        .expect("connection id");
    sqlx::query(sqlx::AssertSqlSafe(format!("KILL CONNECTION {conn_id}")))
        .execute(&my.pool)
        .await
        .expect("kill");
    assert!(
        tx.commit().await.is_err(),
        "commit on a killed connection must fail"
    );

    assert_relays_exactly(my.store.clone(), &committed).await;
    assert_eq!(
        my.orders().await,
        2,
        "business rows and events commit together"
    );
    my.drop_db().await;
}

/// Three relays on one MariaDB table: nothing published twice, per-key order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_share_one_table() {
    let url = outbox_core::service_or_skip!("several_relays_share_one_table", MySql);
    let my = My::new(&url, "outbox_test").await;
    let mut written = Vec::new();
    for round in 0..20 {
        let batch: Vec<Envelope> = (0..10).map(|k| ev(&format!("key-{k}"), round)).collect();
        my.write(&batch, true).await.expect("commit");
        written.extend(batch);
    }
    let publisher = InMemoryPublisher::new();
    let mut relays = Vec::new();
    for i in 0..3 {
        let relay = Relay::new(
            my.store.clone(),
            publisher.clone(),
            outbox_core::testkit::fast_relay_config(),
        )
        .expect("relay")
        .with_name(format!("relay-{i}"));
        relays.push(tokio::spawn(async move { relay.drain().await }));
    }
    for r in relays {
        r.await.expect("relay task").expect("drain");
    }
    // A relay may drain early while another holds the last heads; finish with one more.
    let last = Relay::new(
        my.store.clone(),
        publisher.clone(),
        outbox_core::testkit::fast_relay_config(),
    )
    .expect("relay");
    last.drain().await.expect("drain");
    assert_once_in_key_order(&publisher, &written);
    my.drop_db().await;
}

/// Another claim holds rows in the middle of a key's backlog locked (it read them and has
/// not committed): a claim takes the rows before them and stops there, never jumping past
/// them to the rows after (that published the key out of order with several relays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_stops_at_rows_another_claim_holds_locked() {
    let url =
        outbox_core::service_or_skip!("a_claim_stops_at_rows_another_claim_holds_locked", MySql);
    let my = My::new(&url, "outbox_gap").await;
    let events: Vec<Envelope> = (0..8).map(|n| ev("k", n)).collect();
    my.write(&events, true).await.expect("commit");
    let t = my.store.table().quoted(outbox_core::Dialect::MySql);
    // Rows 3..=5 (by position) locked by a transaction that stays open.
    let mut other = my.pool.begin().await.expect("begin");
    let held: Vec<String> = events[3..6].iter().map(|e| e.id().to_string()).collect();
    for id in &held {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT seq FROM {t} WHERE id = ? FOR UPDATE"
        )))
        .bind(id)
        .fetch_one(&mut *other)
        .await
        .expect("lock a row");
    }
    let claim = my
        .store
        .claim(50, Duration::from_secs(30))
        .await
        .expect("claim");
    let got: Vec<EventId> = claim.events.iter().map(|e| e.envelope.id()).collect();
    let want: Vec<EventId> = events[..3].iter().map(|e| e.id()).collect();
    assert_eq!(got, want, "the run ends before the rows held elsewhere");
    other.rollback().await.expect("rollback");
    // Nothing else is claimable while the first three are in flight.
    let second = my
        .store
        .claim(50, Duration::from_secs(30))
        .await
        .expect("claim");
    assert!(second.events.is_empty(), "the key's head is in flight");
    my.drop_db().await;
}
