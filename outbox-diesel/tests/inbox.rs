//! The diesel inbox helpers pass the shared inbox suite on real databases: SQLite (sync),
//! PostgreSQL and MariaDB through diesel-async, and PostgreSQL and MariaDB through sync
//! diesel when those features are on. Each harness has its own tables.

use std::time::Duration;

use outbox_core::testkit::{InboxHarness, run_inbox_suite, service_url, unique_name};
use outbox_core::{Error, ErrorKind, EventId, InboxOutcome, Result, TableName};
use outbox_diesel::inbox::Inbox;
use outbox_diesel::map_diesel;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY_URL: &str = "mysql://root@127.0.0.1:3306/test";

fn names() -> (TableName, String) {
    (
        TableName::parse(&unique_name("dinbox")).expect("name"),
        unique_name("deffects"),
    )
}

fn joined(e: tokio::task::JoinError) -> Error {
    Error::new(ErrorKind::Other, format!("worker thread: {e}"))
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use diesel::{Connection, RunQueryDsl, SqliteConnection};

    pub struct Lite {
        pub path: std::path::PathBuf,
        pub table: TableName,
        pub effects: String,
    }

    impl Drop for Lite {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    pub fn open(path: &std::path::Path) -> SqliteConnection {
        let mut c = SqliteConnection::establish(&path.display().to_string()).expect("open");
        diesel::sql_query("PRAGMA busy_timeout = 10000")
            .execute(&mut c)
            .expect("pragma");
        c
    }

    impl Lite {
        pub fn new() -> Lite {
            let (table, effects) = names();
            let path = std::env::temp_dir().join(format!("{effects}.db"));
            let mut c = open(&path);
            let inbox = Inbox::with_table("setup", table.clone()).expect("inbox");
            inbox.migrate(&mut c).expect("migrate");
            inbox.migrate(&mut c).expect("migrate is idempotent");
            diesel::sql_query(format!("CREATE TABLE {effects} (event_id TEXT NOT NULL)"))
                .execute(&mut c)
                .expect("effects");
            Lite {
                path,
                table,
                effects,
            }
        }
    }

    impl InboxHarness for Lite {
        async fn process(
            &self,
            consumer: &str,
            id: EventId,
            hold: Duration,
            commit: bool,
        ) -> Result<InboxOutcome> {
            let inbox = Inbox::with_table(consumer, self.table.clone())?;
            let (path, effects) = (self.path.clone(), self.effects.clone());
            tokio::task::spawn_blocking(move || {
                let mut c = open(&path);
                let mut outcome = None;
                let r = c.transaction::<(), diesel::result::Error, _>(|c| {
                    let o = inbox.record(c, id)?;
                    if o.is_new() {
                        diesel::sql_query(format!(
                            "INSERT INTO {effects} (event_id) VALUES ('{id}')"
                        ))
                        .execute(c)?;
                    }
                    outcome = Some(o);
                    std::thread::sleep(hold);
                    if commit {
                        Ok(())
                    } else {
                        Err(diesel::result::Error::RollbackTransaction)
                    }
                });
                match r {
                    Ok(()) | Err(diesel::result::Error::RollbackTransaction) => {}
                    Err(e) => return Err(map_diesel("processing", e)),
                }
                outcome.ok_or_else(|| Error::new(ErrorKind::Other, "no outcome"))
            })
            .await
            .map_err(joined)?
        }

        async fn effects(&self, id: EventId) -> Result<u64> {
            let mut c = open(&self.path);
            count(&mut c, &self.effects, id)
        }

        async fn purge(&self, older_than: Duration) -> Result<u64> {
            let mut c = open(&self.path);
            Inbox::with_table("any", self.table.clone())?
                .purge(&mut c, older_than, 3)
                .map_err(|e| map_diesel("purge", e))
        }
    }

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    fn count(c: &mut SqliteConnection, effects: &str, id: EventId) -> Result<u64> {
        let rows: Vec<Count> = diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM {effects} WHERE event_id = '{id}'"
        ))
        .load(c)
        .map_err(|e| map_diesel("count", e))?;
        Ok(<[Count]>::first(&rows).map_or(0, |r| r.n.unsigned_abs()))
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_sqlite_sync() {
    run_inbox_suite(|| async { sqlite::Lite::new() }).await;
}

#[cfg(feature = "async")]
mod asynchronous {
    use super::*;
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl};

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// One harness type for both diesel-async backends.
    pub struct AsyncDb {
        pub url: String,
        pub pg: bool,
        pub table: TableName,
        pub effects: String,
    }

    macro_rules! with_conn {
        ($self:ident, $c:ident => $body:expr) => {
            if $self.pg {
                let mut $c = AsyncPgConnection::establish(&$self.url)
                    .await
                    .map_err(|e| Error::new(ErrorKind::Connection, format!("connect: {e}")))?;
                $body
            } else {
                let mut $c = AsyncMysqlConnection::establish(&$self.url)
                    .await
                    .map_err(|e| Error::new(ErrorKind::Connection, format!("connect: {e}")))?;
                $body
            }
        };
    }

    impl AsyncDb {
        pub async fn new(url: &str, pg: bool) -> Result<AsyncDb> {
            let (table, effects) = names();
            let db = AsyncDb {
                url: url.to_owned(),
                pg,
                table,
                effects,
            };
            let inbox = Inbox::with_table("setup", db.table.clone())?;
            let ddl = format!(
                "CREATE TABLE {} (event_id VARCHAR(36) NOT NULL)",
                db.effects
            );
            with_conn!(db, c => {
                inbox.migrate_async(&mut c).await.map_err(|e| map_diesel("migrate", e))?;
                inbox.migrate_async(&mut c).await.map_err(|e| map_diesel("migrate again", e))?;
                diesel::sql_query(ddl).execute(&mut c).await.map_err(|e| map_diesel("effects", e))?;
            });
            Ok(db)
        }

        pub async fn drop_tables(&self) -> Result<()> {
            let q = format!("DROP TABLE IF EXISTS {}, {}", self.table, self.effects);
            with_conn!(self, c => {
                diesel::sql_query(q).execute(&mut c).await.map_err(|e| map_diesel("drop", e))?;
            });
            Ok(())
        }
    }

    impl InboxHarness for AsyncDb {
        async fn process(
            &self,
            consumer: &str,
            id: EventId,
            hold: Duration,
            commit: bool,
        ) -> Result<InboxOutcome> {
            let inbox = Inbox::with_table(consumer, self.table.clone())?;
            let effects = self.effects.clone();
            let mut outcome = None;
            let out = &mut outcome;
            with_conn!(self, c => {
                let r = c
                    .transaction::<(), diesel::result::Error, _>(async move |c| {
                        let o = inbox.record_async(c, id).await?;
                        if o.is_new() {
                            diesel::sql_query(format!("INSERT INTO {effects} (event_id) VALUES ('{id}')"))
                                .execute(c)
                                .await?;
                        }
                        *out = Some(o);
                        tokio::time::sleep(hold).await;
                        if commit { Ok(()) } else { Err(diesel::result::Error::RollbackTransaction) }
                    })
                    .await;
                match r {
                    Ok(()) | Err(diesel::result::Error::RollbackTransaction) => {}
                    Err(e) => return Err(map_diesel("processing", e)),
                }
            });
            outcome.ok_or_else(|| Error::new(ErrorKind::Other, "no outcome"))
        }

        async fn effects(&self, id: EventId) -> Result<u64> {
            let q = format!(
                "SELECT COUNT(*) AS n FROM {} WHERE event_id = '{id}'",
                self.effects
            );
            let rows: Vec<Count> = with_conn!(self, c => {
                diesel::sql_query(q).load(&mut c).await.map_err(|e| map_diesel("count", e))?
            });
            Ok(<[Count]>::first(&rows).map_or(0, |r| r.n.unsigned_abs()))
        }

        async fn purge(&self, older_than: Duration) -> Result<u64> {
            let inbox = Inbox::with_table("any", self.table.clone())?;
            Ok(with_conn!(self, c => {
                inbox.purge_async(&mut c, older_than, 3).await.map_err(|e| map_diesel("purge", e))?
            }))
        }
    }
}

