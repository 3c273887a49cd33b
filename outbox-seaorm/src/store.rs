//! The relay's store for a SeaORM service, on the pool SeaORM already has.

use outbox_core::{Error, ErrorKind, Result, TableName};
use sea_orm::{DatabaseConnection, DbBackend};

/// The relay's store over a SeaORM `DatabaseConnection`: SeaORM runs on sqlx, so this is
/// `outbox-sqlx`'s store for the connection's backend around the very pool SeaORM opened
/// (one set of claim, lease and fencing code for every stack, and no second pool).
pub type SeaOrmStore = outbox_sqlx::AnyStore;

/// A store over `outbox_events` on `db`'s backend.
pub fn store(db: &DatabaseConnection) -> Result<SeaOrmStore> {
    store_for_table(db, TableName::default())
}

/// A store over `table` on `db`'s backend. Fails with `InvalidInput` for a backend this build
/// has no feature for.
pub fn store_for_table(db: &DatabaseConnection, table: TableName) -> Result<SeaOrmStore> {
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
