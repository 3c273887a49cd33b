//! SQLite, the embedded default: enqueue in the caller's transaction, and [`SqliteStore`].
//!
//! Times are integer microseconds since the Unix epoch (SQLite has no time type). A claim is
//! one `BEGIN IMMEDIATE` transaction, so it holds SQLite's write lock from its first read
//! and any number of tasks and processes can claim concurrently; open the pool with
//! [`connect`] (WAL journal, a busy timeout) so writers wait instead of failing. Inside it
//! the claim walks the ordering keys round robin (`outbox_sql::walk_keys`), one probe
//! of the key index per key, and leases each claimable key's run with one
//! `UPDATE ... RETURNING`, so its cost is bounded by the batch, not by the backlog.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::schema::Dialect;
use outbox_core::store::{
    BacklogStats, Claim, DeadLetter, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Lease,
    Retention, Retry, Store, StoreStats,
};
use outbox_core::{Envelope, Error, ErrorKind, EventId, Result, TableName, ValidationLimits};
use outbox_sql::Quote;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow,
};
use sqlx::{Executor, Row};

use crate::common::{
    FilterBind, INSERT_COLUMNS, NextKeySql, RawRow, SELECT_COLUMNS, Sql, dead_filter, limit_i64,
    markers, micros, sql,
};
use crate::error::map_sqlx;
use outbox_sql::{ClaimCursor, KeyWalk, walk_keys};

/// Opens a pool on `url` (e.g. `sqlite://outbox.db?mode=rwc`) with WAL journaling and a
/// 10 s busy timeout, the settings the store expects.
pub async fn connect(url: &str) -> Result<SqlitePool> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, "invalid SQLite URL").with_source(e))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .map_err(|e| map_sqlx("opening the SQLite database", e))
}

/// Creates the outbox table and its indexes, idempotently.
pub async fn migrate(pool: &SqlitePool, table: &TableName) -> Result<()> {
    for stmt in outbox_sql::create_table_sql(table, Dialect::Sqlite) {
        pool.execute(sql(stmt))
            .await
            .map_err(|e| map_sqlx("creating the outbox table", e))?;
    }
    Ok(())
}

fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(column: &str, v: i64) -> std::result::Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("{v} is not a time in microseconds").into(),
    })
}

/// Writes `envelope` to the default table through `conn` (the caller's transaction).
pub async fn enqueue(conn: &mut SqliteConnection, envelope: &Envelope) -> Result<()> {
    SqliteOutbox::default().enqueue(conn, envelope).await
}

/// Writes `envelopes` to the default table through `conn` (the caller's transaction).
pub async fn enqueue_all(conn: &mut SqliteConnection, envelopes: &[Envelope]) -> Result<()> {
    SqliteOutbox::default().enqueue_all(conn, envelopes).await
}

/// Enqueues into a configured table. Cheap to clone; build once.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    table: TableName,
    insert: Sql,
}

impl Default for SqliteOutbox {
    fn default() -> Self {
        SqliteOutbox::new(TableName::default())
    }
}

impl SqliteOutbox {
    /// Enqueues into `table`.
    pub fn new(table: TableName) -> Self {
        let insert = format!(
            "INSERT INTO {} ({INSERT_COLUMNS}) VALUES ({})",
            table.quoted(Dialect::Sqlite),
            markers(13)
        )
        .into();
        SqliteOutbox { table, insert }
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Writes one event through `conn` (the caller's transaction).
    pub async fn enqueue(&self, conn: &mut SqliteConnection, envelope: &Envelope) -> Result<()> {
        self.enqueue_all(conn, std::slice::from_ref(envelope)).await
    }

    /// Writes events through `conn` (the caller's transaction), one prepared insert each.
    pub async fn enqueue_all(
        &self,
        conn: &mut SqliteConnection,
        envelopes: &[Envelope],
    ) -> Result<()> {
        for e in envelopes {
            sqlx::query(sql(Arc::clone(&self.insert)))
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
                .bind(to_micros(e.created_at()))
                .bind(to_micros(e.available_at()))
                .execute(&mut *conn)
                .await
                .map_err(|e| map_sqlx("enqueueing an outbox event", e))?;
        }
        Ok(())
    }
}

fn decode(row: &SqliteRow) -> std::result::Result<RawRow, sqlx::Error> {
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
        created_at: from_micros("created_at", row.try_get("created_at")?)?,
        available_at: from_micros("available_at", row.try_get("available_at")?)?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
    })
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    table: TableName,
    quoted: Arc<str>,
    limits: ValidationLimits,
    walk: Arc<WalkSql>,
    cursor: Arc<ClaimCursor>,
    marks: Arc<Marks>,
}

