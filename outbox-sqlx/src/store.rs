//! [`SqlxStore`], the relay's store on sqlx, and [`SqlxOutbox`], enqueue into a configured
//! table: each written once for the three databases. What differs between them is a
//! [`Backend`]: how an event id and a time are stored, the claim, the fenced marks and the
//! insert. Decoding, retention, backlog figures, dead-letter administration and migration
//! are here, over the statement text of `outbox_sql`.
//!
//! Use the aliases: [`PgStore`](crate::postgres::PgStore),
//! [`MySqlStore`](crate::mysql::MySqlStore), [`SqliteStore`](crate::sqlite::SqliteStore)
//! and their `…Outbox` counterparts.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::store::{
    BacklogStats, Claim, DeadLetter, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Lease,
    Retention, Retry, Store, StoreStats,
};
use outbox_core::{Dialect, Envelope, EventId, Result, TableName, ValidationLimits};
use outbox_sql::{AdminStatements, Bound, ClaimCursor, Quote, Value};
use sqlx::error::BoxDynError;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::common::{RawRow, Sql, limit_i64, sql};
use crate::error::map_sqlx;

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// One of the databases [`SqlxStore`] runs on; implemented by
/// [`PgBackend`](crate::postgres::PgBackend), [`MySqlBackend`](crate::mysql::MySqlBackend)
/// and [`SqliteBackend`](crate::sqlite::SqliteBackend) only.
pub trait Backend: sealed::Sealed + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The sqlx driver.
    type Db: Database<Arguments: IntoArguments<Self::Db>>;
    /// How an event id is stored: `uuid` on PostgreSQL, its text elsewhere.
    type Id: StoredId + Column<Self::Db>;
    /// How a time is stored: a time type, or Unix microseconds on SQLite.
    type Time: StoredTime + Column<Self::Db>;
    /// The backend's own statements (claim, marks), built once per store.
    type Statements: Send + Sync + 'static;
    /// The SQL dialect.
    const DIALECT: Dialect;
    /// The store's name in `Debug` output.
    const STORE: &'static str;

    /// Rows a statement changed.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;
    /// The statements for the quoted table `quoted` (index names derive from `table`).
    fn statements(table: &TableName, quoted: &str) -> Self::Statements;

    /// Claims up to `limit` rows for `lease_for` (see [`Store::claim`]).
    fn claim(
        store: &SqlxStore<Self>,
        limit: usize,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Claim>> + Send;
    /// Applies a fenced update to rows `lease` holds; `mark` is never empty.
    fn mark(
        store: &SqlxStore<Self>,
        lease: &Lease,
        mark: Mark<'_>,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// The insert statement (for one event) into the quoted table `quoted`.
    fn insert_sql(quoted: &str) -> String;
    /// Writes `envelopes` through `conn`, the caller's transaction.
    fn insert(
        conn: &mut <Self::Db as Database>::Connection,
        outbox: &SqlxOutbox<Self>,
        envelopes: &[Envelope],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A value the database `DB` stores in a column: it binds, reads back, and has a type.
pub trait Column<DB: Database>:
    for<'e> Encode<'e, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + 'static
{
}

impl<DB: Database, T> Column<DB> for T where
    T: for<'e> Encode<'e, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + 'static
{
}

/// How an event id is stored.
pub trait StoredId: Sized {
    /// The id as stored.
    fn store(id: EventId) -> Self;
    /// The id read back; an error says why it is not one.
    fn read(self) -> std::result::Result<EventId, BoxDynError>;
}

impl StoredId for uuid::Uuid {
    fn store(id: EventId) -> Self {
        id.as_uuid()
    }
    fn read(self) -> std::result::Result<EventId, BoxDynError> {
        Ok(EventId::from_uuid(self))
    }
}

impl StoredId for String {
    fn store(id: EventId) -> Self {
        id.to_string()
    }
    fn read(self) -> std::result::Result<EventId, BoxDynError> {
        Ok(self.parse::<EventId>()?)
    }
}

/// How a point in time is stored.
pub trait StoredTime: Sized {
    /// The time as stored.
    fn store(t: DateTime<Utc>) -> Self;
    /// The time read back, `None` when out of range.
    fn read(self) -> Option<DateTime<Utc>>;
}

impl StoredTime for DateTime<Utc> {
    fn store(t: DateTime<Utc>) -> Self {
        t
    }
    fn read(self) -> Option<DateTime<Utc>> {
        Some(self)
    }
}

/// Unix microseconds.
impl StoredTime for i64 {
    fn store(t: DateTime<Utc>) -> Self {
        t.timestamp_micros()
    }
    fn read(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self)
    }
}

/// A fenced update of rows a lease holds: it changes only rows still held by that lease.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Mark<'a> {
    /// Published.
    Published(&'a [EventId]),
    /// Back to pending after a delay, with the error.
    Retry(&'a [Retry]),
    /// Dead-lettered with the error.
    Dead(&'a [DeadLetter]),
    /// Back to pending without an attempt.
    Release(&'a [EventId]),
}

impl Mark<'_> {
    fn len(&self) -> usize {
        match self {
            Mark::Published(ids) | Mark::Release(ids) => ids.len(),
            Mark::Retry(r) => r.len(),
            Mark::Dead(d) => d.len(),
        }
    }

    /// The ids of the rows to update.
    pub fn ids(&self) -> Vec<EventId> {
        match self {
            Mark::Published(ids) | Mark::Release(ids) => ids.to_vec(),
            Mark::Retry(r) => r.iter().map(|r| r.id).collect(),
            Mark::Dead(d) => d.iter().map(|d| d.id).collect(),
        }
    }

    /// What the update does, for error messages.
    pub fn what(&self) -> &'static str {
        match self {
            Mark::Published(_) => "marking rows published",
            Mark::Retry(_) => "scheduling retries",
            Mark::Dead(_) => "dead-lettering rows",
            Mark::Release(_) => "releasing rows",
        }
    }
}

/// The relay's store over one outbox table on sqlx. Cheap to clone.
pub struct SqlxStore<B: Backend> {
    pub(crate) pool: Pool<B::Db>,
    table: TableName,
    pub(crate) quoted: Arc<str>,
    pub(crate) limits: ValidationLimits,
    pub(crate) stmts: Arc<B::Statements>,
    admin: Arc<AdminStatements>,
    pub(crate) cursor: Arc<ClaimCursor>,
}

impl<B: Backend> Clone for SqlxStore<B> {
    fn clone(&self) -> Self {
        SqlxStore {
            pool: self.pool.clone(),
            table: self.table.clone(),
            quoted: Arc::clone(&self.quoted),
            limits: self.limits.clone(),
            stmts: Arc::clone(&self.stmts),
            admin: Arc::clone(&self.admin),
            cursor: Arc::clone(&self.cursor),
        }
    }
}

impl<B: Backend> std::fmt::Debug for SqlxStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's options hold the password: show only the table.
        f.debug_struct(B::STORE)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> SqlxStore<B> {
    /// A store over `table` (which [`SqlxStore::migrate`] or the module's `migrate`
    /// created) through `pool`.
    pub fn new(pool: Pool<B::Db>, table: TableName) -> Self {
        let quoted = table.quoted(B::DIALECT);
        SqlxStore {
            pool,
            stmts: Arc::new(B::statements(&table, &quoted)),
            admin: Arc::new(AdminStatements::new(&table, B::DIALECT)),
            quoted: quoted.into(),
            table,
            limits: ValidationLimits::default(),
            cursor: Arc::default(),
        }
    }

    /// Validates rows read back against these limits (default: core's defaults).
    pub fn with_limits(mut self, limits: ValidationLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<B::Db> {
        &self.pool
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }
}

/// `impl<B: Backend> … SqlxStore<B>` with what the generic code asks of the sqlx driver,
/// written once: a connection runs statements, rows are read by column name or position,
/// and text and integers encode and decode.
macro_rules! over_any_driver {
    ($($trait:path)? => { $($body:tt)* }) => {
        impl<B: Backend> $($trait for)? SqlxStore<B>
        where
            for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
            for<'n> &'n str: ColumnIndex<<B::Db as Database>::Row>,
            usize: ColumnIndex<<B::Db as Database>::Row>,
            String: for<'e> Encode<'e, B::Db> + for<'r> Decode<'r, B::Db> + Type<B::Db>,
            i64: for<'e> Encode<'e, B::Db> + for<'r> Decode<'r, B::Db> + Type<B::Db>,
            i32: for<'r> Decode<'r, B::Db> + Type<B::Db>,
            Vec<u8>: for<'r> Decode<'r, B::Db> + Type<B::Db>,
        {
            $($body)*
        }
    };
}

over_any_driver!(=> {
    /// Creates the schema or database (if the table names one) and the outbox table with
    /// its indexes, idempotently.
    pub async fn migrate(&self) -> Result<()> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| map_sqlx("acquiring a connection to migrate", e))?;
        for stmt in outbox_sql::create_table_sql(&self.table, B::DIALECT) {
            (&mut *conn)
                .execute(sql(stmt))
                .await
                .map_err(|e| map_sqlx("creating the outbox table", e))?;
        }
        Ok(())
    }

    /// A stored row, as any statement returning [`outbox_sql::SELECT_COLUMNS`] reads it.
    /// When `e` is [`decode`](Self::decode)'s error for a row whose `id` is no event id
    /// (another tool wrote it): why, for the row's dead letter. The claim dead-letters such
    /// a row by its `seq` instead of failing, so one bad row cannot stop the relay.
    pub(crate) fn unreadable_id(e: &sqlx::Error) -> Option<String> {
        match e {
            sqlx::Error::ColumnDecode { index, source } if index == "id" => {
                Some(format!("the row's id cannot be read: {source}"))
            }
            _ => None,
        }
    }

    pub(crate) fn decode(row: &<B::Db as Database>::Row) -> std::result::Result<RawRow, sqlx::Error> {
        let time = |column: &str| -> std::result::Result<DateTime<Utc>, sqlx::Error> {
            let stored: B::Time = row.try_get(column)?;
            stored.read().ok_or_else(|| sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: "not a time the store can represent".into(),
            })
        };
        let id: B::Id = row.try_get("id")?;
        Ok(RawRow {
            seq: row.try_get("seq")?,
            id: id.read().map_err(|source| sqlx::Error::ColumnDecode {
                index: "id".to_owned(),
                source,
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
            created_at: time("created_at")?,
            available_at: time("available_at")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
        })
    }

    /// `bound`'s text with its values bound.
    fn query(bound: Bound) -> sqlx::query::Query<'static, B::Db, <B::Db as Database>::Arguments> {
        Self::bind(sqlx::query(sql(bound.text)), bound.values)
    }

    /// Binds `values`, in order, the way this store encodes ids and times.
    fn bind(
        mut q: sqlx::query::Query<'static, B::Db, <B::Db as Database>::Arguments>,
        values: Vec<Value>,
    ) -> sqlx::query::Query<'static, B::Db, <B::Db as Database>::Arguments> {
        for v in values {
            q = match v {
                Value::Text(t) => q.bind(t),
                Value::Int(i) => q.bind(i),
                Value::Time(t) => q.bind(B::Time::store(t)),
                Value::Id(id) => q.bind(B::Id::store(id)),
            };
        }
        q
    }

    /// Runs the statement `text` once for each row of values (bound in order), all in one
    /// transaction; returns the rows changed in all. The fenced marks of the stores whose
    /// driver has no array binds (MySQL/MariaDB, SQLite) go through here.
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) async fn per_row(&self, text: &Sql, rows: Vec<Vec<Value>>, what: &str) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(|e| map_sqlx(what, e))?;
        let mut changed = 0;
        for values in rows {
            let done = Self::bind(sqlx::query(sql(Arc::clone(text))), values)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(what, e))?;
            changed += B::rows_affected(&done);
        }
        tx.commit().await.map_err(|e| map_sqlx(what, e))?;
        Ok(changed)
    }

    /// Runs `bound`, returning the rows it changed.
    async fn execute(&self, bound: Bound, what: &str) -> Result<u64> {
        let done = Self::query(bound)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(what, e))?;
        Ok(B::rows_affected(&done))
    }
});

