//! The inbox against the machine's real PostgreSQL, MariaDB and SQLite: the shared suite
//! (redelivery, concurrent duplicates, rollback, consumers, retention).
#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

use std::time::Duration;

use outbox_core::testkit::{Delivery, InboxHarness, TempDb, run_inbox_suite, unique_name};
use outbox_core::{EventId, InboxOutcome, Result, TableName};
use outbox_sqlx::inbox::Inbox;
use outbox_sqlx::map_sqlx;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, SqlitePool};

/// An inbox table and an effects table of its own on one pool.
struct Harness<P> {
    pool: P,
    table: TableName,
    effects: String,
    _file: Option<TempDb>,
}

/// The harness on one sqlx pool type: its body is the same for the three databases, the
/// macro only names the pool.
macro_rules! harness_on {
    ($pool:ty) => {
        impl Harness<$pool> {
            async fn new(pool: $pool) -> Self {
                let table = TableName::parse(&unique_name("inbox")).expect("name");
                let effects = unique_name("effects");
                let inbox = Inbox::with_table("setup", table.clone()).expect("inbox");
                let mut c = pool.acquire().await.expect("conn");
                inbox.migrate(&mut *c).await.expect("migrate");
                inbox.migrate(&mut *c).await.expect("migrate is idempotent");
                sqlx::query(AssertSqlSafe(format!(
                    "CREATE TABLE {effects} (event_id VARCHAR(36) NOT NULL)"
                )))
                .execute(&mut *c)
                .await
                .expect("effects");
                drop(c);
                Harness {
                    pool,
                    table,
                    effects,
                    _file: None,
                }
            }
        }

        impl InboxHarness for Harness<$pool> {
            async fn process(&self, d: Delivery<'_>) -> Result<InboxOutcome> {
                let inbox = Inbox::with_table(d.consumer, self.table.clone())?;
                let mut tx = self.pool.begin().await.map_err(|e| map_sqlx("begin", e))?;
                let outcome = inbox.record(&mut *tx, d.id).await?;
                if outcome.is_new() {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {} (event_id) VALUES ('{}')",
                        self.effects, d.id
                    )))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx("effect", e))?;
                }
                tokio::time::sleep(d.hold).await;
                if d.commit {
                    tx.commit().await.map_err(|e| map_sqlx("commit", e))?;
                } else {
                    tx.rollback().await.map_err(|e| map_sqlx("rollback", e))?;
                }
                Ok(outcome)
            }

            async fn effects(&self, id: EventId) -> Result<u64> {
                let q = format!(
                    "SELECT COUNT(*) FROM {} WHERE event_id = '{id}'",
                    self.effects
                );
                let n: i64 = sqlx::query_scalar(AssertSqlSafe(q))
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| map_sqlx("count", e))?;
                Ok(n.unsigned_abs())
            }

            async fn purge(&self, older_than: Duration) -> Result<u64> {
                let mut c = self.pool.acquire().await.map_err(|e| map_sqlx("conn", e))?;
                Inbox::with_table("any", self.table.clone())?
                    .purge(&mut *c, older_than, 3)
                    .await
            }

            async fn tear_down(self) {
                for t in [self.table.to_string(), self.effects.clone()] {
                    sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                        .execute(&self.pool)
                        .await
                        .expect("drop table");
                }
            }
        }
    };
}

harness_on!(PgPool);
harness_on!(MySqlPool);
harness_on!(SqlitePool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_postgres() {
    let url = outbox_core::service_or_skip!("inbox_suite_on_postgres", Postgres);
    let pool = PgPool::connect(&url).await.expect("connect");
    run_inbox_suite(|| Harness::<PgPool>::new(pool.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_mariadb() {
    let url = outbox_core::service_or_skip!("inbox_suite_on_mariadb", MySql);
    let pool = MySqlPool::connect(&url).await.expect("connect");
    run_inbox_suite(|| Harness::<MySqlPool>::new(pool.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_sqlite() {
    run_inbox_suite(|| async {
        let file = TempDb::new("inbox");
        let pool = outbox_sqlx::sqlite::connect(&file.url())
            .await
            .expect("open");
        Harness {
            _file: Some(file),
            ..Harness::<SqlitePool>::new(pool).await
        }
    })
    .await;
}

#[tokio::test]
async fn a_bad_consumer_name_is_refused_before_any_sql() {
    let err = Inbox::new("x".repeat(300)).expect_err("too long");
    assert!(err.message().contains("consumer"), "{err}");
}