/// The statements of a claim's key walk.
struct WalkSql {
    /// The next key and whether its head is claimable: `?1` after it, `?2` at most, `?3`
    /// now (each form names only the bounds it has).
    next: NextKeySql,
    /// Leases a key's run: `?1` token, `?2` lease end, `?3` now, `?4` key, `?5` most rows.
    run: Sql,
}

impl WalkSql {
    fn new(t: &str) -> Self {
        let next = |bound: &str| {
            format!(
                "SELECT ordering_key, (available_at <= ?3 AND (status = 0 OR lease_until <= ?3)) \
                 FROM {t} WHERE status < 2 AND {bound} ORDER BY ordering_key, seq LIMIT 1"
            )
        };
        WalkSql {
            next: NextKeySql::new(
                next,
                [
                    "ordering_key > ?1",
                    "ordering_key > ?1 AND ordering_key <= ?2",
                    "ordering_key <= ?2",
                ],
            ),
            // The key's first `?5` unfinished rows, up to the first that is not claimable
            // (`min(ok)` over the rows so far); nothing if the head itself is not.
            run: format!(
                "UPDATE {t} SET status = 1, lease_token = ?1, lease_until = ?2 WHERE seq IN ( \
                   SELECT seq FROM (SELECT seq, min(ok) OVER (ORDER BY seq) AS run FROM ( \
                     SELECT seq, (available_at <= ?3 AND (status = 0 OR lease_until <= ?3)) AS ok \
                     FROM {t} WHERE ordering_key = ?4 AND status < 2 ORDER BY seq LIMIT ?5)) \
                   WHERE run = 1) \
                 RETURNING {SELECT_COLUMNS}"
            )
            .into(),
        }
    }
}

/// One claim's walk, inside its `BEGIN IMMEDIATE` transaction.
struct SqliteWalk<'a, 'c> {
    tx: &'a mut sqlx::Transaction<'c, sqlx::Sqlite>,
    sql: &'a WalkSql,
    token: i64,
    until: i64,
    now: i64,
}