impl<B: Backend> Store for SqlxStore<B> {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        B::claim(self, limit, lease_for).await
    }

    async fn mark_published(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        self.mark(lease, Mark::Published(ids)).await
    }

    async fn schedule_retry(&self, lease: &Lease, retries: &[Retry]) -> Result<u64> {
        self.mark(lease, Mark::Retry(retries)).await
    }

    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        self.mark(lease, Mark::Dead(dead)).await
    }

    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        self.mark(lease, Mark::Release(ids)).await
    }
}

impl<B: Backend> SqlxStore<B> {
    async fn mark(&self, lease: &Lease, mark: Mark<'_>) -> Result<u64> {
        if mark.len() == 0 {
            return Ok(0);
        }
        B::mark(self, lease, mark).await
    }
}

over_any_driver!(Retention => {
    async fn purge_published(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let bound = self.admin.purge_published(before, limit_i64(limit));
        self.execute(bound, "purging published rows").await
    }
});

over_any_driver!(StoreStats => {
    async fn stats(&self) -> Result<BacklogStats> {
        const WHAT: &str = "reading backlog figures";
        let row = Self::query(self.admin.stats())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let count = |i: usize| -> Result<u64> {
            let v: i64 = row.try_get(i).map_err(|e| map_sqlx(WHAT, e))?;
            Ok(u64::try_from(v).unwrap_or(0))
        };
        let oldest: Option<B::Time> = row.try_get(3).map_err(|e| map_sqlx(WHAT, e))?;
        Ok(BacklogStats {
            pending: count(0)?,
            in_flight: count(1)?,
            dead: count(2)?,
            oldest_unpublished: oldest.and_then(StoredTime::read),
            published_last_minute: count(4)?,
        })
    }
});

