//! PostgreSQL: enqueue in the caller's transaction, and [`PgStore`] for the relay.
//!
//! A claim walks the ordering keys round robin and takes a run of each claimable key (its
//! head and the due rows after it), locking each key's head with `SKIP LOCKED`, so relays
//! never wait on each other and per-key order holds with any number of relays. Its cost is
//! bounded by the batch it returns, not by the backlog: see `outbox_sql::pg_claim`.
//!
//! Wake-ups: enqueue does **not** `NOTIFY` inside the writer's transaction, because
//! PostgreSQL serialises the commits of notifying transactions on a global queue lock.
//! Writers call [`PgNotifier::notify`] after commit instead (a flag; a background task
//! sends at most one `NOTIFY` per interval), and [`PgWakeUp`] listens for it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::schema::Dialect;
use outbox_core::store::{
    BacklogStats, Claim, DeadLetter, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Lease,
    Retention, Retry, Store, StoreStats, WakeUp,
};
use outbox_core::{Envelope, Error, ErrorKind, EventId, Result, TableName, ValidationLimits};
use outbox_sql::Quote;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgRow};
use sqlx::{Executor, Row};
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use crate::common::{INSERT_COLUMNS, RawRow, Sql, backlog_from_row, limit_i64, micros, sql};
use crate::error::map_sqlx;
use outbox_sql::{ClaimCursor, key_budget, ready_keys};

/// Creates the schema (if named) and the outbox table with its indexes, idempotently.
pub async fn migrate(pool: &PgPool, table: &TableName) -> Result<()> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| map_sqlx("acquiring a connection to migrate", e))?;
    for stmt in outbox_sql::create_table_sql(table, Dialect::Postgres) {
        conn.execute(sql(stmt))
            .await
            .map_err(|e| map_sqlx("creating the outbox table", e))?;
    }
    Ok(())
}

fn insert_sql(table: &TableName) -> String {
    format!(
        "INSERT INTO {} ({INSERT_COLUMNS}) SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::text[], $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[], \
         $12::timestamptz[], $13::timestamptz[])",
        table.quoted(Dialect::Postgres)
    )
}

/// Writes `envelope` to the default table through `conn`, which is normally the caller's
/// open transaction (`&mut tx`). The row becomes visible when that transaction commits.
pub async fn enqueue(conn: &mut PgConnection, envelope: &Envelope) -> Result<()> {
    PgOutbox::default().enqueue(conn, envelope).await
}

/// Writes `envelopes` to the default table in one statement through `conn`.
pub async fn enqueue_all(conn: &mut PgConnection, envelopes: &[Envelope]) -> Result<()> {
    PgOutbox::default().enqueue_all(conn, envelopes).await
}

/// Enqueues into a configured table. Cheap to clone; build once.
#[derive(Clone, Debug)]
pub struct PgOutbox {
    table: TableName,
    insert: Sql,
}

impl Default for PgOutbox {
    fn default() -> Self {
        PgOutbox::new(TableName::default())
    }
}