#[cfg(feature = "async")]
async fn async_suite(name: &str, env: &str, default: &str, pg: bool) {
    let url = outbox_core::service_or_skip!(name, env, default);
    let made = std::sync::Mutex::new(Vec::new());
    run_inbox_suite(|| async {
        let db = asynchronous::AsyncDb::new(&url, pg).await.expect("harness");
        made.lock()
            .expect("lock")
            .push((db.table.clone(), db.effects.clone()));
        db
    })
    .await;
    for (table, effects) in made.into_inner().expect("lock") {
        let db = asynchronous::AsyncDb {
            url: url.clone(),
            pg,
            table,
            effects,
        };
        db.drop_tables().await.expect("drop");
    }
}

#[cfg(feature = "async")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_postgres_async() {
    async_suite(
        "diesel inbox_suite_on_postgres_async",
        "OUTBOX_TEST_POSTGRES_URL",
        PG_URL,
        true,
    )
    .await;
}

#[cfg(feature = "async")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_mariadb_async() {
    async_suite(
        "diesel inbox_suite_on_mariadb_async",
        "OUTBOX_TEST_MYSQL_URL",
        MY_URL,
        false,
    )
    .await;
}

#[cfg(all(feature = "postgres", feature = "mysql"))]
mod native {
    use super::*;
    use diesel::{Connection, MysqlConnection, PgConnection, RunQueryDsl};

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// Sync diesel on PostgreSQL or MariaDB, one connection per call on a worker thread.
    pub struct Native {
        pub url: String,
        pub pg: bool,
        pub table: TableName,
        pub effects: String,
    }

