//! outbox-sqlx against real SQLite database files (embedded: never skipped).
#![cfg(feature = "sqlite")]

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::testkit::{StoreHarness, run_operations_suite, run_store_suite, unique_name};
use outbox_core::{Envelope, EventId, InMemoryPublisher, Relay, RelayConfig, Result, TableName};
use outbox_sql::Quote;
use outbox_sqlx::sqlite::{SqliteOutbox, SqliteStore, connect, migrate};
use sqlx::sqlite::SqlitePool;

struct Lite {
    pool: SqlitePool,
    outbox: SqliteOutbox,
    store: SqliteStore,
    path: std::path::PathBuf,
}

impl Drop for Lite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

impl Lite {
    async fn new() -> Lite {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name("outbox_sqlite")));
        let pool = connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("open");
        let table = TableName::parse("outbox_events").expect("valid");
        migrate(&pool, &table).await.expect("migrate");
        migrate(&pool, &table).await.expect("migrate again");
        sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .expect("orders");
        Lite {
            store: SqliteStore::new(pool.clone(), table.clone()),
            outbox: SqliteOutbox::new(table),
            pool,
            path,
        }
    }

    async fn write(&self, events: &[Envelope], commit: bool) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| outbox_sqlx::map_sqlx("begin", e))?;
        for e in events {
            sqlx::query("INSERT INTO orders (id, total) VALUES (?, 100)")
                .bind(e.id().to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| outbox_sqlx::map_sqlx("insert order", e))?;
        }
        self.outbox.enqueue_all(&mut tx, events).await?;
        if commit {
            tx.commit()
                .await
                .map_err(|e| outbox_sqlx::map_sqlx("commit", e))
        } else {
            tx.rollback()
                .await
                .map_err(|e| outbox_sqlx::map_sqlx("rollback", e))
        }
    }
}

impl StoreHarness for Lite {
    type Store = SqliteStore;
    fn store(&self) -> SqliteStore {
        self.store.clone()
    }
    async fn commit(&self, events: Vec<Envelope>) -> Result<()> {
        self.write(&events, true).await
    }
    async fn roll_back(&self, events: Vec<Envelope>) -> Result<()> {
        self.write(&events, false).await
    }
    async fn corrupt_headers(&self, id: EventId) -> Result<bool> {
        let t = self.store.table().quoted(outbox_core::Dialect::Sqlite);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {t} SET headers = '[1, 2]' WHERE id = ?"
        )))
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .expect("corrupt a row");
        Ok(true)
    }
}

fn ev(key: &str, n: usize) -> Envelope {
    outbox_core::testkit::order_event("orders", key, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_sqlite() {
    run_store_suite(Lite::new).await;
    run_operations_suite(Lite::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_committed_events_are_relayed() {
    let lite = Lite::new().await;
    let committed = vec![ev("a", 1), ev("b", 2)];
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
    let publisher = InMemoryPublisher::new();
    let config = RelayConfig {
        lease: Duration::from_secs(10),
        publish_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    };
    let relay = Relay::new(lite.store.clone(), publisher.clone(), config).expect("relay");
    assert_eq!(relay.drain().await.expect("drain").published, 2);
    let got: HashSet<EventId> = publisher.delivered_ids().into_iter().collect();
    assert_eq!(got, committed.iter().map(Envelope::id).collect());
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&lite.pool)
        .await
        .expect("count");
    assert_eq!(orders, 2);
}
