//! MySQL 8 and MariaDB 10.6+: enqueue in the caller's transaction, and [`MySqlStore`].
//!
//! Neither server has `UPDATE ... RETURNING`, so a claim is one short `READ COMMITTED`
//! transaction: an `UPDATE` returns rows whose lease expired to pending; the claim then
//! walks the ordering keys that have pending rows round robin
//! (`outbox_sql::walk_keys`), one probe of the `(status, ordering_key, seq)` index per
//! key, and reads each claimable key's run with `SELECT ... FOR UPDATE SKIP LOCKED`, kept
//! as far as a second, non-locking read finds it to be the key's unfinished rows in order
//! from its head (so relays skip each other's keys instead of waiting, and never split one
//! key's run); one `UPDATE` leases the rows, and `COMMIT`. Its cost is
//! bounded by the batch, not by the backlog. Times are `DATETIME(6)` in UTC; "now" is always the server's
//! `UTC_TIMESTAMP(6)`, so relay clocks never decide whether a lease has expired.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::schema::Dialect;
use outbox_core::store::{
    BacklogStats, Claim, DeadLetter, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Lease,
    Retention, Retry, Store, StoreStats,
};
use outbox_core::{Envelope, EventId, Result, TableName, ValidationLimits};
use outbox_sql::Quote;
use sqlx::mysql::{MySqlArguments, MySqlConnection, MySqlPool, MySqlRow};
use sqlx::{Executor, MySql, Row};

use crate::common::{
    FilterBind, INSERT_COLUMNS, NextKeySql, RawRow, SELECT_COLUMNS, Sql, backlog_from_row,
    dead_filter, limit_i64, markers, micros, sql,
};
use crate::error::map_sqlx;
use outbox_sql::{ClaimCursor, KeyWalk, walk_keys};

/// Rows per multi-row statement: well under the protocol's 65,535 placeholders.
const CHUNK: usize = 1000;

/// Creates the database (if the table names one) and the outbox table, idempotently.
pub async fn migrate(pool: &MySqlPool, table: &TableName) -> Result<()> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| map_sqlx("acquiring a connection to migrate", e))?;
    for stmt in outbox_sql::create_table_sql(table, Dialect::MySql) {
        conn.execute(sql(stmt))
            .await
            .map_err(|e| map_sqlx("creating the outbox table", e))?;
    }
    Ok(())
}

/// Writes `envelope` to the default table through `conn`, normally the caller's open
/// transaction (`&mut tx`). The row becomes visible when that transaction commits.
pub async fn enqueue(conn: &mut MySqlConnection, envelope: &Envelope) -> Result<()> {
    MySqlOutbox::default().enqueue(conn, envelope).await
}

/// Writes `envelopes` to the default table through `conn` (the caller's transaction).
pub async fn enqueue_all(conn: &mut MySqlConnection, envelopes: &[Envelope]) -> Result<()> {
    MySqlOutbox::default().enqueue_all(conn, envelopes).await
}

/// Enqueues into a configured table. Cheap to clone; build once.
#[derive(Clone, Debug)]
pub struct MySqlOutbox {
    table: TableName,
    quoted: Arc<str>,
    single: Sql,
}

impl Default for MySqlOutbox {
    fn default() -> Self {
        MySqlOutbox::new(TableName::default())
    }
}

const ROW_MARKERS: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

