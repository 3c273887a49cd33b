//! [`PgLedger`]: where a PostgreSQL CDC source writes down what became of its events, in an
//! outbox-shaped table, so that `outbox status`, retention and the dead-letter commands
//! see CDC sources as they see polling ones.
//!
//! - **Table mode** writes into the outbox table itself: published rows are marked
//!   published in bulk (one statement per settled window), dead ones dead with their error
//!   and attempts, exactly as the polling relay leaves them, so a polling relay can take
//!   the table over.
//! - **Message mode** has no outbox table; dead events are written into a dead-letter table
//!   of the outbox's shape (`migrate` creates it), with their error.
//! - Something that was not an event at all (a message that does not decode) becomes a
//!   dead letter whose text columns are empty, with its bytes as payload and an id derived
//!   from its position, so writing it down again after a replay changes nothing.
//! - **Requeue** ([`DeadLetterAdmin::requeue_dead`]) puts events back on the log, since a
//!   CDC relay reads nothing else: in message mode each one is emitted again and its dead
//!   letter removed, in table mode its row is written again as a new insert, in one
//!   transaction either way. Listing and purging are the polling store's.

use outbox_core::{
    BacklogStats, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Envelope, EventId, Result,
    StoreStats, TableName,
};
use outbox_sql::PgCdcStatements;
use outbox_sqlx::map_sqlx;
use outbox_sqlx::postgres::{PgOutbox, PgStore};
use sqlx::PgPool;
use uuid::Uuid;

use crate::relay::{DeadEvent, Ledger};

/// Which table a [`PgLedger`] writes, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerTable {
    /// Table mode: the outbox table the source reads inserts from.
    Outbox(TableName),
    /// Message mode: a dead-letter table of the outbox's shape, and the message prefix
    /// requeued events are emitted with.
    DeadLetters {
        /// The table.
        table: TableName,
        /// The prefix of the source's messages.
        prefix: String,
    },
}

impl LedgerTable {
    /// The table written.
    pub fn table(&self) -> &TableName {
        match self {
            LedgerTable::Outbox(t) | LedgerTable::DeadLetters { table: t, .. } => t,
        }
    }
}

/// The PostgreSQL [`Ledger`] of a CDC source; see the module docs.
#[derive(Clone)]
pub struct PgLedger {
    pool: PgPool,
    table: LedgerTable,
    sql: PgCdcStatements,
    store: PgStore,
    outbox: PgOutbox,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("table", &self.table)
            .finish()
    }
}

/// The id of a dead letter for something at `position` that had none.
fn position_id(position: u64) -> EventId {
    EventId::from_uuid(Uuid::from_u64_pair(
        u64::from_be_bytes(*b"cdc-lsn\0"),
        position,
    ))
}

impl PgLedger {
    /// A ledger writing `table` through `pool`.
    pub fn new(pool: PgPool, table: LedgerTable) -> PgLedger {
        let t = table.table().clone();
        PgLedger {
            sql: PgCdcStatements::new(&t),
            store: PgStore::new(pool.clone(), t.clone()),
            outbox: PgOutbox::new(t),
            pool,
            table,
        }
    }

    /// Creates the table if it does not exist (the outbox table's own migration).
    pub async fn migrate(&self) -> Result<()> {
        outbox_sqlx::postgres::migrate(&self.pool, self.table.table()).await
    }

    /// The table written.
    pub fn table(&self) -> &LedgerTable {
        &self.table
    }

    async fn execute(
        &self,
        what: &str,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        conn: &mut sqlx::PgConnection,
    ) -> Result<u64> {
        query
            .execute(conn)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| map_sqlx(what, e))
    }
}