over_any_driver!(DeadLetterAdmin => {
    async fn list_dead(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        const WHAT: &str = "listing dead letters";
        let rows = Self::query(self.admin.list_dead(filter, limit_i64(limit)))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let dead_at: Option<B::Time> = row
                .try_get("processed_at")
                .map_err(|e| map_sqlx("decoding dead letter", e))?;
            let raw = Self::decode(row).map_err(|e| map_sqlx("decoding dead letter", e))?;
            out.push(raw.into_dead_record(dead_at.and_then(StoredTime::read), &self.limits));
        }
        Ok(out)
    }

    async fn requeue_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.execute(self.admin.requeue_dead(filter), "requeueing dead letters")
            .await
    }

    async fn purge_dead(&self, filter: &DeadLetterFilter) -> Result<u64> {
        self.execute(self.admin.purge_dead(filter), "purging dead letters")
            .await
    }
});

/// Enqueues into a configured table, inside the caller's transaction. Cheap to clone;
/// build once.
#[derive(Debug)]
pub struct SqlxOutbox<B: Backend> {
    table: TableName,
    pub(crate) quoted: Arc<str>,
    pub(crate) insert: Sql,
    backend: PhantomData<B>,
}

impl<B: Backend> Clone for SqlxOutbox<B> {
    fn clone(&self) -> Self {
        SqlxOutbox {
            table: self.table.clone(),
            quoted: Arc::clone(&self.quoted),
            insert: Arc::clone(&self.insert),
            backend: PhantomData,
        }
    }
}

