//! outbox-sqlx against real SQLite database files (embedded: never skipped).
#![cfg(feature = "sqlite")]

use outbox_core::TableName;
use outbox_core::testkit::{
    assert_relays_exactly, run_operations_suite, run_store_suite, unique_name,
};
use outbox_sqlx::sqlite::{SqliteBackend, connect};
use sqlx::sqlite::SqlitePool;

mod common;
use common::ev;

common::harness!(Lite, SqliteBackend, SqlitePool);

impl Drop for Lite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.owned));
        }
    }
}

impl Lite {
    /// A database file of its own.
    async fn new() -> Lite {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name("outbox_sqlite")));
        let path = path.display().to_string();
        let pool = connect(&format!("sqlite://{path}")).await.expect("open");
        let table = TableName::parse("outbox_events").expect("valid");
        Lite::setup(pool, table, "orders".to_owned(), path).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_sqlite() {
    run_store_suite(Lite::new).await;
    run_operations_suite(Lite::new).await;
    Lite::new().await.assert_unknown_status_refused().await;
    Lite::new()
        .await
        .assert_unreadable_id_is_dead_lettered()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_committed_events_are_relayed() {
    let lite = Lite::new().await;
    let committed = common::committed_pair();
    lite.write(&committed, true).await.expect("commit");
    lite.write(&[ev("c", 3)], false).await.expect("rollback");
    // The application dies mid-transaction: its connection goes away without COMMIT.
    {
        let mut conn = lite.pool.acquire().await.expect("conn");
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .expect("begin");
        lite.outbox
            .enqueue(&mut conn, &ev("d", 4))
            .await
            .expect("enqueue");
        conn.detach(); // drop the raw connection: SQLite rolls the transaction back
    }
    assert_relays_exactly(lite.store.clone(), &committed).await;
    assert_eq!(lite.orders().await, 2);
}
