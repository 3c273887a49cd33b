//! PostgreSQL's table-less write side of log tailing (CDC message mode), re-exported in
//! [`crate::pg`]: envelopes written into the WAL as transactional logical decoding messages
//! (`pg_logical_emit_message`) in `outbox_core::codec`'s encoding, inside the caller's
//! transaction. Nothing is written to any table; a rollback emits nothing. `outbox-cdc`'s
//! relay reads them from a replication slot (PostgreSQL needs `wal_level = logical`).

use diesel::sql_types::{Array, Bytea, Text};
use outbox_core::Envelope;

/// The statement with its binds for `$envelopes` under `$prefix` (a macro: diesel does not
/// name the bound query's type).
macro_rules! statement {
    ($prefix:expr, $envelopes:expr) => {{
        let encoded: Vec<Vec<u8>> = $envelopes.iter().map(outbox_core::codec::encode).collect();
        diesel::sql_query(outbox_sql::PG_EMIT_MESSAGES)
            .bind::<Text, _>($prefix)
            .bind::<Array<Bytea>, _>(encoded)
    }};
}

/// Writes `envelope` into the WAL through `conn`, inside
/// `conn.transaction(|conn| { ...; emit(conn, &event) })`: relayed once the transaction
/// commits, never if it rolls back.
#[cfg(feature = "postgres")]
pub fn emit(conn: &mut diesel::PgConnection, envelope: &Envelope) -> diesel::QueryResult<()> {
    emit_all(conn, std::slice::from_ref(envelope))
}

/// Writes `envelopes`, in order, as [`emit`] does, in one statement.
#[cfg(feature = "postgres")]
pub fn emit_all(
    conn: &mut diesel::PgConnection,
    envelopes: &[Envelope],
) -> diesel::QueryResult<()> {
    emit_with_prefix(conn, outbox_core::codec::MESSAGE_PREFIX, envelopes)
}

/// [`emit_all`] with a message prefix of your own, for a relay configured with the same one.
#[cfg(feature = "postgres")]
pub fn emit_with_prefix(
    conn: &mut diesel::PgConnection,
    prefix: &str,
    envelopes: &[Envelope],
) -> diesel::QueryResult<()> {
    use diesel::RunQueryDsl as _;
    if envelopes.is_empty() {
        return Ok(());
    }
    statement!(prefix, envelopes).execute(conn).map(|_| ())
}

/// [`emit`] on a diesel-async connection, inside its transaction.
#[cfg(feature = "async-postgres")]
pub async fn emit_async(
    conn: &mut diesel_async::AsyncPgConnection,
    envelope: &Envelope,
) -> diesel::QueryResult<()> {
    emit_with_prefix_async(
        conn,
        outbox_core::codec::MESSAGE_PREFIX,
        std::slice::from_ref(envelope),
    )
    .await
}

/// [`emit_with_prefix`] on a diesel-async connection.
#[cfg(feature = "async-postgres")]
pub async fn emit_with_prefix_async(
    conn: &mut diesel_async::AsyncPgConnection,
    prefix: &str,
    envelopes: &[Envelope],
) -> diesel::QueryResult<()> {
    use diesel_async::RunQueryDsl as _;
    if envelopes.is_empty() {
        return Ok(());
    }
    statement!(prefix, envelopes)
        .execute(conn)
        .await
        .map(|_| ())
}
