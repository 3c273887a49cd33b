//! The event-table source on SQLite: times are Unix microseconds, bound from the relay's
//! clock, and reads need no horizon because SQLite serialises writers, so a gap is final
//! at once.

use chrono::Utc;
use outbox_core::Result;
use outbox_core::event_table::{GapOracle, LogRead};
use sqlx::SqlitePool;

use super::{EventTableSource, Hold, Seed, Taken, raws, read_failed};
use crate::common::sql;

/// Takes the checkpoint (creating it at `start` with `init` state) if free, held by this
/// owner already, or expired; returns its owner and state.
pub(super) async fn acquire(p: &SqlitePool, hold: &Hold<'_>, (start, init): Seed<'_>) -> Taken {
    let t = &hold.table;
    let now = Utc::now().timestamp_micros();
    let ins = format!(
        "INSERT INTO {t} (name, owner, lease_until, high, state, updated_at) \
         VALUES (?, NULL, NULL, ?, ?, ?) ON CONFLICT DO NOTHING"
    );
    sqlx::query(sql(ins))
        .bind(hold.name)
        .bind(start)
        .bind(init)
        .bind(now)
        .execute(p)
        .await?;
    let upd = format!(
        "UPDATE {t} SET owner = ?, owner_name = ?, lease_until = ? \
         WHERE name = ? AND (owner IS NULL OR owner = ? OR owner_name = ? OR lease_until < ?) \
         RETURNING owner, state"
    );
    sqlx::query_as(sql(upd))
        .bind(hold.owner)
        .bind(hold.owner_name)
        .bind(now.saturating_add(hold.lease_us))
        .bind(hold.name)
        .bind(hold.owner)
        .bind(hold.owner_name)
        .bind(now)
        .fetch_optional(p)
        .await
}

/// Reads the rows `q` selects.
pub(super) async fn read(p: &SqlitePool, source: &EventTableSource, q: String) -> Result<LogRead> {
    let rows = sqlx::query(sql(q))
        .fetch_all(p)
        .await
        .map_err(read_failed)?;
    Ok(source.split(
        raws(&rows).map_err(read_failed)?,
        Utc::now(),
        GapOracle::Serialized,
    ))
}