    macro_rules! with_native {
        ($url:expr, $pg:expr, $c:ident => $body:expr) => {
            if $pg {
                let mut $c = PgConnection::establish(&$url)
                    .map_err(|e| Error::new(ErrorKind::Connection, format!("connect: {e}")))?;
                $body
            } else {
                let mut $c = MysqlConnection::establish(&$url)
                    .map_err(|e| Error::new(ErrorKind::Connection, format!("connect: {e}")))?;
                $body
            }
        };
    }

    impl Native {
        pub fn new(url: &str, pg: bool) -> Result<Native> {
            let (table, effects) = names();
            let inbox = Inbox::with_table("setup", table.clone())?;
            with_native!(url, pg, c => {
                inbox.migrate(&mut c).map_err(|e| map_diesel("migrate", e))?;
                diesel::sql_query(format!("CREATE TABLE {effects} (event_id VARCHAR(36) NOT NULL)"))
                    .execute(&mut c)
                    .map_err(|e| map_diesel("effects", e))?;
            });
            Ok(Native {
                url: url.to_owned(),
                pg,
                table,
                effects,
            })
        }
    }

    impl Drop for Native {
        fn drop(&mut self) {
            let q = format!("DROP TABLE IF EXISTS {}, {}", self.table, self.effects);
            let r: Result<()> = (|| {
                with_native!(self.url, self.pg, c => {
                    diesel::sql_query(q).execute(&mut c).map_err(|e| map_diesel("drop", e))?;
                });
                Ok(())
            })();
            drop(r);
        }
    }

    impl InboxHarness for Native {
        async fn process(
            &self,
            consumer: &str,
            id: EventId,
            hold: Duration,
            commit: bool,
        ) -> Result<InboxOutcome> {
            let inbox = Inbox::with_table(consumer, self.table.clone())?;
            let (url, pg, effects) = (self.url.clone(), self.pg, self.effects.clone());
            tokio::task::spawn_blocking(move || {
                let mut outcome = None;
                with_native!(url, pg, c => {
                    let r = c.transaction::<(), diesel::result::Error, _>(|c| {
                        let o = inbox.record(c, id)?;
                        if o.is_new() {
                            diesel::sql_query(format!("INSERT INTO {effects} (event_id) VALUES ('{id}')")).execute(c)?;
                        }
                        outcome = Some(o);
                        std::thread::sleep(hold);
                        if commit { Ok(()) } else { Err(diesel::result::Error::RollbackTransaction) }
                    });
                    match r {
                        Ok(()) | Err(diesel::result::Error::RollbackTransaction) => {}
                        Err(e) => return Err(map_diesel("processing", e)),
                    }
                });
                outcome.ok_or_else(|| Error::new(ErrorKind::Other, "no outcome"))
            })
            .await
            .map_err(joined)?
        }

        async fn effects(&self, id: EventId) -> Result<u64> {
            let q = format!(
                "SELECT COUNT(*) AS n FROM {} WHERE event_id = '{id}'",
                self.effects
            );
            let rows: Vec<Count> = with_native!(self.url, self.pg, c => {
                diesel::sql_query(q).load(&mut c).map_err(|e| map_diesel("count", e))?
            });
            Ok(<[Count]>::first(&rows).map_or(0, |r| r.n.unsigned_abs()))
        }

        async fn purge(&self, older_than: Duration) -> Result<u64> {
            let inbox = Inbox::with_table("any", self.table.clone())?;
            Ok(with_native!(self.url, self.pg, c => {
                inbox.purge(&mut c, older_than, 3).map_err(|e| map_diesel("purge", e))?
            }))
        }
    }
}

#[cfg(all(feature = "postgres", feature = "mysql"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_native_postgres_and_mariadb() {
    for (name, env, default, pg) in [
        (
            "diesel inbox (sync pg)",
            "OUTBOX_TEST_POSTGRES_URL",
            PG_URL,
            true,
        ),
        (
            "diesel inbox (sync mysql)",
            "OUTBOX_TEST_MYSQL_URL",
            MY_URL,
            false,
        ),
    ] {
        let Some(url) = service_url(name, env, default).await else {
            continue;
        };
        run_inbox_suite(|| async { native::Native::new(&url, pg).expect("harness") }).await;
    }
}
