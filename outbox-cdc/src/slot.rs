//! The replication slot and publication a CDC source reads through: created idempotently
//! (`outbox migrate`), inspected (`outbox status`: confirmed position and lag), dropped.
//!
//! A logical slot keeps every WAL segment from its confirmed position on, whether a relay
//! reads it or not. A relay gone for days therefore fills the disk unless PostgreSQL's
//! `max_slot_wal_keep_size` bounds what a slot may hold (the slot is then invalidated and
//! must be dropped and created again, which skips what it had not confirmed): set it, watch
//! [`SlotStatus::lag_bytes`], and drop the slot of a source you retire.

use outbox_core::{Error, ErrorKind, Result, TableName};
use outbox_sql::Quote;
use sqlx::PgPool;

use outbox_sqlx::map_sqlx;

/// What a source reads: its slot, its publication, and in table mode the outbox table the
/// publication covers (inserts only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// The logical replication slot (`pgoutput`).
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Table mode: the outbox table. Message mode (`None`): the publication covers no table;
    /// the messages `emit` writes flow through any slot.
    pub table: Option<TableName>,
}

/// A slot as `pg_replication_slots` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotStatus {
    /// Whether a relay is streaming from it now.
    pub active: bool,
    /// The position up to which the relay confirmed every event, as PostgreSQL writes an
    /// LSN (`16/B374D848`).
    pub confirmed_lsn: Option<String>,
    /// WAL the slot holds beyond its confirmed position, in bytes.
    pub lag_bytes: Option<i64>,
    /// While a relay streams: how long ago the newest WAL it confirmed was written locally
    /// (`pg_stat_replication.flush_lag`, in seconds); `None` when no relay streams, or
    /// when it has caught up and PostgreSQL stopped measuring.
    pub lag_seconds: Option<f64>,
}

impl SlotSpec {
    /// Checks the names: slot names are lower-case letters, digits and `_` (PostgreSQL's own
    /// rule), up to 63 bytes; publication names the same here, so they need no quoting.
    pub fn validate(&self) -> Result<()> {
        for (field, name) in [("slot", &self.slot), ("publication", &self.publication)] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "CDC `{field}` {name:?} must be 1 to 63 lower-case letters, digits or `_`"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Creates the publication and the slot if they do not exist yet. The slot starts at
    /// the current end of the WAL: what was committed before is not read (a polling relay
    /// publishes an outbox table's backlog).
    pub async fn ensure(&self, pool: &PgPool) -> Result<()> {
        self.validate()?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
                .bind(&self.publication)
                .fetch_one(pool)
                .await
                .map_err(|e| map_sqlx("looking up the publication", e))?;
        if !exists {
            let create = match &self.table {
                Some(t) => format!(
                    "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert')",
                    self.publication,
                    t.quoted(outbox_core::Dialect::Postgres)
                ),
                None => format!("CREATE PUBLICATION {}", self.publication),
            };
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(pool)
                .await
                .map_err(|e| map_sqlx("creating the publication", e))?;
        }
        if self.status(pool).await?.is_none() {
            sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                .bind(&self.slot)
                .execute(pool)
                .await
                .map_err(|e| map_sqlx("creating the replication slot", e))?;
        }
        Ok(())
    }

    /// The slot's state, or `None` when it does not exist.
    pub async fn status(&self, pool: &PgPool) -> Result<Option<SlotStatus>> {
        /// `active`, `confirmed_lsn`, `lag_bytes`, `lag_seconds`.
        type Row = (bool, Option<String>, Option<i64>, Option<f64>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT s.active, s.confirmed_flush_lsn::text, \
             (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint, \
             EXTRACT(EPOCH FROM r.flush_lag)::float8 \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
        )
        .bind(&self.slot)
        .fetch_optional(pool)
        .await
        .map_err(|e| map_sqlx("reading the replication slot", e))?;
        Ok(row.map(
            |(active, confirmed_lsn, lag_bytes, lag_seconds)| SlotStatus {
                active,
                confirmed_lsn,
                lag_bytes,
                lag_seconds,
            },
        ))
    }

    /// Drops the slot (WAL it held is released) and the publication, if they exist. A
    /// relay that just stopped releases the slot within moments; one still streaming it
    /// after 10 s makes this an error naming its process.
    pub async fn drop_all(&self, pool: &PgPool) -> Result<()> {
        self.validate()?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let row: Option<(Option<i32>,)> =
                sqlx::query_as("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(&self.slot)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| map_sqlx("reading the replication slot", e))?;
            match row {
                None => break,
                Some((Some(pid),)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            format!(
                                "replication slot {} is streamed by server process {pid}: \
                                 stop its relay first",
                                self.slot
                            ),
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Some((None,)) => {
                    sqlx::query("SELECT pg_drop_replication_slot($1)")
                        .bind(&self.slot)
                        .execute(pool)
                        .await
                        .map_err(|e| map_sqlx("dropping the replication slot", e))?;
                    break;
                }
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP PUBLICATION IF EXISTS {}",
            self.publication
        )))
        .execute(pool)
        .await
        .map_err(|e| map_sqlx("dropping the publication", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_named() {
        let spec = |slot: &str| SlotSpec {
            slot: slot.into(),
            publication: "outbox_pub".into(),
            table: None,
        };
        assert!(spec("outbox_orders").validate().is_ok());
        for bad in ["", "Orders", "a-b", "x; DROP", &"a".repeat(64)] {
            let err = spec(bad).validate().unwrap_err();
            assert!(err.to_string().contains("`slot`"), "{bad}: {err}");
        }
    }
}
