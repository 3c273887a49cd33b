//! The diesel inbox helpers pass the shared inbox suite on real databases: SQLite (sync),
//! PostgreSQL and MariaDB through diesel-async, and PostgreSQL and MariaDB through sync
//! diesel when those features are on. Each harness has its own tables, and opens a
//! connection per call (sync diesel on a worker thread).
#![allow(
    unused_imports,
    reason = "which harnesses exist depends on the features"
)]

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use outbox_core::testkit::{Delivery, InboxHarness, run_inbox_suite, unique_name};
use outbox_core::{Error, ErrorKind, EventId, InboxOutcome, Result, TableName};
use outbox_diesel::inbox::Inbox;
use outbox_diesel::map_diesel;

/// An inbox table and an effects table of its own, on the database at `url`, through
/// connections of type `C`.
struct Harness<C> {
    url: String,
    table: TableName,
    effects: String,
    /// A SQLite database file, removed on drop.
    file: Option<PathBuf>,
    conn: PhantomData<fn() -> C>,
}

impl<C> Harness<C> {
    fn at(url: String, file: Option<PathBuf>) -> Harness<C> {
        Harness {
            url,
            table: TableName::parse(&unique_name("dinbox")).expect("name"),
            effects: unique_name("deffects"),
            file,
            conn: PhantomData,
        }
    }

    fn effects_ddl(&self) -> String {
        format!(
            "CREATE TABLE {} (event_id VARCHAR(36) NOT NULL)",
            self.effects
        )
    }

    fn effect_sql(&self, id: EventId) -> String {
        format!("INSERT INTO {} (event_id) VALUES ('{id}')", self.effects)
    }

    fn count_sql(&self, id: EventId) -> String {
        format!(
            "SELECT COUNT(*) AS n FROM {} WHERE event_id = '{id}'",
            self.effects
        )
    }

    fn drop_sql(&self) -> [String; 2] {
        [self.table.to_string(), self.effects.clone()].map(|t| format!("DROP TABLE IF EXISTS {t}"))
    }
}

