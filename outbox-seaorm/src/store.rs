//! [`SeaOrmStore`]: the relay's store for a SeaORM service, on the pool SeaORM already has.

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::store::{
    BacklogStats, Claim, DeadLetter, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Lease,
    Retention, Retry, Store, StoreStats,
};
use outbox_core::{Error, ErrorKind, EventId, Result, TableName};
use sea_orm::{DatabaseConnection, DbBackend};

/// The relay's store over a SeaORM `DatabaseConnection`.
///
/// SeaORM runs on sqlx, so this wraps the `outbox-sqlx` store of the connection's backend
/// around the very pool SeaORM opened: one set of claim, lease and fencing code for every
/// stack, and no second pool.
#[derive(Clone, Debug)]
pub enum SeaOrmStore {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(outbox_sqlx::postgres::PgStore),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    MySql(outbox_sqlx::mysql::MySqlStore),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(outbox_sqlx::sqlite::SqliteStore),
}

impl SeaOrmStore {
    /// A store over `outbox_events` on `db`'s backend.
    pub fn new(db: &DatabaseConnection) -> Result<Self> {
        Self::for_table(db, TableName::default())
    }

    /// A store over `table` on `db`'s backend. Fails with `InvalidInput` for a backend this
    /// build has no feature for.
    pub fn for_table(db: &DatabaseConnection, table: TableName) -> Result<Self> {
        match db.get_database_backend() {
            #[cfg(feature = "postgres")]
            DbBackend::Postgres => Ok(SeaOrmStore::Postgres(outbox_sqlx::postgres::PgStore::new(
                db.get_postgres_connection_pool().clone(),
                table,
            ))),
            #[cfg(feature = "mysql")]
            DbBackend::MySql => Ok(SeaOrmStore::MySql(outbox_sqlx::mysql::MySqlStore::new(
                db.get_mysql_connection_pool().clone(),
                table,
            ))),
            #[cfg(feature = "sqlite")]
            DbBackend::Sqlite => Ok(SeaOrmStore::Sqlite(outbox_sqlx::sqlite::SqliteStore::new(
                db.get_sqlite_connection_pool().clone(),
                table,
            ))),
            #[allow(unreachable_patterns)]
            other => Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "no outbox store for SeaORM backend {other:?} in this build (enable its feature)"
                ),
            )),
        }
    }
}

/// Calls `$call` on whichever store this is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            SeaOrmStore::Postgres($s) => $call,
            #[cfg(feature = "mysql")]
            SeaOrmStore::MySql($s) => $call,
            #[cfg(feature = "sqlite")]
            SeaOrmStore::Sqlite($s) => $call,
        }
    };
}

impl Store for SeaOrmStore {
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

impl Retention for SeaOrmStore {
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        each!(self, s => s.purge_published(before, limit).await)
    }
}

impl StoreStats for SeaOrmStore {
    async fn stats(&self) -> Result<BacklogStats> {
        each!(self, s => s.stats().await)
    }
}

impl DeadLetterAdmin for SeaOrmStore {
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
