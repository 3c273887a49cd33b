//! The event-table source on PostgreSQL: the checkpoint by `INSERT ... ON CONFLICT`, and
//! reads in a `REPEATABLE READ` snapshot that also gives the transaction horizon, so gaps
//! close exactly when their writers end.

use outbox_core::Result;
use outbox_core::event_table::{GapOracle, LogRead};
use sqlx::PgPool;

use super::{
    EventTableSource, Hold, Seed, Taken, micros_to_time, raws, read_failed, rows_then_commit,
};
use crate::common::sql;

/// Takes the checkpoint (creating it at `start` with `init` state) if free, held by this
/// owner already, or expired; returns its owner and state.
pub(super) async fn acquire(p: &PgPool, hold: &Hold<'_>, (start, init): Seed<'_>) -> Taken {
    let q = format!(
        "INSERT INTO {} AS c (name, owner, owner_name, lease_until, high, state) \
         VALUES ($1, $2, $6, now() + make_interval(secs => $3::bigint / 1000000.0), $4, $5) \
         ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, owner_name = EXCLUDED.owner_name, \
         lease_until = EXCLUDED.lease_until \
         WHERE c.owner IS NULL OR c.owner = EXCLUDED.owner OR c.owner_name = EXCLUDED.owner_name \
         OR c.lease_until < now() \
         RETURNING c.owner, c.state",
        hold.table
    );
    sqlx::query_as(sql(q))
        .bind(hold.name)
        .bind(hold.owner)
        .bind(hold.lease_us)
        .bind(start)
        .bind(init)
        .bind(hold.owner_name)
        .fetch_optional(p)
        .await
}

/// Reads the rows `q` selects in one snapshot, with the horizon that snapshot vouches for.
pub(super) async fn read(p: &PgPool, source: &EventTableSource, q: String) -> Result<LogRead> {
    let mut tx = p.begin().await.map_err(read_failed)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(read_failed)?;
    // The first statement fixes the snapshot; the horizon comes from it.
    let (now_us, xmin, xmax): (i64, i64, i64) = sqlx::query_as(
        "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT), \
         CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT), \
         CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS TEXT) AS BIGINT)",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(read_failed)?;
    let rows = rows_then_commit(tx, q).await?;
    let oracle = GapOracle::Horizon {
        marker: xmax,
        oldest_running: Some(xmin),
    };
    Ok(source.split(
        raws(&rows).map_err(read_failed)?,
        micros_to_time(now_us),
        oracle,
    ))
}
