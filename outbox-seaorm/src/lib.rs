#![doc = include_str!("../README.md")]

pub mod enqueue;
pub mod entity;
pub mod error;
pub mod inbox;
pub mod migration;
pub mod store;

#[cfg(feature = "postgres")]
pub use enqueue::{emit, emit_all, emit_with_prefix};
pub use enqueue::{enqueue, enqueue_all};
pub use error::map_db_err;
pub use migration::{CreateOutboxTable, OutboxMigrator};
pub use store::{SeaOrmStore, store, store_for_table};

outbox_core::adapter_error! {
    /// An error of this crate or of SeaORM, for application code that calls both: `?`
    /// turns a `sea_orm::DbErr` (classified as [`map_db_err`] does), an `outbox_core::Error`
    /// or an envelope error into it, and it converts back into `outbox_core::Error` with its
    /// kind kept.
    pub struct Error;
    sea_orm::DbErr => |e| map_db_err("database call failed", e),
}

impl<E> From<sea_orm::TransactionError<E>> for Error
where
    E: std::error::Error + Into<Error>,
{
    /// A failed `db.transaction(...)`: the connection's error, or the closure's own.
    fn from(err: sea_orm::TransactionError<E>) -> Self {
        match err {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(e) => e.into(),
        }
    }
}