impl PgOutbox {
    /// Enqueues into `table`.
    pub fn new(table: TableName) -> Self {
        let insert = insert_sql(&table).into();
        PgOutbox { table, insert }
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Writes one event through `conn` (the caller's transaction).
    pub async fn enqueue(&self, conn: &mut PgConnection, envelope: &Envelope) -> Result<()> {
        self.enqueue_all(conn, std::slice::from_ref(envelope)).await
    }

    /// Writes events in one statement through `conn` (the caller's transaction).
    pub async fn enqueue_all(&self, conn: &mut PgConnection, envelopes: &[Envelope]) -> Result<()> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let n = envelopes.len();
        let mut ids: Vec<Uuid> = Vec::with_capacity(n);
        let mut agg_types: Vec<&str> = Vec::with_capacity(n);
        let mut agg_ids: Vec<&str> = Vec::with_capacity(n);
        let mut types: Vec<&str> = Vec::with_capacity(n);
        let mut dests: Vec<&str> = Vec::with_capacity(n);
        let mut keys: Vec<&str> = Vec::with_capacity(n);
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(n);
        let mut content_types = Vec::with_capacity(n);
        let mut headers = Vec::with_capacity(n);
        let mut tps: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut tss: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut created: Vec<DateTime<Utc>> = Vec::with_capacity(n);
        let mut available: Vec<DateTime<Utc>> = Vec::with_capacity(n);
        for e in envelopes {
            ids.push(e.id().as_uuid());
            agg_types.push(e.aggregate_type());
            agg_ids.push(e.aggregate_id());
            types.push(e.event_type());
            dests.push(e.destination());
            keys.push(e.ordering_key());
            payloads.push(e.payload().as_ref());
            content_types.push(e.content_type());
            headers.push(e.headers_json());
            tps.push(e.trace().map(|t| t.traceparent()));
            tss.push(e.trace().and_then(|t| t.tracestate()));
            created.push(e.created_at());
            available.push(e.available_at());
        }
        sqlx::query(sql(Arc::clone(&self.insert)))
            .bind(ids)
            .bind(agg_types)
            .bind(agg_ids)
            .bind(types)
            .bind(dests)
            .bind(keys)
            .bind(payloads)
            .bind(content_types)
            .bind(headers)
            .bind(tps)
            .bind(tss)
            .bind(created)
            .bind(available)
            .execute(conn)
            .await
            .map_err(|e| map_sqlx("enqueueing outbox events", e))?;
        Ok(())
    }
}

struct Statements {
    claim: Sql,
    mark_published: Sql,
    retry: Sql,
    dead: Sql,
    release: Sql,
    purge: Sql,
    stats: Sql,
    list_dead: Sql,
    requeue_dead: Sql,
    purge_dead: Sql,
}

impl Statements {
    fn new(table: &TableName) -> Self {
        let s = outbox_sql::PgStatements::new(table);
        Statements {
            claim: s.claim.into(),
            mark_published: s.mark_published.into(),
            retry: s.retry.into(),
            dead: s.dead.into(),
            release: s.release.into(),
            purge: s.purge.into(),
            stats: s.stats.into(),
            list_dead: s.list_dead.into(),
            requeue_dead: s.requeue_dead.into(),
            purge_dead: s.purge_dead.into(),
        }
    }
}

/// The PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    table: TableName,
    limits: ValidationLimits,
    stmts: Arc<Statements>,
    cursor: Arc<ClaimCursor>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's options hold the password: show only the table.
        f.debug_struct("PgStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn decode(row: &PgRow) -> std::result::Result<RawRow, sqlx::Error> {
    Ok(RawRow {
        seq: row.try_get("seq")?,
        id: EventId::from_uuid(row.try_get::<Uuid, _>("id")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        destination: row.try_get("destination")?,
        ordering_key: row.try_get("ordering_key")?,
        payload: row.try_get("payload")?,
        content_type: row.try_get("content_type")?,
        headers: row.try_get("headers")?,
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
        created_at: row.try_get("created_at")?,
        available_at: row.try_get("available_at")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
    })
}

fn uuids(ids: &[EventId]) -> Vec<Uuid> {
    ids.iter().map(EventId::as_uuid).collect()
}

impl PgStore {
    /// A store over `table` (which [`migrate`] created) through `pool`.
    pub fn new(pool: PgPool, table: TableName) -> Self {
        let stmts = Arc::new(Statements::new(&table));
        PgStore {
            pool,
            table,
            limits: ValidationLimits::default(),
            stmts,
            cursor: Arc::default(),
        }
    }

    /// Validates rows read back against these limits (default: core's defaults).
    pub fn with_limits(mut self, limits: ValidationLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    async fn fenced(&self, stmt: &Sql, lease: &Lease, ids: &[EventId], what: &str) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(sql(Arc::clone(stmt)))
            .bind(uuids(ids))
            .bind(lease.token.as_i64())
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(what, e))?;
        Ok(done.rows_affected())
    }

    fn dead_query<'q>(
        stmt: &Sql,
        filter: &'q DeadLetterFilter,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql(Arc::clone(stmt)))
            .bind(filter.event_type.as_deref())
            .bind(filter.ordering_key.as_deref())
            .bind(filter.dead_since)
            .bind(filter.dead_before)
            .bind(filter.ids.as_ref().map(|ids| uuids(ids)))
    }
}

impl Store for PgStore {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        let lease = outbox_sql::new_lease(lease_for);
        let token = lease.token;
        const WHAT: &str = "claiming outbox rows";
        let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(WHAT, e))?;
        sqlx::query(outbox_sql::PG_CLAIM_SETTINGS)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let start = self.cursor.start();
        let rows = sqlx::query(sql(Arc::clone(&self.stmts.claim)))
            .bind(limit_i64(limit))
            .bind(token.as_i64())
            .bind(micros(lease_for))
            .bind(&start)
            .bind(limit_i64(key_budget(limit)))
            .bind(limit_i64(ready_keys(limit)))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        tx.commit().await.map_err(|e| map_sqlx(WHAT, e))?;
        const DECODE: &str = "decoding claimed rows";
        let mut walked_to: Option<String> = None;
        let mut raw = Vec::with_capacity(rows.len());
        for row in &rows {
            walked_to = row.try_get("walked_to").map_err(|e| map_sqlx(DECODE, e))?;
            // The one row of an empty claim carries only `walked_to`.
            let seq: Option<i64> = row.try_get("seq").map_err(|e| map_sqlx(DECODE, e))?;
            if seq.is_some() {
                raw.push(decode(row).map_err(|e| map_sqlx(DECODE, e))?);
            }
        }
        Ok(self
            .cursor
            .finish(&start, lease, raw, walked_to.as_deref(), &self.limits))
    }

    async fn mark_published(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        self.fenced(
            &self.stmts.mark_published,
            lease,
            ids,
            "marking rows published",
        )
        .await
    }

    async fn schedule_retry(&self, lease: &Lease, retries: &[Retry]) -> Result<u64> {
        if retries.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = retries.iter().map(|r| r.id.as_uuid()).collect();
        let delays: Vec<i64> = retries.iter().map(|r| micros(r.delay)).collect();
        let errs: Vec<&str> = retries.iter().map(|r| r.error.as_str()).collect();
        let done = sqlx::query(sql(Arc::clone(&self.stmts.retry)))
            .bind(ids)
            .bind(lease.token.as_i64())
            .bind(delays)
            .bind(errs)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("scheduling retries", e))?;
        Ok(done.rows_affected())
    }

    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        if dead.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = dead.iter().map(|d| d.id.as_uuid()).collect();
        let errs: Vec<&str> = dead.iter().map(|d| d.error.as_str()).collect();
        let done = sqlx::query(sql(Arc::clone(&self.stmts.dead)))
            .bind(ids)
            .bind(lease.token.as_i64())
            .bind(errs)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("dead-lettering rows", e))?;
        Ok(done.rows_affected())
    }

    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        self.fenced(&self.stmts.release, lease, ids, "releasing rows")
            .await
    }
}