impl<B: Backend> Default for SqlxOutbox<B> {
    fn default() -> Self {
        SqlxOutbox::new(TableName::default())
    }
}

impl<B: Backend> SqlxOutbox<B> {
    /// Enqueues into `table`.
    pub fn new(table: TableName) -> Self {
        let quoted = table.quoted(B::DIALECT);
        SqlxOutbox {
            insert: B::insert_sql(&quoted).into(),
            quoted: quoted.into(),
            table,
            backend: PhantomData,
        }
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Writes one event through `conn`, normally the caller's open transaction (`&mut
    /// tx`). The row becomes visible when that transaction commits.
    pub async fn enqueue(
        &self,
        conn: &mut <B::Db as Database>::Connection,
        envelope: &Envelope,
    ) -> Result<()> {
        B::insert(conn, self, std::slice::from_ref(envelope)).await
    }

    /// Writes events through `conn` (the caller's transaction), in as few statements as
    /// the database allows.
    pub async fn enqueue_all(
        &self,
        conn: &mut <B::Db as Database>::Connection,
        envelopes: &[Envelope],
    ) -> Result<()> {
        if envelopes.is_empty() {
            return Ok(());
        }
        B::insert(conn, self, envelopes).await
    }
}

/// A backend module's `migrate`, `enqueue` and `enqueue_all` on its own pool and
/// connection types, for callers that name the database rather than the backend.
macro_rules! module_fns {
    ($store:ty, $outbox:ty, $pool:ty, $conn:ty) => {
        /// Creates the outbox table with its indexes (and the schema or database its name
        /// gives), idempotently.
        pub async fn migrate(
            pool: &$pool,
            table: &outbox_core::TableName,
        ) -> outbox_core::Result<()> {
            <$store>::new(pool.clone(), table.clone()).migrate().await
        }

        /// Writes `envelope` to the default table through `conn`, normally the caller's
        /// open transaction (`&mut tx`). The row becomes visible when that transaction
        /// commits.
        pub async fn enqueue(
            conn: &mut $conn,
            envelope: &outbox_core::Envelope,
        ) -> outbox_core::Result<()> {
            <$outbox>::default().enqueue(conn, envelope).await
        }

        /// Writes `envelopes` to the default table through `conn` (the caller's
        /// transaction).
        pub async fn enqueue_all(
            conn: &mut $conn,
            envelopes: &[outbox_core::Envelope],
        ) -> outbox_core::Result<()> {
            <$outbox>::default().enqueue_all(conn, envelopes).await
        }
    };
}
pub(crate) use module_fns;
