//! The event-table source on MySQL/MariaDB: the checkpoint by `INSERT IGNORE` and a
//! conditional `UPDATE`, and reads in a consistent snapshot, after measuring the start of
//! the oldest running InnoDB transaction (which needs the `PROCESS` privilege; without it
//! gaps close after `gap_timeout`, logged once).

use std::sync::atomic::Ordering;

use outbox_core::Result;
use outbox_core::event_table::{GapOracle, LogRead};
use sqlx::MySqlPool;
use tracing::warn;

use super::{
    EventTableSource, Hold, Seed, Taken, micros_to_time, raws, read_failed, rows_then_commit,
};
use crate::common::sql;

/// Takes the checkpoint (creating it at `start` with `init` state) if free, held by this
/// owner already, or expired; returns its owner and state.
pub(super) async fn acquire(p: &MySqlPool, hold: &Hold<'_>, (start, init): Seed<'_>) -> Taken {
    let t = &hold.table;
    let ins = format!(
        "INSERT IGNORE INTO {t} (name, owner, lease_until, high, state, updated_at) \
         VALUES (?, NULL, NULL, ?, ?, UTC_TIMESTAMP(6))"
    );
    sqlx::query(sql(ins))
        .bind(hold.name)
        .bind(start)
        .bind(init)
        .execute(p)
        .await?;
    let upd = format!(
        "UPDATE {t} SET owner = ?, owner_name = ?, lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
         WHERE name = ? AND (owner IS NULL OR owner = ? OR owner_name = ? OR lease_until < UTC_TIMESTAMP(6))"
    );
    sqlx::query(sql(upd))
        .bind(hold.owner)
        .bind(hold.owner_name)
        .bind(hold.lease_us)
        .bind(hold.name)
        .bind(hold.owner)
        .bind(hold.owner_name)
        .execute(p)
        .await?;
    let sel = format!("SELECT owner, state FROM {t} WHERE name = ?");
    sqlx::query_as(sql(sel))
        .bind(hold.name)
        .fetch_optional(p)
        .await
}

/// Reads the rows `q` selects in one consistent snapshot, with the oldest running
/// transaction's start as the horizon when the server shows it.
pub(super) async fn read(p: &MySqlPool, source: &EventTableSource, q: String) -> Result<LogRead> {
    let mut conn = p.acquire().await.map_err(read_failed)?;
    // The oldest running transaction is measured before the snapshot is taken, the
    // marker (now) after: see `LogSource::read`.
    let oldest: std::result::Result<(Option<i64>,), sqlx::Error> = sqlx::query_as(
        "SELECT CAST(MIN(UNIX_TIMESTAMP(t.trx_started)) * 1000000 AS SIGNED) \
         FROM information_schema.innodb_trx t \
         JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id \
         WHERE t.trx_mysql_thread_id <> CONNECTION_ID()",
    )
    .fetch_one(&mut *conn)
    .await;
    let oldest = match oldest {
        Ok((o,)) => Some(o),
        Err(e) => {
            if !source.oracle_warned.swap(true, Ordering::Relaxed) {
                warn!(source = %source.name, error = %e, "cannot read information_schema.innodb_trx (PROCESS privilege?); gaps will close by timeout only");
            }
            None
        }
    };
    sqlx::Executor::execute(
        &mut *conn,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    )
    .await
    .map_err(read_failed)?;
    // A sqlx transaction, so that a read cut off half-way (a cancelled relay) is rolled
    // back instead of returning an open snapshot to the pool, where it would hold the
    // horizon back.
    let mut tx = sqlx::Connection::begin_with(
        &mut *conn,
        "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
    )
    .await
    .map_err(read_failed)?;
    let (now_us,): (i64,) =
        sqlx::query_as("SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)")
            .fetch_one(&mut *tx)
            .await
            .map_err(read_failed)?;
    let rows = rows_then_commit(tx, q).await?;
    let oracle = match oldest {
        Some(o) => GapOracle::Horizon {
            marker: now_us,
            oldest_running: o,
        },
        None => GapOracle::Unknown,
    };
    Ok(source.split(
        raws(&rows).map_err(read_failed)?,
        micros_to_time(now_us),
        oracle,
    ))
}
