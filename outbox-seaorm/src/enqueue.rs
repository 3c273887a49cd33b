//! Enqueue inside the caller's SeaORM transaction.

use outbox_core::{Envelope, Error, ErrorKind, Result};
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait};

use crate::entity;
use crate::error::map_db_err;

/// Rows per multi-row insert (13 values each, well under every backend's bind limit).
const CHUNK: usize = 1000;

/// Writes `envelope` to `outbox_events` through `conn`: a `DatabaseTransaction` (or the
/// `txn` inside `db.transaction(|txn| ...)`), so the event commits or rolls back with the
/// caller's own writes. Called on a plain `DatabaseConnection`, it autocommits.
pub async fn enqueue<C: ConnectionTrait>(conn: &C, envelope: &Envelope) -> Result<()> {
    enqueue_all(conn, std::slice::from_ref(envelope)).await
}

/// Writes `envelopes` through `conn` (see [`enqueue`]): one multi-row insert per thousand.
pub async fn enqueue_all<C: ConnectionTrait>(conn: &C, envelopes: &[Envelope]) -> Result<()> {
    const WHAT: &str = "enqueueing outbox events";
    for chunk in envelopes.chunks(CHUNK) {
        let done = match conn.get_database_backend() {
            DbBackend::Postgres => {
                entity::postgres::Entity::insert_many(
                    chunk.iter().map(entity::postgres::active_model),
                )
                .exec_without_returning(conn)
                .await
            }
            DbBackend::MySql => {
                entity::mysql::Entity::insert_many(chunk.iter().map(entity::mysql::active_model))
                    .exec_without_returning(conn)
                    .await
            }
            DbBackend::Sqlite => {
                entity::sqlite::Entity::insert_many(chunk.iter().map(entity::sqlite::active_model))
                    .exec_without_returning(conn)
                    .await
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("SeaORM backend {other:?} is not supported by the outbox"),
                ));
            }
        };
        done.map_err(|e| map_db_err(WHAT, e))?;
    }
    Ok(())
}
