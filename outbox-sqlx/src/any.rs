//! [`AnyStore`]: whichever of the three stores a URL names, behind one type, for programs
//! that pick the database at run time (the `outbox` binary, SeaORM services).

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::store::{
    BacklogStats, Claim, DeadLetter, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Lease,
    Retention, Retry, Store, StoreStats,
};
use outbox_core::{EventId, Result, TableName};

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

/// Calls `$call` on whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($s) => $call,
            #[cfg(feature = "mysql")]
            AnyStore::MySql($s) => $call,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($s) => $call,
        }
    };
}

impl AnyStore {
    /// Opens a pool of up to `max_connections` on `url` (`postgres://`, `mysql://`,
    /// `sqlite://`) for `table`. The URL's password never appears in errors.
    pub async fn connect(url: &str, table: TableName, max_connections: u32) -> Result<Self> {
        use crate::event_table::LogPool;
        Ok(match LogPool::connect(url, max_connections).await? {
            #[cfg(feature = "postgres")]
            LogPool::Postgres(pool) => {
                AnyStore::Postgres(crate::postgres::PgStore::new(pool, table))
            }
            #[cfg(feature = "mysql")]
            LogPool::MySql(pool) => AnyStore::MySql(crate::mysql::MySqlStore::new(pool, table)),
            #[cfg(feature = "sqlite")]
            LogPool::Sqlite(pool) => AnyStore::Sqlite(crate::sqlite::SqliteStore::new(pool, table)),
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
        each!(self, s => s.table())
    }
}

impl Store for AnyStore {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        each!(self, s => s.claim(limit, lease_for).await)
    }
    async fn mark_published(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        each!(self, s => s.mark_published(lease, ids).await)
    }
    async fn schedule_retry(&self, lease: &Lease, retries: &[Retry]) -> Result<u64> {
        each!(self, s => s.schedule_retry(lease, retries).await)
    }
    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        each!(self, s => s.dead_letter(lease, dead).await)
    }
    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        each!(self, s => s.release(lease, ids).await)
    }
}

impl Retention for AnyStore {
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        each!(self, s => s.purge_published(before, limit).await)
    }
}

impl StoreStats for AnyStore {
    async fn stats(&self) -> Result<BacklogStats> {
        each!(self, s => s.stats().await)
    }
}

impl DeadLetterAdmin for AnyStore {
    async fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        each!(self, s => s.list_dead(filter, limit).await)
    }
    async fn requeue_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        each!(self, s => s.requeue_dead(filter).await)
    }
    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        each!(self, s => s.purge_dead(filter).await)
    }
}