impl MySqlOutbox {
    /// Enqueues into `table`.
    pub fn new(table: TableName) -> Self {
        let quoted: Arc<str> = table.quoted(Dialect::MySql).into();
        let single = format!("INSERT INTO {quoted} ({INSERT_COLUMNS}) VALUES {ROW_MARKERS}").into();
        MySqlOutbox {
            table,
            quoted,
            single,
        }
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Writes one event through `conn` (the caller's transaction).
    pub async fn enqueue(&self, conn: &mut MySqlConnection, envelope: &Envelope) -> Result<()> {
        self.enqueue_all(conn, std::slice::from_ref(envelope)).await
    }

    /// Writes events through `conn` (the caller's transaction): one multi-row `INSERT` per
    /// thousand events.
    pub async fn enqueue_all(
        &self,
        conn: &mut MySqlConnection,
        envelopes: &[Envelope],
    ) -> Result<()> {
        for chunk in envelopes.chunks(CHUNK) {
            let text: Sql = if chunk.len() == 1 {
                Arc::clone(&self.single)
            } else {
                format!(
                    "INSERT INTO {} ({INSERT_COLUMNS}) VALUES {}",
                    self.quoted,
                    vec![ROW_MARKERS; chunk.len()].join(", ")
                )
                .into()
            };
            let mut q = sqlx::query(sql(text));
            for e in chunk {
                q = q
                    .bind(e.id().to_string())
                    .bind(e.aggregate_type())
                    .bind(e.aggregate_id())
                    .bind(e.event_type())
                    .bind(e.destination())
                    .bind(e.ordering_key())
                    .bind(e.payload().as_ref())
                    .bind(e.content_type())
                    .bind(e.headers_json())
                    .bind(e.trace().map(|t| t.traceparent()))
                    .bind(e.trace().and_then(|t| t.tracestate()))
                    .bind(e.created_at())
                    .bind(e.available_at());
            }
            q.execute(&mut *conn)
                .await
                .map_err(|e| map_sqlx("enqueueing outbox events", e))?;
        }
        Ok(())
    }
}

fn decode(row: &MySqlRow) -> std::result::Result<RawRow, sqlx::Error> {
    let id: String = row.try_get("id")?;
    Ok(RawRow {
        seq: row.try_get("seq")?,
        id: id
            .parse::<EventId>()
            .map_err(|e| sqlx::Error::ColumnDecode {
                index: "id".to_owned(),
                source: Box::new(e),
            })?,
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

/// A row is held by a lease when it is in flight under that token and not yet expired.
const HELD: &str = "status = 1 AND lease_token = ? AND lease_until > UTC_TIMESTAMP(6)";

struct Statements {
    reap: Sql,
    next: NextKeySql,
    run: Sql,
    check: Sql,
    retry: Sql,
    dead: Sql,
    purge: Sql,
    stats: Sql,
}

impl Statements {
    fn new(t: &str, key_index: &str) -> Self {
        let now = "UTC_TIMESTAMP(6)";
        // Named, and ordered by all its columns: otherwise MariaDB reads the index by
        // `status = 0` alone and filters the key bound row by row from the first key.
        let next = |bound: &str| {
            format!(
                "SELECT o.ordering_key, o.available_at <= {now} AND NOT EXISTS \
                   (SELECT 1 FROM {t} p WHERE p.status = 1 AND p.ordering_key = o.ordering_key) \
                 FROM {t} o FORCE INDEX (`{key_index}`) WHERE o.status = 0 AND {bound} \
                 ORDER BY o.status, o.ordering_key, o.seq LIMIT 1"
            )
        };
        Statements {
            reap: format!(
                "UPDATE {t} SET status = 0, lease_token = NULL, lease_until = NULL \
                 WHERE status = 1 AND lease_until <= {now}"
            )
            .into(),
            // Binds: the bounds. The key's first pending row in (status, key, seq) order is
            // its head unless one of its rows is in flight (leases that expired were reaped).
            next: NextKeySql::new(
                next,
                [
                    "o.ordering_key > ?",
                    "o.ordering_key > ? AND o.ordering_key <= ?",
                    "o.ordering_key <= ?",
                ],
            ),
            // Binds: key, most rows. Locks the key's first pending rows, skipping rows
            // another claim holds locked, which may be its head or rows in the middle of its
            // run: `check` then decides what of it is this claim's.
            run: format!(
                "SELECT {SELECT_COLUMNS}, available_at <= {now} AS due \
                 FROM {t} o WHERE o.status = 0 AND o.ordering_key = ? \
                 ORDER BY o.seq LIMIT ? FOR UPDATE SKIP LOCKED"
            )
            .into(),
            // Binds: key, the last row read, most rows. The key's unfinished rows up to
            // that one, read after the locking read and without locking (so rows other
            // claims hold locked are seen, not skipped).
            check: format!(
                "SELECT seq FROM {t} FORCE INDEX (`{key_index}`) \
                 WHERE status IN (0, 1) AND ordering_key = ? AND seq <= ? ORDER BY seq LIMIT ?"
            )
            .into(),
            retry: format!(
                "UPDATE {t} SET status = 0, attempts = attempts + 1, last_error = ?, \
                   available_at = {now} + INTERVAL ? MICROSECOND, \
                   lease_token = NULL, lease_until = NULL WHERE id = ? AND {HELD}"
            )
            .into(),
            dead: format!(
                "UPDATE {t} SET status = 3, attempts = attempts + 1, last_error = ?, processed_at = {now}, \
                   lease_token = NULL, lease_until = NULL WHERE id = ? AND {HELD}"
            )
            .into(),
            purge: format!(
                "DELETE FROM {t} WHERE status = 2 AND processed_at < ? ORDER BY processed_at LIMIT ?"
            )
            .into(),
            stats: format!(
                "SELECT COUNT(CASE WHEN status = 0 OR (status = 1 AND lease_until <= {now}) THEN 1 END), \
                        COUNT(CASE WHEN status = 1 AND lease_until > {now} THEN 1 END), \
                        COUNT(CASE WHEN status = 3 THEN 1 END), \
                        MIN(CASE WHEN status IN (0, 1) THEN created_at END), \
                        (SELECT COUNT(*) FROM {t} WHERE status = 2 \
                           AND processed_at > {now} - INTERVAL 1 MINUTE) \
                 FROM {t} WHERE status IN (0, 1, 3)"
            )
            .into(),
        }
    }
}

/// One claim's walk, inside its transaction.
struct MySqlWalk<'a, 'c> {
    tx: &'a mut sqlx::Transaction<'c, MySql>,
    stmts: &'a Statements,
}

impl KeyWalk for MySqlWalk<'_, '_> {
    async fn next_key(
        &mut self,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Result<Option<(String, bool)>> {
        // Positional binds: the bounds the chosen form has, in order.
        let stmt = self.stmts.next.pick(after, upto);
        let mut q = sqlx::query_as::<_, (String, bool)>(sql(Arc::clone(stmt)));
        if upto.is_none() || after.is_some() {
            q = q.bind(after.unwrap_or(""));
        }
        if let Some(u) = upto {
            q = q.bind(u);
        }
        q.fetch_optional(&mut **self.tx)
            .await
            .map_err(|e| map_sqlx("claiming outbox rows: finding the next key", e))
    }

    async fn take_run(&mut self, key: &str, max: usize) -> Result<Vec<RawRow>> {
        const WHAT: &str = "claiming outbox rows: reading a key's run";
        let rows = sqlx::query(sql(Arc::clone(&self.stmts.run)))
            .bind(key)
            .bind(limit_i64(max))
            .fetch_all(&mut **self.tx)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        // The locked rows up to the first one not yet due.
        let mut locked = Vec::with_capacity(rows.len());
        for row in &rows {
            let due: bool = row.try_get("due").map_err(|e| map_sqlx(WHAT, e))?;
            if !due {
                break;
            }
            locked.push(row);
        }
        let Some(last) = locked.last() else {
            return Ok(Vec::new());
        };
        let last: i64 = last.try_get("seq").map_err(|e| map_sqlx(WHAT, e))?;
        // SKIP LOCKED skips any row another claim holds, not only a head: the rows read
        // are this claim's only as far as they are the key's unfinished rows in order,
        // from its head. A row still in flight or locked elsewhere ends the run there
        // (at its start: the key is someone else's). The rows kept stay locked until
        // this claim commits, so what this read saw of them cannot change.
        let unfinished: Vec<i64> = sqlx::query_scalar(sql(Arc::clone(&self.stmts.check)))
            .bind(key)
            .bind(last)
            .bind(limit_i64(locked.len()))
            .fetch_all(&mut **self.tx)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let mut run = Vec::with_capacity(locked.len());
        for (row, expected) in locked.into_iter().zip(unfinished) {
            let seq: i64 = row.try_get("seq").map_err(|e| map_sqlx(WHAT, e))?;
            if seq != expected {
                break;
            }
            run.push(decode(row).map_err(|e| map_sqlx("decoding claimed rows", e))?);
        }
        Ok(run)
    }
}

/// The MySQL/MariaDB store. Cheap to clone.
#[derive(Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
    table: TableName,
    quoted: Arc<str>,
    limits: ValidationLimits,
    stmts: Arc<Statements>,
    cursor: Arc<ClaimCursor>,
}

impl std::fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's options hold the password: show only the table.
        f.debug_struct("MySqlStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn bind_filter<'q>(
    mut q: sqlx::query::Query<'q, MySql, MySqlArguments>,
    binds: Vec<FilterBind>,
) -> sqlx::query::Query<'q, MySql, MySqlArguments> {
    for b in binds {
        q = match b {
            FilterBind::Time(v) => q.bind(v),
            FilterBind::Text(v) => q.bind(v),
        };
    }
    q
}

impl MySqlStore {
    /// A store over `table` (which [`migrate`] created) through `pool`.
    pub fn new(pool: MySqlPool, table: TableName) -> Self {
        let quoted: Arc<str> = table.quoted(Dialect::MySql).into();
        let stmts = Arc::new(Statements::new(&quoted, &table.derived("key_idx")));
        MySqlStore {
            pool,
            table,
            quoted,
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
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// `UPDATE ... SET {set} WHERE id IN (...) AND {HELD}`, a thousand ids per statement.
    async fn fenced_in(
        &self,
        set: &str,
        lease: &Lease,
        ids: &[EventId],
        what: &str,
    ) -> Result<u64> {
        let mut changed = 0;
        for chunk in ids.chunks(CHUNK) {
            let stmt = format!(
                "UPDATE {} SET {set}, lease_token = NULL, lease_until = NULL WHERE id IN ({}) AND {HELD}",
                self.quoted,
                markers(chunk.len())
            );
            let mut q = sqlx::query(sql(stmt));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            let done = q
                .bind(lease.token.as_i64())
                .execute(&self.pool)
                .await
                .map_err(|e| map_sqlx(what, e))?;
            changed += done.rows_affected();
        }
        Ok(changed)
    }

    /// Runs one fenced per-row statement for each row, in one transaction (retries and dead
    /// letters carry a message and delay per row; they are the uncommon path).
    async fn per_row<'a>(
        &self,
        stmt: &Sql,
        lease: &Lease,
        rows: impl Iterator<Item = (EventId, &'a str, Option<i64>)>,
        what: &str,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(what, e))?;
        let mut changed = 0;
        for (id, error, delay_us) in rows {
            let mut q = sqlx::query(sql(Arc::clone(stmt))).bind(error);
            if let Some(d) = delay_us {
                q = q.bind(d);
            }
            let done = q
                .bind(id.to_string())
                .bind(lease.token.as_i64())
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(what, e))?;
            changed += done.rows_affected();
        }
        tx.commit().await.map_err(|e| map_sqlx(what, e))?;
        Ok(changed)
    }
}

impl Store for MySqlStore {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        const WHAT: &str = "claiming outbox rows";
        let lease = outbox_sql::new_lease(lease_for);
        let token = lease.token;
        let mut conn = self.pool.acquire().await.map_err(|e| map_sqlx(WHAT, e))?;
        // Applies to the next transaction on this connection only.
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        // Expired leases go back to pending (the old holder's fenced marks then miss).
        sqlx::query(sql(Arc::clone(&self.stmts.reap)))
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let start = self.cursor.start();
        let mut walk = MySqlWalk {
            tx: &mut tx,
            stmts: &self.stmts,
        };
        let (raw, walked_to) = walk_keys(&mut walk, &start, limit).await?;
        for chunk in raw.chunks(CHUNK) {
            let stmt = format!(
                "UPDATE {} SET status = 1, lease_token = ?, \
                   lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE seq IN ({})",
                self.quoted,
                markers(chunk.len())
            );
            let mut q = sqlx::query(sql(stmt))
                .bind(token.as_i64())
                .bind(micros(lease_for));
            for r in chunk {
                q = q.bind(r.seq);
            }
            q.execute(&mut *tx).await.map_err(|e| map_sqlx(WHAT, e))?;
        }
        tx.commit().await.map_err(|e| map_sqlx(WHAT, e))?;
        Ok(self
            .cursor
            .finish(&start, lease, raw, walked_to.as_deref(), &self.limits))
    }

    async fn mark_published(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        self.fenced_in(
            "status = 2, processed_at = UTC_TIMESTAMP(6)",
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
        let rows = retries
            .iter()
            .map(|r| (r.id, r.error.as_str(), Some(micros(r.delay))));
        self.per_row(&self.stmts.retry, lease, rows, "scheduling retries")
            .await
    }

    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        if dead.is_empty() {
            return Ok(0);
        }
        let rows = dead.iter().map(|d| (d.id, d.error.as_str(), None));
        self.per_row(&self.stmts.dead, lease, rows, "dead-lettering rows")
            .await
    }

    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        self.fenced_in("status = 0", lease, ids, "releasing rows")
            .await
    }
}

impl Retention for MySqlStore {
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

impl StoreStats for MySqlStore {
    async fn stats(&self) -> Result<BacklogStats> {
        let row = sqlx::query(sql(Arc::clone(&self.stmts.stats)))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx("reading backlog figures", e))?;
        backlog_from_row(&row)
    }
}

impl DeadLetterAdmin for MySqlStore {
    async fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        let (cond, binds) = dead_filter(filter);
        let stmt = format!(
            "SELECT {SELECT_COLUMNS}, processed_at FROM {} WHERE {cond} ORDER BY processed_at, seq LIMIT ?",
            self.quoted
        );
        let rows = bind_filter(sqlx::query(sql(stmt)), binds)
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
        let (cond, binds) = dead_filter(filter);
        let stmt = format!(
            "UPDATE {} SET status = 0, attempts = 0, available_at = UTC_TIMESTAMP(6), processed_at = NULL WHERE {cond}",
            self.quoted
        );
        let done = bind_filter(sqlx::query(sql(stmt)), binds)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("requeueing dead letters", e))?;
        Ok(done.rows_affected())
    }

    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let (cond, binds) = dead_filter(filter);
        let stmt = format!("DELETE FROM {} WHERE {cond}", self.quoted);
        let done = bind_filter(sqlx::query(sql(stmt)), binds)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("purging dead letters", e))?;
        Ok(done.rows_affected())
    }
}
