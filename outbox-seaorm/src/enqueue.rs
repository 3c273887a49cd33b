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

/// Writes `envelope` into PostgreSQL's WAL as a transactional logical decoding message
/// through `conn` (your `DatabaseTransaction`): the table-less write side of log tailing
/// (`outbox-cdc`'s message mode). Nothing is written to any table; the relay sees it once
/// the transaction commits, and a rollback emits nothing. PostgreSQL only, with
/// `wal_level = logical` for a relay to read it.
#[cfg(feature = "postgres")]
pub async fn emit<C: ConnectionTrait>(conn: &C, envelope: &Envelope) -> Result<()> {
    emit_all(conn, std::slice::from_ref(envelope)).await
}

/// Writes `envelopes`, in order, as [`emit`] does, in one statement.
#[cfg(feature = "postgres")]
pub async fn emit_all<C: ConnectionTrait>(conn: &C, envelopes: &[Envelope]) -> Result<()> {
    emit_with_prefix(conn, outbox_core::codec::MESSAGE_PREFIX, envelopes).await
}

/// [`emit_all`] with a message prefix of your own, for a relay configured with the same one.
#[cfg(feature = "postgres")]
pub async fn emit_with_prefix<C: ConnectionTrait>(
    conn: &C,
    prefix: &str,
    envelopes: &[Envelope],
) -> Result<()> {
    use sea_orm::sea_query::{ArrayType, Value};
    let backend = conn.get_database_backend();
    if backend != DbBackend::Postgres {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("emit writes PostgreSQL's WAL; this connection is {backend:?}"),
        ));
    }
    if envelopes.is_empty() {
        return Ok(());
    }
    let encoded: Vec<Value> = envelopes
        .iter()
        .map(|e| Value::Bytes(Some(outbox_core::codec::encode(e))))
        .collect();
    let statement = sea_orm::Statement::from_sql_and_values(
        DbBackend::Postgres,
        outbox_sql::PG_EMIT_MESSAGES,
        [
            Value::from(prefix),
            Value::Array(ArrayType::Bytes, Some(Box::new(encoded))),
        ],
    );
    conn.execute_raw(statement)
        .await
        .map_err(|e| map_db_err("emitting events into the WAL", e))?;
    Ok(())
}