impl KeyWalk for SqliteWalk<'_, '_> {
    async fn next_key(
        &mut self,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> Result<Option<(String, bool)>> {
        // Each statement names the numbered binds it uses; the others are ignored.
        let stmt = self.sql.next.pick(after, upto);
        sqlx::query_as::<_, (String, bool)>(sql(Arc::clone(stmt)))
            .bind(after.unwrap_or(""))
            .bind(upto.unwrap_or(""))
            .bind(self.now)
            .fetch_optional(&mut **self.tx)
            .await
            .map_err(|e| map_sqlx("claiming outbox rows: finding the next key", e))
    }

    async fn take_run(&mut self, key: &str, max: usize) -> Result<Vec<RawRow>> {
        let rows = sqlx::query(sql(Arc::clone(&self.sql.run)))
            .bind(self.token)
            .bind(self.until)
            .bind(self.now)
            .bind(key)
            .bind(limit_i64(max))
            .fetch_all(&mut **self.tx)
            .await
            .map_err(|e| map_sqlx("claiming outbox rows: leasing a key's run", e))?;
        rows.iter()
            .map(decode)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| map_sqlx("decoding claimed rows", e))
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

const HELD: &str = "status = 1 AND lease_token = ? AND lease_until > ?";

/// The fenced per-row updates, built once per store.
struct Marks {
    published: Sql,
    retry: Sql,
    dead: Sql,
    release: Sql,
}

impl Marks {
    fn new(quoted: &str) -> Self {
        let stmt = |set: &str| -> Sql {
            format!("UPDATE {quoted} SET {set}, lease_token = NULL, lease_until = NULL WHERE id = ? AND {HELD}").into()
        };
        Marks {
            published: stmt("status = 2, processed_at = ?"),
            retry: stmt("status = 0, attempts = attempts + 1, last_error = ?, available_at = ?"),
            dead: stmt("status = 3, attempts = attempts + 1, last_error = ?, processed_at = ?"),
            release: stmt("status = 0"),
        }
    }
}

impl SqliteStore {
    /// A store over `table` (which [`migrate`] created) through `pool` (see [`connect`]).
    pub fn new(pool: SqlitePool, table: TableName) -> Self {
        let t = table.quoted(Dialect::Sqlite);
        let marks = Arc::new(Marks::new(&t));
        let walk = Arc::new(WalkSql::new(&t));
        SqliteStore {
            pool,
            quoted: t.into(),
            table,
            limits: ValidationLimits::default(),
            walk,
            cursor: Arc::default(),
            marks,
        }
    }

    /// Validates rows read back against these limits.
    pub fn with_limits(mut self, limits: ValidationLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Runs the fenced update `stmt` (after the row's own binds) on each held row, in one
    /// transaction.
    async fn per_row<'a>(
        &self,
        lease: &Lease,
        rows: impl Iterator<Item = (EventId, Vec<Bind<'a>>)>,
        stmt: &Sql,
        what: &str,
    ) -> Result<u64> {
        let now = to_micros(Utc::now());
        let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(what, e))?;
        let mut changed = 0;
        for (id, binds) in rows {
            let mut q = sqlx::query(sql(Arc::clone(stmt)));
            for b in binds {
                q = match b {
                    Bind::Int(v) => q.bind(v),
                    Bind::Text(v) => q.bind(v),
                };
            }
            let done = q
                .bind(id.to_string())
                .bind(lease.token.as_i64())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(what, e))?;
            changed += done.rows_affected();
        }
        tx.commit().await.map_err(|e| map_sqlx(what, e))?;
        Ok(changed)
    }
}

enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

impl Store for SqliteStore {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        let now = Utc::now();
        let lease = outbox_sql::new_lease(lease_for);
        let (token, until) = (lease.token, lease.until);
        const WHAT: &str = "claiming outbox rows";
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let start = self.cursor.start();
        let mut walk = SqliteWalk {
            tx: &mut tx,
            sql: &self.walk,
            token: token.as_i64(),
            until: to_micros(until),
            now: to_micros(now),
        };
        let (raw, walked_to) = walk_keys(&mut walk, &start, limit).await?;
        tx.commit().await.map_err(|e| map_sqlx(WHAT, e))?;
        Ok(self
            .cursor
            .finish(&start, lease, raw, walked_to.as_deref(), &self.limits))
    }

    async fn mark_published(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        let now = to_micros(Utc::now());
        let rows = ids.iter().map(|id| (*id, vec![Bind::Int(now)]));
        self.per_row(lease, rows, &self.marks.published, "marking rows published")
            .await
    }

    async fn schedule_retry(&self, lease: &Lease, retries: &[Retry]) -> Result<u64> {
        let now = to_micros(Utc::now());
        let rows = retries.iter().map(|r| {
            (
                r.id,
                vec![
                    Bind::Text(r.error.as_str()),
                    Bind::Int(now.saturating_add(micros(r.delay))),
                ],
            )
        });
        self.per_row(lease, rows, &self.marks.retry, "scheduling retries")
            .await
    }

    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        let now = to_micros(Utc::now());
        let rows = dead
            .iter()
            .map(|d| (d.id, vec![Bind::Text(d.error.as_str()), Bind::Int(now)]));
        self.per_row(lease, rows, &self.marks.dead, "dead-lettering rows")
            .await
    }

    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        let rows = ids.iter().map(|id| (*id, Vec::new()));
        self.per_row(lease, rows, &self.marks.release, "releasing rows")
            .await
    }
}

