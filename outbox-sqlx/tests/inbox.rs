//! The inbox against the machine's real PostgreSQL, MariaDB and SQLite: the shared suite
//! (redelivery, concurrent duplicates, rollback, consumers, retention).
#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

use std::time::Duration;

use outbox_core::testkit::{InboxHarness, run_inbox_suite, unique_name};
use outbox_core::{EventId, InboxOutcome, Result, TableName};
use outbox_sqlx::inbox::Inbox;
use outbox_sqlx::map_sqlx;
use sqlx::{AssertSqlSafe, MySqlPool, PgPool, SqlitePool};

enum Db {
    Pg(PgPool),
    My(MySqlPool),
    Lite(
        SqlitePool,
        #[allow(dead_code, reason = "held for its Drop, which removes the file")]
        tempfile_path::TempPath,
    ),
}

mod tempfile_path {
    /// A SQLite file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

struct Harness {
    db: Db,
    table: TableName,
    effects: String,
}

impl Harness {
    async fn new(db: Db) -> Harness {
        let table = TableName::parse(&unique_name("inbox")).expect("name");
        let effects = unique_name("effects");
        let inbox = Inbox::with_table("setup", table.clone()).expect("inbox");
        let ddl = format!("CREATE TABLE {effects} (event_id VARCHAR(36) NOT NULL)");
        match &db {
            Db::Pg(p) => {
                let mut c = p.acquire().await.expect("conn");
                inbox.migrate(&mut *c).await.expect("migrate");
                inbox.migrate(&mut *c).await.expect("migrate is idempotent");
                sqlx::query(AssertSqlSafe(ddl))
                    .execute(&mut *c)
                    .await
                    .expect("effects");
            }
            Db::My(p) => {
                let mut c = p.acquire().await.expect("conn");
                inbox.migrate(&mut *c).await.expect("migrate");
                inbox.migrate(&mut *c).await.expect("migrate is idempotent");
                sqlx::query(AssertSqlSafe(ddl))
                    .execute(&mut *c)
                    .await
                    .expect("effects");
            }
            Db::Lite(p, _) => {
                let mut c = p.acquire().await.expect("conn");
                inbox.migrate(&mut *c).await.expect("migrate");
                inbox.migrate(&mut *c).await.expect("migrate is idempotent");
                sqlx::query(AssertSqlSafe(ddl))
                    .execute(&mut *c)
                    .await
                    .expect("effects");
            }
        }
        Harness { db, table, effects }
    }
}

macro_rules! process_on {
    ($pool:expr, $h:expr, $inbox:expr, $id:expr, $hold:expr, $commit:expr) => {{
        let mut tx = $pool.begin().await.map_err(|e| map_sqlx("begin", e))?;
        let outcome = $inbox.record(&mut *tx, $id).await?;
        if outcome.is_new() {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (event_id) VALUES ('{}')",
                $h.effects, $id
            )))
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx("effect", e))?;
        }
        tokio::time::sleep($hold).await;
        if $commit {
            tx.commit().await.map_err(|e| map_sqlx("commit", e))?;
        } else {
            tx.rollback().await.map_err(|e| map_sqlx("rollback", e))?;
        }
        Ok(outcome)
    }};
}

impl InboxHarness for Harness {
    async fn process(
        &self,
        consumer: &str,
        id: EventId,
        hold: Duration,
        commit: bool,
    ) -> Result<InboxOutcome> {
        let inbox = Inbox::with_table(consumer, self.table.clone())?;
        match &self.db {
            Db::Pg(p) => process_on!(p, self, inbox, id, hold, commit),
            Db::My(p) => process_on!(p, self, inbox, id, hold, commit),
            Db::Lite(p, _) => process_on!(p, self, inbox, id, hold, commit),
        }
    }

    async fn effects(&self, id: EventId) -> Result<u64> {
        let q = format!(
            "SELECT COUNT(*) FROM {} WHERE event_id = '{id}'",
            self.effects
        );
        let n: i64 = match &self.db {
            Db::Pg(p) => sqlx::query_scalar(AssertSqlSafe(q)).fetch_one(p).await,
            Db::My(p) => sqlx::query_scalar(AssertSqlSafe(q)).fetch_one(p).await,
            Db::Lite(p, _) => sqlx::query_scalar(AssertSqlSafe(q)).fetch_one(p).await,
        }
        .map_err(|e| map_sqlx("count", e))?;
        Ok(n.unsigned_abs())
    }

    async fn purge(&self, older_than: Duration) -> Result<u64> {
        let inbox = Inbox::with_table("any", self.table.clone())?;
        match &self.db {
            Db::Pg(p) => {
                inbox
                    .purge(
                        &mut *p.acquire().await.map_err(|e| map_sqlx("conn", e))?,
                        older_than,
                        3,
                    )
                    .await
            }
            Db::My(p) => {
                inbox
                    .purge(
                        &mut *p.acquire().await.map_err(|e| map_sqlx("conn", e))?,
                        older_than,
                        3,
                    )
                    .await
            }
            Db::Lite(p, _) => {
                inbox
                    .purge(
                        &mut *p.acquire().await.map_err(|e| map_sqlx("conn", e))?,
                        older_than,
                        3,
                    )
                    .await
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_postgres() {
    let url = outbox_core::service_or_skip!("inbox_suite_on_postgres", Postgres);
    let pool = PgPool::connect(&url).await.expect("connect");
    let mut made = Vec::new();
    let made_ref = std::sync::Mutex::new(&mut made);
    run_inbox_suite(|| async {
        let h = Harness::new(Db::Pg(pool.clone())).await;
        made_ref
            .lock()
            .expect("lock")
            .push((h.table.clone(), h.effects.clone()));
        h
    })
    .await;
    for (t, e) in made {
        let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}, {e}")))
            .execute(&pool)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_mariadb() {
    let url = outbox_core::service_or_skip!("inbox_suite_on_mariadb", MySql);
    let pool = MySqlPool::connect(&url).await.expect("connect");
    let mut made = Vec::new();
    let made_ref = std::sync::Mutex::new(&mut made);
    run_inbox_suite(|| async {
        let h = Harness::new(Db::My(pool.clone())).await;
        made_ref
            .lock()
            .expect("lock")
            .push((h.table.clone(), h.effects.clone()));
        h
    })
    .await;
    for (t, e) in made {
        let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}, {e}")))
            .execute(&pool)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_sqlite() {
    run_inbox_suite(|| async {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name("inbox")));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = outbox_sqlx::sqlite::connect(&url).await.expect("open");
        Harness::new(Db::Lite(pool, tempfile_path::TempPath(path))).await
    })
    .await;
}

#[tokio::test]
async fn a_bad_consumer_name_is_refused_before_any_sql() {
    let err = Inbox::new("x".repeat(300)).expect_err("too long");
    assert!(err.message().contains("consumer"), "{err}");
}