impl<C> Drop for Harness<C> {
    fn drop(&mut self) {
        if let Some(path) = &self.file {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn counted(rows: &[Count]) -> u64 {
    rows.first().map_or(0, |r| r.n.unsigned_abs())
}

fn connect_error(e: diesel::ConnectionError) -> Error {
    Error::new(ErrorKind::Connection, format!("connect: {e}"))
}

/// The transaction's end: a rollback the delivery asked for is not an error.
fn ended(r: std::result::Result<(), diesel::result::Error>) -> Result<()> {
    match r {
        Ok(()) | Err(diesel::result::Error::RollbackTransaction) => Ok(()),
        Err(e) => Err(map_diesel("processing", e)),
    }
}

/// The harness over one sync diesel connection type; `$setup` runs on each new connection.
#[allow(unused_macros, reason = "used only with its features on")]
macro_rules! sync_harness {
    ($conn:ty, $setup:expr) => {
        impl Harness<$conn> {
            fn connect(url: &str) -> Result<$conn> {
                use diesel::{Connection as _, RunQueryDsl as _};
                let mut c = <$conn>::establish(url).map_err(connect_error)?;
                if let Some(setup) = $setup {
                    diesel::sql_query(setup)
                        .execute(&mut c)
                        .map_err(|e| map_diesel("setup", e))?;
                }
                Ok(c)
            }

            fn new(url: String, file: Option<PathBuf>) -> Harness<$conn> {
                use diesel::RunQueryDsl as _;
                let h = Harness::at(url, file);
                let mut c = Self::connect(&h.url).expect("connect");
                let inbox = Inbox::with_table("setup", h.table.clone()).expect("inbox");
                inbox.migrate(&mut c).expect("migrate");
                inbox.migrate(&mut c).expect("migrate is idempotent");
                diesel::sql_query(h.effects_ddl())
                    .execute(&mut c)
                    .expect("effects");
                h
            }
        }

        impl InboxHarness for Harness<$conn> {
            async fn process(&self, d: Delivery<'_>) -> Result<InboxOutcome> {
                use diesel::{Connection as _, RunQueryDsl as _};
                let inbox = Inbox::with_table(d.consumer, self.table.clone())?;
                let (url, effect, id) = (self.url.clone(), self.effect_sql(d.id), d.id);
                let (hold, commit) = (d.hold, d.commit);
                tokio::task::spawn_blocking(move || {
                    let mut c = Self::connect(&url)?;
                    let mut outcome = None;
                    ended(c.transaction(|c| {
                        let o = inbox.record(c, id)?;
                        if o.is_new() {
                            diesel::sql_query(effect).execute(c)?;
                        }
                        outcome = Some(o);
                        std::thread::sleep(hold);
                        if commit {
                            Ok(())
                        } else {
                            Err(diesel::result::Error::RollbackTransaction)
                        }
                    }))?;
                    outcome.ok_or_else(|| Error::new(ErrorKind::Other, "no outcome"))
                })
                .await
                .map_err(|e| Error::new(ErrorKind::Other, format!("worker thread: {e}")))?
            }

            async fn effects(&self, id: EventId) -> Result<u64> {
                use diesel::RunQueryDsl as _;
                let rows: Vec<Count> = diesel::sql_query(self.count_sql(id))
                    .load(&mut Self::connect(&self.url)?)
                    .map_err(|e| map_diesel("count", e))?;
                Ok(counted(&rows))
            }

            async fn purge(&self, older_than: Duration) -> Result<u64> {
                Inbox::with_table("any", self.table.clone())?
                    .purge(&mut Self::connect(&self.url)?, older_than, 3)
                    .map_err(|e| map_diesel("purge", e))
            }

            async fn tear_down(self) {
                use diesel::RunQueryDsl as _;
                let mut c = Self::connect(&self.url).expect("connect");
                for q in self.drop_sql() {
                    diesel::sql_query(q).execute(&mut c).expect("drop table");
                }
            }
        }
    };
}

/// The harness over one diesel-async connection type.
#[allow(unused_macros, reason = "used only with its features on")]
macro_rules! async_harness {
    ($conn:ty) => {
        impl Harness<$conn> {
            async fn connect(url: &str) -> Result<$conn> {
                use diesel_async::AsyncConnection as _;
                <$conn>::establish(url).await.map_err(connect_error)
            }

            async fn new(url: String) -> Harness<$conn> {
                use diesel_async::RunQueryDsl as _;
                let h = Harness::at(url, None);
                let mut c = Self::connect(&h.url).await.expect("connect");
                let inbox = Inbox::with_table("setup", h.table.clone()).expect("inbox");
                inbox.migrate_async(&mut c).await.expect("migrate");
                inbox
                    .migrate_async(&mut c)
                    .await
                    .expect("migrate is idempotent");
                diesel::sql_query(h.effects_ddl())
                    .execute(&mut c)
                    .await
                    .expect("effects");
                h
            }
        }

        impl InboxHarness for Harness<$conn> {
            async fn process(&self, d: Delivery<'_>) -> Result<InboxOutcome> {
                use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
                let inbox = Inbox::with_table(d.consumer, self.table.clone())?;
                let (effect, id, hold, commit) = (self.effect_sql(d.id), d.id, d.hold, d.commit);
                let mut c = Self::connect(&self.url).await?;
                let mut outcome = None;
                let out = &mut outcome;
                ended(
                    c.transaction::<(), diesel::result::Error, _>(async move |c| {
                        let o = inbox.record_async(c, id).await?;
                        if o.is_new() {
                            diesel::sql_query(effect).execute(c).await?;
                        }
                        *out = Some(o);
                        tokio::time::sleep(hold).await;
                        if commit {
                            Ok(())
                        } else {
                            Err(diesel::result::Error::RollbackTransaction)
                        }
                    })
                    .await,
                )?;
                outcome.ok_or_else(|| Error::new(ErrorKind::Other, "no outcome"))
            }

            async fn effects(&self, id: EventId) -> Result<u64> {
                use diesel_async::RunQueryDsl as _;
                let rows: Vec<Count> = diesel::sql_query(self.count_sql(id))
                    .load(&mut Self::connect(&self.url).await?)
                    .await
                    .map_err(|e| map_diesel("count", e))?;
                Ok(counted(&rows))
            }

            async fn purge(&self, older_than: Duration) -> Result<u64> {
                Inbox::with_table("any", self.table.clone())?
                    .purge_async(&mut Self::connect(&self.url).await?, older_than, 3)
                    .await
                    .map_err(|e| map_diesel("purge", e))
            }

            async fn tear_down(self) {
                use diesel_async::RunQueryDsl as _;
                let mut c = Self::connect(&self.url).await.expect("connect");
                for q in self.drop_sql() {
                    diesel::sql_query(q)
                        .execute(&mut c)
                        .await
                        .expect("drop table");
                }
            }
        }
    };
}

#[cfg(feature = "sqlite")]
sync_harness!(
    diesel::SqliteConnection,
    Some("PRAGMA busy_timeout = 10000")
);
#[cfg(feature = "postgres")]
sync_harness!(diesel::PgConnection, None::<&str>);
#[cfg(feature = "mysql")]
sync_harness!(diesel::MysqlConnection, None::<&str>);
#[cfg(feature = "async-postgres")]
async_harness!(diesel_async::AsyncPgConnection);
#[cfg(feature = "async-mysql")]
async_harness!(diesel_async::AsyncMysqlConnection);

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_sqlite_sync() {
    run_inbox_suite(|| async {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name("dinbox")));
        Harness::<diesel::SqliteConnection>::new(path.display().to_string(), Some(path))
    })
    .await;
}

#[cfg(feature = "async-postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_postgres_async() {
    let url = outbox_core::service_or_skip!("diesel inbox_suite_on_postgres_async", Postgres);
    run_inbox_suite(|| Harness::<diesel_async::AsyncPgConnection>::new(url.clone())).await;
}

#[cfg(feature = "async-mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_mariadb_async() {
    let url = outbox_core::service_or_skip!("diesel inbox_suite_on_mariadb_async", MySql);
    run_inbox_suite(|| Harness::<diesel_async::AsyncMysqlConnection>::new(url.clone())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_native_postgres() {
    let url = outbox_core::service_or_skip!("diesel inbox (sync pg)", Postgres);
    run_inbox_suite(|| async { Harness::<diesel::PgConnection>::new(url.clone(), None) }).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_suite_on_native_mariadb() {
    let url = outbox_core::service_or_skip!("diesel inbox (sync mysql)", MySql);
    run_inbox_suite(|| async { Harness::<diesel::MysqlConnection>::new(url.clone(), None) }).await;
}
