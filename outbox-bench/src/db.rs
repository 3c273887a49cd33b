//! Databases: a fresh outbox table of its own per case (a PostgreSQL schema, a MariaDB
//! database, a SQLite file), filled through the library's own enqueue, dropped afterwards.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use outbox_core::{Dialect, Envelope, TableName};
use outbox_sql::Quote;
use outbox_sqlx::mysql::MySqlOutbox;
use outbox_sqlx::postgres::PgOutbox;
use outbox_sqlx::sqlite::SqliteOutbox;
use sqlx::mysql::MySqlPool;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;

use crate::{Res, Urls};

/// The databases the relay reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Db {
    /// PostgreSQL.
    Postgres,
    /// MariaDB (MySQL protocol).
    Maria,
    /// SQLite, a WAL file.
    Sqlite,
}

impl Db {
    /// Every database, in table order.
    pub const ALL: [Db; 3] = [Db::Postgres, Db::Maria, Db::Sqlite];

    /// Short name for the table.
    pub fn label(self) -> &'static str {
        match self {
            Db::Postgres => "PG",
            Db::Maria => "MariaDB",
            Db::Sqlite => "SQLite",
        }
    }
}

/// The size of every payload, as the benchmark issue asks.
pub const PAYLOAD_BYTES: usize = 256;

/// A 256-byte JSON payload for event `i`.
pub fn payload(i: usize) -> Bytes {
    let head = format!("{{\"order_id\":{i},\"customer\":\"c-4711\",\"pad\":\"");
    let tail = "\"}";
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(pad)))
}

/// Event `i` of a backlog spread over `keys` ordering keys, to `destination`.
pub fn event(i: usize, keys: usize, destination: &str) -> Res<Envelope> {
    Ok(Envelope::builder(
        "order",
        format!("order-{}", i % keys.max(1)),
        "order.placed",
        destination,
    )
    .with_payload(payload(i), "application/json")
    .build()?)
}

/// The pool of a fresh table, with the library's enqueue handle for that table.
#[derive(Clone, Debug)]
pub enum Pool {
    /// PostgreSQL.
    Pg(PgPool, PgOutbox),
    /// MariaDB.
    My(MySqlPool, MySqlOutbox),
    /// SQLite.
    Lite(SqlitePool, SqliteOutbox),
}

/// Runs `$body` once per database kind with `$pool` (and `$outbox`) bound to the fixture's
/// pool (and enqueue handle): the statements are the same text, the sqlx types differ.
macro_rules! on_pool {
    ($fx:expr, |$pool:ident, $outbox:ident| $body:expr) => {
        match &$fx.pool {
            Pool::Pg($pool, $outbox) => $body,
            Pool::My($pool, $outbox) => $body,
            Pool::Lite($pool, $outbox) => $body,
        }
    };
}

