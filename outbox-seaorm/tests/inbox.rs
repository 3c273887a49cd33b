//! The SeaORM inbox helper passes the shared inbox suite on the machine's real PostgreSQL,
//! MariaDB and SQLite. Each harness has tables of its own, dropped afterwards.

use std::time::Duration;

use outbox_core::testkit::{Delivery, InboxHarness, TempDb, run_inbox_suite, unique_name};
use outbox_core::{EventId, InboxOutcome, Result, TableName};
use outbox_seaorm::inbox::Inbox;
use outbox_seaorm::map_db_err;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, TransactionTrait};

struct Sea {
    db: DatabaseConnection,
    table: TableName,
    effects: String,
    _file: Option<TempDb>,
}

impl Sea {
    async fn new(db: DatabaseConnection) -> Sea {
        let table = TableName::parse(&unique_name("sinbox")).expect("name");
        let effects = unique_name("seffects");
        let inbox = Inbox::with_table("setup", table.clone()).expect("inbox");
        inbox.migrate(&db).await.expect("migrate");
        inbox.migrate(&db).await.expect("migrate is idempotent");
        exec(
            &db,
            format!("CREATE TABLE {effects} (event_id VARCHAR(36) NOT NULL)"),
        )
        .await;
        Sea {
            db,
            table,
            effects,
            _file: None,
        }
    }
}

async fn exec<C: ConnectionTrait>(c: &C, sql: String) {
    c.execute_raw(Statement::from_string(c.get_database_backend(), sql))
        .await
        .expect("sql");
}

impl InboxHarness for Sea {
    async fn process(&self, d: Delivery<'_>) -> Result<InboxOutcome> {
        let (id, inbox) = (d.id, Inbox::with_table(d.consumer, self.table.clone())?);
        let txn = self.db.begin().await.map_err(|e| map_db_err("begin", e))?;
        let outcome = inbox.record(&txn, id).await?;
        if outcome.is_new() {
            txn.execute_raw(Statement::from_string(
                txn.get_database_backend(),
                format!("INSERT INTO {} (event_id) VALUES ('{id}')", self.effects),
            ))
            .await
            .map_err(|e| map_db_err("effect", e))?;
        }
        tokio::time::sleep(d.hold).await;
        if d.commit {
            txn.commit().await.map_err(|e| map_db_err("commit", e))?;
        } else {
            txn.rollback()
                .await
                .map_err(|e| map_db_err("rollback", e))?;
        }
        Ok(outcome)
    }

    async fn effects(&self, id: EventId) -> Result<u64> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                self.db.get_database_backend(),
                format!(
                    "SELECT COUNT(*) AS n FROM {} WHERE event_id = '{id}'",
                    self.effects
                ),
            ))
            .await
            .map_err(|e| map_db_err("count", e))?;
        let n: i64 = row
            .map(|r| r.try_get("", "n"))
            .transpose()
            .map_err(|e| map_db_err("count", e))?
            .unwrap_or(0);
        Ok(n.unsigned_abs())
    }

    async fn purge(&self, older_than: Duration) -> Result<u64> {
        Inbox::with_table("any", self.table.clone())?
            .purge(&self.db, older_than, 3)
            .await
    }

    async fn tear_down(self) {
        exec(&self.db, format!("DROP TABLE IF EXISTS {}", self.table)).await;
        exec(&self.db, format!("DROP TABLE IF EXISTS {}", self.effects)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_postgres() {
    let url = outbox_core::service_or_skip!("seaorm inbox (pg)", Postgres);
    let db = Database::connect(&url).await.expect("connect");
    run_inbox_suite(|| Sea::new(db.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_mariadb() {
    let url = outbox_core::service_or_skip!("seaorm inbox (mariadb)", MySql);
    let db = Database::connect(&url).await.expect("connect");
    run_inbox_suite(|| Sea::new(db.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_sqlite() {
    run_inbox_suite(|| async {
        let file = TempDb::new("sinbox");
        let db = Database::connect(file.url()).await.expect("open");
        Sea {
            _file: Some(file),
            ..Sea::new(db).await
        }
    })
    .await;
}