impl Ledger for PgLedger {
    async fn published(&self, ids: &[EventId]) -> Result<()> {
        if ids.is_empty() || matches!(self.table, LedgerTable::DeadLetters { .. }) {
            return Ok(());
        }
        let ids: Vec<Uuid> = ids.iter().map(EventId::as_uuid).collect();
        sqlx::query(sqlx::AssertSqlSafe(self.sql.mark_published.as_str()))
            .bind(ids)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("marking CDC-published rows", e))?;
        Ok(())
    }

    async fn dead(&self, dead: &[DeadEvent]) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| map_sqlx("writing dead letters", e))?;
        // Events (or rows whose id could be read) first, then what had no id.
        let (with_id, without): (Vec<&DeadEvent>, Vec<&DeadEvent>) =
            dead.iter().partition(|d| d.id().is_some());
        if let LedgerTable::DeadLetters { .. } = self.table {
            // Written again after a replay: the earlier copy goes first.
            let events: Vec<Envelope> = with_id.iter().filter_map(|d| d.envelope.clone()).collect();
            let ids: Vec<Uuid> = events.iter().map(|e| e.id().as_uuid()).collect();
            let delete = sqlx::query(sqlx::AssertSqlSafe(self.sql.delete.as_str())).bind(ids);
            self.execute("writing dead letters", delete, &mut tx)
                .await?;
            self.outbox.enqueue_all(&mut tx, &events).await?;
        }
        let mut ids = Vec::new();
        let mut attempts = Vec::new();
        let mut errors = Vec::new();
        for d in &with_id {
            ids.extend(d.id().map(|id| id.as_uuid()));
            attempts.push(i32::try_from(d.attempts).unwrap_or(i32::MAX));
            errors.push(d.error.clone());
        }
        let mark = sqlx::query(sqlx::AssertSqlSafe(self.sql.mark_dead.as_str()))
            .bind(ids)
            .bind(attempts)
            .bind(errors);
        self.execute("marking dead letters", mark, &mut tx).await?;
        for d in without {
            let insert = sqlx::query(sqlx::AssertSqlSafe(self.sql.insert_undecodable.as_str()))
                .bind(position_id(d.position).as_uuid())
                .bind(d.raw.clone())
                .bind(format!(
                    "undecodable at log position {}: {}",
                    d.position, d.error
                ));
            self.execute("writing an undecodable dead letter", insert, &mut tx)
                .await?;
        }
        tx.commit()
            .await
            .map_err(|e| map_sqlx("writing dead letters", e))
    }
}

impl DeadLetterAdmin for PgLedger {
    async fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        self.store.list_dead(filter, limit).await
    }

    /// Puts the matching dead events back on the log (see the module docs); dead letters
    /// that are not events stay (purge them). Returns how many were requeued.
    async fn requeue_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let records = self.store.list_dead(filter, usize::MAX).await?;
        let events: Vec<Envelope> = records
            .iter()
            .filter_map(|r| r.envelope().cloned())
            .collect();
        let mut requeued = 0;
        for chunk in events.chunks(1_000) {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| map_sqlx("requeueing dead letters", e))?;
            let ids: Vec<Uuid> = chunk.iter().map(|e| e.id().as_uuid()).collect();
            let delete = sqlx::query(sqlx::AssertSqlSafe(self.sql.delete.as_str())).bind(ids);
            self.execute("requeueing dead letters", delete, &mut tx)
                .await?;
            match &self.table {
                LedgerTable::Outbox(_) => self.outbox.enqueue_all(&mut tx, chunk).await?,
                LedgerTable::DeadLetters { prefix, .. } => {
                    outbox_sqlx::postgres::emit_with_prefix(&mut tx, prefix, chunk).await?
                }
            }
            tx.commit()
                .await
                .map_err(|e| map_sqlx("requeueing dead letters", e))?;
            requeued += chunk.len() as u64;
        }
        Ok(requeued)
    }

    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.store.purge_dead(filter).await
    }
}

impl StoreStats for PgLedger {
    /// The table's figures: in table mode the outbox's backlog as the relay marks it, in
    /// message mode the dead letters.
    async fn stats(&self) -> Result<BacklogStats> {
        self.store.stats().await
    }
}