impl Retention for PgStore {
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let done = sqlx::query(sql(Arc::clone(&self.stmts.purge)))
            .bind(before)
            .bind(limit_i64(limit))
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("purging published rows", e))?;
        Ok(done.rows_affected())
    }
}

impl StoreStats for PgStore {
    async fn stats(&self) -> Result<BacklogStats> {
        let row = sqlx::query(sql(Arc::clone(&self.stmts.stats)))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx("reading backlog figures", e))?;
        backlog_from_row(&row)
    }
}

impl DeadLetterAdmin for PgStore {
    async fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        let rows = Self::dead_query(&self.stmts.list_dead, filter)
            .bind(limit_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("listing dead letters", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let dead_at: Option<DateTime<Utc>> = row
                .try_get("processed_at")
                .map_err(|e| map_sqlx("decoding dead letter", e))?;
            let raw = decode(row).map_err(|e| map_sqlx("decoding dead letter", e))?;
            out.push(raw.into_dead_record(dead_at, &self.limits));
        }
        Ok(out)
    }

    async fn requeue_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let done = Self::dead_query(&self.stmts.requeue_dead, filter)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("requeueing dead letters", e))?;
        Ok(done.rows_affected())
    }

    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let done = Self::dead_query(&self.stmts.purge_dead, filter)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("purging dead letters", e))?;
        Ok(done.rows_affected())
    }
}

/// The notification channel for `table`.
pub fn channel_name(table: &TableName) -> String {
    format!("outbox_{}", table.to_string().replace('.', "_"))
}

/// Sends wake-ups for the relay after commits, without serialising writers: `notify()` only
/// sets a flag, and one background task sends at most one `NOTIFY` per `min_interval`.
#[derive(Clone)]
pub struct PgNotifier {
    flag: Arc<Notify>,
}

impl std::fmt::Debug for PgNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNotifier").finish_non_exhaustive()
    }
}

impl PgNotifier {
    /// Starts the background task on the current tokio runtime.
    pub fn spawn(pool: PgPool, table: &TableName, min_interval: Duration) -> Self {
        let flag = Arc::new(Notify::new());
        let channel = channel_name(table);
        let waiter = Arc::clone(&flag);
        tokio::spawn(async move {
            loop {
                waiter.notified().await;
                if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(&channel)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %e, "outbox NOTIFY failed; the relay's polling covers it");
                }
                tokio::time::sleep(min_interval).await;
            }
        });
        PgNotifier { flag }
    }

    /// Call after a transaction that enqueued events has committed.
    pub fn notify(&self) {
        self.flag.notify_one();
    }
}

/// Wakes the relay on `NOTIFY` from [`PgNotifier`] (or anything that notifies the channel).
/// Reconnects by itself; while it cannot, the relay keeps polling.
pub struct PgWakeUp {
    listener: Mutex<PgListener>,
}

impl std::fmt::Debug for PgWakeUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWakeUp").finish_non_exhaustive()
    }
}

impl PgWakeUp {
    /// Listens on `table`'s channel with a dedicated connection from `pool`.
    pub async fn listen(pool: &PgPool, table: &TableName) -> Result<Self> {
        let mut listener = PgListener::connect_with(pool)
            .await
            .map_err(|e| map_sqlx("connecting the LISTEN connection", e))?;
        listener
            .listen(&channel_name(table))
            .await
            .map_err(|e| map_sqlx("LISTEN on the outbox channel", e))?;
        Ok(PgWakeUp {
            listener: Mutex::new(listener),
        })
    }
}

impl WakeUp for PgWakeUp {
    async fn wait(&self) -> Result<()> {
        let mut l = self.listener.lock().await;
        match l.try_recv().await {
            Ok(Some(_)) => Ok(()),
            // The connection dropped; PgListener reconnects on the next call.
            Ok(None) => Err(Error::new(
                ErrorKind::Connection,
                "LISTEN connection lost; reconnecting",
            )),
            Err(e) => Err(map_sqlx("waiting for a notification", e)),
        }
    }
}
