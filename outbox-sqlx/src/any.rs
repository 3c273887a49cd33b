//! The database a URL names, picked at run time (the `outbox` binary, SeaORM services):
//! [`AnyPool`] opens it, [`AnyStore`] is whichever of the three stores it is.

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::schema::Dialect;
use outbox_core::store::{
    BacklogStats, Claim, DeadLetter, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Lease,
    Retention, Retry, Store, StoreStats,
};
use outbox_core::{Error, ErrorKind, EventId, Result, TableName};

/// A pool on one of the three databases, chosen by URL scheme: the one
/// [`AnyStore::connect`] opens, and the database behind an
/// [`EventTableSource`](crate::event_table::EventTableSource).
#[derive(Clone, Debug)]
pub enum AnyPool {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for AnyPool {
    fn from(p: sqlx::PgPool) -> Self {
        AnyPool::Postgres(p)
    }
}
#[cfg(feature = "mysql")]
impl From<sqlx::MySqlPool> for AnyPool {
    fn from(p: sqlx::MySqlPool) -> Self {
        AnyPool::MySql(p)
    }
}
#[cfg(feature = "sqlite")]
impl From<sqlx::SqlitePool> for AnyPool {
    fn from(p: sqlx::SqlitePool) -> Self {
        AnyPool::Sqlite(p)
    }
}

/// The SQL dialect of the database `url` names (`postgres://` or `postgresql://`,
/// `mysql://` or `mariadb://`, `sqlite://`), without connecting; an error names the scheme
/// when it is none of these or its cargo feature is off.
pub fn dialect_of(url: &str) -> Result<Dialect> {
    match url.split_once("://").map_or("", |(s, _)| s) {
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Dialect::Postgres),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Ok(Dialect::MySql),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Dialect::Sqlite),
        _ => Err(scheme_error(url)),
    }
}

fn scheme_error(url: &str) -> Error {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    Error::new(
        ErrorKind::InvalidInput,
        format!(
            "database URL {}: scheme {scheme:?} is not postgres://, mysql:// or sqlite:// (or its feature is off)",
            outbox_core::redact_url(url)
        ),
    )
}

/// Runs `$call` with `$v` bound to whichever database's value `$value` (an [`AnyPool`] or
/// an [`AnyStore`], named by `$enum`) holds.
macro_rules! each {
    ($enum:ident, $value:expr, $v:ident => $call:expr) => {
        match $value {
            #[cfg(feature = "postgres")]
            $enum::Postgres($v) => $call,
            #[cfg(feature = "mysql")]
            $enum::MySql($v) => $call,
            #[cfg(feature = "sqlite")]
            $enum::Sqlite($v) => $call,
        }
    };
}
pub(crate) use each;

impl AnyPool {
    /// Opens a pool on `url` (`postgres://`, `mysql://`, `sqlite://`). The URL's password
    /// never appears in errors.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let shown = outbox_core::redact_url(url);
        let open = |e: sqlx::Error| {
            let kind = crate::error::classify(&e);
            Error::new(kind, format!("opening {shown}")).with_source(e)
        };
        // Unused in a build with SQLite alone.
        let _ = (max_connections, &open);
        crate::install_crypto_provider();
        match dialect_of(url)? {
            #[cfg(feature = "postgres")]
            Dialect::Postgres => Ok(AnyPool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max_connections)
                    .connect(url)
                    .await
                    .map_err(open)?,
            )),
            #[cfg(feature = "mysql")]
            Dialect::MySql => Ok(AnyPool::MySql(
                sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(max_connections)
                    .connect(&url.replacen("mariadb://", "mysql://", 1))
                    .await
                    .map_err(open)?,
            )),
            // SQLite serialises writers anyway; `connect` sizes its own pool.
            #[cfg(feature = "sqlite")]
            Dialect::Sqlite => Ok(AnyPool::Sqlite(crate::sqlite::connect(url).await?)),
            _ => Err(scheme_error(url)),
        }
    }

    /// The database's SQL dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "postgres")]
            AnyPool::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "mysql")]
            AnyPool::MySql(_) => Dialect::MySql,
            #[cfg(feature = "sqlite")]
            AnyPool::Sqlite(_) => Dialect::Sqlite,
        }
    }
}

/// One of the sqlx stores. Cheap to clone.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PgStore),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    MySql(crate::mysql::MySqlStore),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(crate::sqlite::SqliteStore),
}

impl AnyStore {
    /// Opens a pool of up to `max_connections` on `url` (`postgres://`, `mysql://`,
    /// `sqlite://`) for `table`. The URL's password never appears in errors.
    pub async fn connect(url: &str, table: TableName, max_connections: u32) -> Result<Self> {
        Ok(match AnyPool::connect(url, max_connections).await? {
            #[cfg(feature = "postgres")]
            AnyPool::Postgres(pool) => {
                AnyStore::Postgres(crate::postgres::PgStore::new(pool, table))
            }
            #[cfg(feature = "mysql")]
            AnyPool::MySql(pool) => AnyStore::MySql(crate::mysql::MySqlStore::new(pool, table)),
            #[cfg(feature = "sqlite")]
            AnyPool::Sqlite(pool) => AnyStore::Sqlite(crate::sqlite::SqliteStore::new(pool, table)),
        })
    }

    /// A wake-up source for a relay over this store, where the database has one:
    /// `LISTEN` on the table's channel on PostgreSQL (see
    /// [`PgNotifier`](crate::postgres::PgNotifier) for writers), `None` on MySQL/MariaDB and
    /// SQLite, where the relay polls. It holds one connection of its own.
    pub async fn wake_up(&self) -> Result<Option<std::sync::Arc<dyn outbox_core::DynWakeUp>>> {
        match self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => {
                let w = crate::postgres::PgWakeUp::listen(s.pool(), s.table()).await?;
                Ok(Some(std::sync::Arc::new(w)))
            }
            #[allow(unreachable_patterns)]
            _ => Ok(None),
        }
    }

    /// Creates the table (and schema or database) if missing.
    pub async fn migrate(&self) -> Result<()> {
        match self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => crate::postgres::migrate(s.pool(), s.table()).await,
            #[cfg(feature = "mysql")]
            AnyStore::MySql(s) => crate::mysql::migrate(s.pool(), s.table()).await,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => crate::sqlite::migrate(s.pool(), s.table()).await,
        }
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        each!(AnyStore, self, s => s.table())
    }
}

impl Store for AnyStore {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        each!(AnyStore, self, s => s.claim(limit, lease_for).await)
    }
    async fn mark_published(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        each!(AnyStore, self, s => s.mark_published(lease, ids).await)
    }
    async fn schedule_retry(&self, lease: &Lease, retries: &[Retry]) -> Result<u64> {
        each!(AnyStore, self, s => s.schedule_retry(lease, retries).await)
    }
    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        each!(AnyStore, self, s => s.dead_letter(lease, dead).await)
    }
    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        each!(AnyStore, self, s => s.release(lease, ids).await)
    }
}

impl Retention for AnyStore {
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        each!(AnyStore, self, s => s.purge_published(before, limit).await)
    }
}

impl StoreStats for AnyStore {
    async fn stats(&self) -> Result<BacklogStats> {
        each!(AnyStore, self, s => s.stats().await)
    }
}

impl DeadLetterAdmin for AnyStore {
    async fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        each!(AnyStore, self, s => s.list_dead(filter, limit).await)
    }
    async fn requeue_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        each!(AnyStore, self, s => s.requeue_dead(filter).await)
    }
    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        each!(AnyStore, self, s => s.purge_dead(filter).await)
    }
}