/// A fresh outbox table (and an `orders` business table beside it) that nothing else uses.
#[derive(Debug)]
pub struct Fixture {
    /// Which database.
    pub db: Db,
    /// The URL the relay connects with.
    pub url: String,
    /// The outbox table, qualified where the database has schemas.
    pub table: TableName,
    /// The business table, quoted for the dialect.
    pub orders: String,
    /// A pool for filling and inspecting.
    pub pool: Pool,
    /// The PostgreSQL schema, MariaDB database or SQLite file to remove at the end.
    container: String,
    file: Option<PathBuf>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "outbox_bench_{tag}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Fixture {
    /// Creates the tables with the library's own migration.
    pub async fn new(db: Db, urls: &Urls, tag: &str) -> Res<Fixture> {
        let container = unique(tag);
        let (url, table, pool, orders, orders_ddl, file) = match db {
            Db::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(20)
                    .connect(&urls.postgres)
                    .await
                    .map_err(|e| format!("PostgreSQL at {}: {e}", urls.postgres))?;
                let table = TableName::with_schema(&container, "outbox_events")?;
                outbox_sqlx::postgres::migrate(&pool, &table).await?;
                (
                    urls.postgres.clone(),
                    table.clone(),
                    Pool::Pg(pool, PgOutbox::new(table)),
                    format!("\"{container}\".orders"),
                    "id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, total BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now()",
                    None,
                )
            }
            Db::Maria => {
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(20)
                    .connect(&urls.mysql)
                    .await
                    .map_err(|e| format!("MariaDB at {}: {e}", urls.mysql))?;
                let table = TableName::with_schema(&container, "outbox_events")?;
                outbox_sqlx::mysql::migrate(&pool, &table).await?;
                (
                    urls.mysql.clone(),
                    table.clone(),
                    Pool::My(pool, MySqlOutbox::new(table)),
                    format!("`{container}`.orders"),
                    "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, customer VARCHAR(255) NOT NULL, total BIGINT NOT NULL, created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)",
                    None,
                )
            }
            Db::Sqlite => {
                let file = std::env::temp_dir().join(format!("{container}.db"));
                let url = format!("sqlite://{}", file.display());
                let pool = outbox_sqlx::sqlite::connect(&url).await?;
                let table = TableName::default();
                outbox_sqlx::sqlite::migrate(&pool, &table).await?;
                (
                    url,
                    table.clone(),
                    Pool::Lite(pool, SqliteOutbox::new(table)),
                    "orders".to_owned(),
                    "id INTEGER PRIMARY KEY AUTOINCREMENT, customer TEXT NOT NULL, total INTEGER NOT NULL, created_at INTEGER NOT NULL DEFAULT (unixepoch())",
                    Some(file),
                )
            }
        };
        let fx = Fixture {
            db,
            url,
            table,
            orders,
            pool,
            container,
            file,
        };
        fx.execute(format!("CREATE TABLE {} ({orders_ddl})", fx.orders))
            .await?;
        Ok(fx)
    }

    /// The schema, database or file name this fixture owns (unique, lower case): also the
    /// name of a CDC case's slot and message prefix.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// One business transaction on PostgreSQL with its event written into the WAL by
    /// `emit` (CDC message mode, prefix `prefix`) instead of the outbox table.
    pub async fn business_emit_tx(&self, i: usize, event: &Envelope, prefix: &str) -> Res<()> {
        let insert = format!(
            "INSERT INTO {} (customer, total) VALUES ($1, $2)",
            self.orders
        );
        let mut tx = self.pg()?.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind("c-4711")
            .bind(4200 + (i % 100) as i64)
            .execute(&mut *tx)
            .await?;
        outbox_sqlx::postgres::emit_with_prefix(&mut tx, prefix, std::slice::from_ref(event))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The business insert and the emit of `event` as one statement
    /// (`outbox_sqlx::postgres::emitting`), in a transaction.
    pub async fn business_emitting_tx(&self, i: usize, event: &Envelope, prefix: &str) -> Res<()> {
        let sql = outbox_sqlx::postgres::emitting(
            &format!(
                "INSERT INTO {} (customer, total) VALUES ($1, $2)",
                self.orders
            ),
            2,
        )?;
        let mut tx = self.pg()?.begin().await?;
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind("c-4711")
            .bind(4200 + (i % 100) as i64);
        outbox_sqlx::postgres::bind_events(query, prefix, std::slice::from_ref(event))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The table quoted for its dialect.
    pub fn quoted(&self) -> String {
        self.table.quoted(match self.db {
            Db::Postgres => Dialect::Postgres,
            Db::Maria => Dialect::MySql,
            Db::Sqlite => Dialect::Sqlite,
        })
    }

    /// The PostgreSQL pool; an error on the other databases.
    pub fn pg(&self) -> Res<&PgPool> {
        match &self.pool {
            Pool::Pg(p, _) => Ok(p),
            _ => Err(format!("{} is not PostgreSQL", self.db.label()).into()),
        }
    }

    /// Enqueues `events` in one transaction, through the library's `enqueue_all`.
    pub async fn enqueue(&self, events: &[Envelope]) -> Res<()> {
        on_pool!(self, |pool, outbox| {
            let mut tx = pool.begin().await?;
            outbox.enqueue_all(&mut tx, events).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Fills a backlog of `n` events over `keys` keys to `destination`, 1000 per
    /// transaction (two transactions at a time where the database takes them).
    pub async fn fill(&self, n: usize, keys: usize, destination: &str) -> Res<()> {
        let chunk = 1000;
        let parallel = if self.db == Db::Sqlite { 1 } else { 2 };
        let mut start = 0;
        while start < n {
            let mut jobs = Vec::new();
            for _ in 0..parallel {
                if start >= n {
                    break;
                }
                let end = (start + chunk).min(n);
                let events = (start..end)
                    .map(|i| event(i, keys, destination))
                    .collect::<Res<Vec<_>>>()?;
                jobs.push(async move { self.enqueue(&events).await });
                start = end;
            }
            for r in futures::future::join_all(jobs).await {
                r?;
            }
        }
        Ok(())
    }

    /// Rows in each state: (unfinished, published, dead).
    pub async fn counts(&self) -> Res<(i64, i64, i64)> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(CASE WHEN status < 2 THEN 1 ELSE 0 END), 0) AS {int}), \
                    CAST(COALESCE(SUM(CASE WHEN status = 2 THEN 1 ELSE 0 END), 0) AS {int}), \
                    CAST(COALESCE(SUM(CASE WHEN status = 3 THEN 1 ELSE 0 END), 0) AS {int}) FROM {}",
            self.quoted(),
            int = match self.db {
                Db::Postgres => "BIGINT",
                Db::Maria => "SIGNED",
                Db::Sqlite => "INTEGER",
            }
        );
        Ok(on_pool!(self, |pool, _outbox| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await?
        }))
    }

    /// Runs one statement of the caller's (benchmark-owned) text.
    pub async fn execute(&self, sql: String) -> Res<()> {
        on_pool!(self, |pool, _outbox| {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        });
        Ok(())
    }

    /// One business transaction: an `orders` row, and with `enqueue` its event too.
    pub async fn business_tx(&self, i: usize, enqueue: Option<&Envelope>) -> Res<()> {
        let insert = format!(
            "INSERT INTO {} (customer, total) VALUES ({}, {})",
            self.orders,
            self.marker(1),
            self.marker(2)
        );
        let total = 4200 + (i % 100) as i64;
        on_pool!(self, |pool, outbox| {
            let mut tx = pool.begin().await?;
            sqlx::query(sqlx::AssertSqlSafe(insert))
                .bind("c-4711")
                .bind(total)
                .execute(&mut *tx)
                .await?;
            if let Some(e) = enqueue {
                outbox.enqueue(&mut tx, e).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    fn marker(&self, n: usize) -> String {
        match self.db {
            Db::Postgres => format!("${n}"),
            Db::Maria | Db::Sqlite => "?".to_owned(),
        }
    }

    /// Drops what [`Fixture::new`] created.
    pub async fn drop_all(self) -> Res<()> {
        match self.db {
            Db::Postgres => {
                self.execute(format!(
                    "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                    self.container
                ))
                .await?
            }
            Db::Maria => {
                self.execute(format!("DROP DATABASE IF EXISTS `{}`", self.container))
                    .await?
            }
            Db::Sqlite => {}
        }
        on_pool!(self, |pool, _outbox| pool.close().await);
        if let Some(f) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.display()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_256_bytes_of_json() {
        for i in [0, 7, 123_456, usize::MAX / 3] {
            let p = payload(i);
            assert_eq!(p.len(), PAYLOAD_BYTES, "payload {i}");
            let v: serde_json::Value = serde_json::from_slice(&p).expect("valid JSON");
            assert_eq!(v["order_id"], serde_json::json!(i));
        }
    }

    #[test]
    fn events_spread_over_keys() {
        let keys: std::collections::HashSet<String> = (0..100)
            .map(|i| event(i, 10, "d").expect("valid").ordering_key().to_owned())
            .collect();
        assert_eq!(keys.len(), 10);
    }
}