impl Retention for SqliteStore {
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let stmt = format!(
            "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE status = 2 AND processed_at < ? ORDER BY processed_at LIMIT ?)",
            t = self.quoted
        );
        let done = sqlx::query(sql(stmt))
            .bind(to_micros(before))
            .bind(limit_i64(limit))
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("purging published rows", e))?;
        Ok(done.rows_affected())
    }
}

impl StoreStats for SqliteStore {
    async fn stats(&self) -> Result<BacklogStats> {
        let now = to_micros(Utc::now());
        let stmt = format!(
            "SELECT coalesce(sum(status = 0 OR (status = 1 AND lease_until <= ?1)), 0), \
                    coalesce(sum(status = 1 AND lease_until > ?1), 0), \
                    coalesce(sum(status = 3), 0), \
                    min(CASE WHEN status IN (0, 1) THEN created_at END), \
                    (SELECT count(*) FROM {t} WHERE status = 2 AND processed_at > ?1 - 60000000) \
             FROM {t} WHERE status IN (0, 1, 3)",
            t = self.quoted
        );
        let row = sqlx::query(sql(stmt))
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx("reading backlog figures", e))?;
        let get = |i: usize| -> Result<i64> {
            row.try_get(i)
                .map_err(|e| map_sqlx("decoding backlog figures", e))
        };
        let oldest: Option<i64> = row
            .try_get(3)
            .map_err(|e| map_sqlx("decoding backlog figures", e))?;
        Ok(BacklogStats {
            pending: u64::try_from(get(0)?).unwrap_or(0),
            in_flight: u64::try_from(get(1)?).unwrap_or(0),
            dead: u64::try_from(get(2)?).unwrap_or(0),
            oldest_unpublished: oldest.and_then(DateTime::from_timestamp_micros),
            published_last_minute: u64::try_from(get(4)?).unwrap_or(0),
        })
    }
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    binds: Vec<FilterBind>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for b in binds {
        q = match b {
            FilterBind::Time(v) => q.bind(to_micros(v)),
            FilterBind::Text(v) => q.bind(v),
        };
    }
    q
}

impl DeadLetterAdmin for SqliteStore {
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
        let rows = bind_all(sqlx::query(sql(stmt)), binds)
            .bind(limit_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx("listing dead letters", e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let dead_at: Option<i64> = row
                .try_get("processed_at")
                .map_err(|e| map_sqlx("decoding dead letter", e))?;
            let raw = decode(row).map_err(|e| map_sqlx("decoding dead letter", e))?;
            let dead_at = dead_at.and_then(DateTime::from_timestamp_micros);
            out.push(raw.into_dead_record(dead_at, &self.limits));
        }
        Ok(out)
    }

    async fn requeue_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let (cond, binds) = dead_filter(filter);
        let stmt = format!(
            "UPDATE {} SET status = 0, attempts = 0, available_at = ?, processed_at = NULL WHERE {cond}",
            self.quoted
        );
        let q = sqlx::query(sql(stmt)).bind(to_micros(Utc::now()));
        let done = bind_all(q, binds)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("requeueing dead letters", e))?;
        Ok(done.rows_affected())
    }

    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let (cond, binds) = dead_filter(filter);
        let stmt = format!("DELETE FROM {} WHERE {cond}", self.quoted);
        let done = bind_all(sqlx::query(sql(stmt)), binds)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx("purging dead letters", e))?;
        Ok(done.rows_affected())
    }
}
