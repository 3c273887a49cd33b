//! The consumer-side inbox: record an event id inside the transaction that applies its
//! effect, and learn whether it was processed before.
//!
//! ```no_run
//! # async fn f(pool: sqlx::PgPool, event_id: outbox_core::EventId) -> outbox_core::Result<()> {
//! use outbox_sqlx::inbox::Inbox;
//!
//! let inbox = Inbox::new("shipping")?;
//! let mut tx = pool.begin().await.map_err(|e| outbox_sqlx::map_sqlx("begin", e))?;
//! if inbox.record(&mut *tx, event_id).await?.is_new() {
//!     // apply the business change with `&mut *tx`
//! }
//! tx.commit().await.map_err(|e| outbox_sqlx::map_sqlx("commit", e))?;
//! // now acknowledge the message to the broker
//! # Ok(()) }
//! ```
//!
//! See [`outbox_core::inbox`] for the semantics (concurrent deliveries, rollbacks).

use std::time::Duration;

use outbox_core::inbox::{
    InboxOutcome, InboxStatements, create_inbox_table_sql, default_inbox_table, event_id_text,
    validate_consumer,
};
use outbox_core::schema::Dialect;
use outbox_core::{EventId, Result, TableName};

use crate::common::{limit_i64, micros, sql};
use crate::error::map_sqlx;

/// A connection the inbox can work on: `PgConnection`, `MySqlConnection`,
/// `SqliteConnection` (pass `&mut *tx` for a transaction). Sealed.
pub trait InboxConnection: private::Sealed + Send {
    #[doc(hidden)]
    fn dialect() -> Dialect;
    #[doc(hidden)]
    fn insert_record(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> impl std::future::Future<Output = std::result::Result<u64, sqlx::Error>> + Send;
    #[doc(hidden)]
    fn exists(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> impl std::future::Future<Output = std::result::Result<bool, sqlx::Error>> + Send;
    #[doc(hidden)]
    fn purge_batch(
        &mut self,
        stmt: &str,
        older_than: Duration,
        batch: usize,
    ) -> impl std::future::Future<Output = std::result::Result<u64, sqlx::Error>> + Send;
    #[doc(hidden)]
    fn run(
        &mut self,
        stmt: &str,
    ) -> impl std::future::Future<Output = std::result::Result<(), sqlx::Error>> + Send;
}

mod private {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::PgConnection {}
    #[cfg(feature = "mysql")]
    impl Sealed for sqlx::MySqlConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::SqliteConnection {}
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(feature = "postgres")]
impl InboxConnection for sqlx::PgConnection {
    fn dialect() -> Dialect {
        Dialect::Postgres
    }
    async fn insert_record(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> std::result::Result<u64, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(consumer)
            .bind(id.as_uuid())
            .execute(self)
            .await?;
        Ok(r.rows_affected())
    }
    async fn exists(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> std::result::Result<bool, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(consumer)
            .bind(id.as_uuid())
            .fetch_optional(self)
            .await?;
        Ok(r.is_some())
    }
    async fn purge_batch(
        &mut self,
        stmt: &str,
        older_than: Duration,
        batch: usize,
    ) -> std::result::Result<u64, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(micros(older_than))
            .bind(limit_i64(batch))
            .execute(self)
            .await?;
        Ok(r.rows_affected())
    }
    async fn run(&mut self, stmt: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(sql(stmt)).execute(self).await.map(|_| ())
    }
}

#[cfg(feature = "mysql")]
impl InboxConnection for sqlx::MySqlConnection {
    fn dialect() -> Dialect {
        Dialect::MySql
    }
    async fn insert_record(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> std::result::Result<u64, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(consumer)
            .bind(event_id_text(id))
            .execute(self)
            .await?;
        Ok(r.rows_affected())
    }
    async fn exists(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> std::result::Result<bool, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(consumer)
            .bind(event_id_text(id))
            .fetch_optional(self)
            .await?;
        Ok(r.is_some())
    }
    async fn purge_batch(
        &mut self,
        stmt: &str,
        older_than: Duration,
        batch: usize,
    ) -> std::result::Result<u64, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(micros(older_than))
            .bind(limit_i64(batch))
            .execute(self)
            .await?;
        Ok(r.rows_affected())
    }
    async fn run(&mut self, stmt: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(sql(stmt)).execute(self).await.map(|_| ())
    }
}

#[cfg(feature = "sqlite")]
impl InboxConnection for sqlx::SqliteConnection {
    fn dialect() -> Dialect {
        Dialect::Sqlite
    }
    async fn insert_record(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> std::result::Result<u64, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(consumer)
            .bind(event_id_text(id))
            .bind(now_micros())
            .execute(self)
            .await?;
        Ok(r.rows_affected())
    }
    async fn exists(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> std::result::Result<bool, sqlx::Error> {
        let r = sqlx::query(sql(stmt))
            .bind(consumer)
            .bind(event_id_text(id))
            .fetch_optional(self)
            .await?;
        Ok(r.is_some())
    }
    async fn purge_batch(
        &mut self,
        stmt: &str,
        older_than: Duration,
        batch: usize,
    ) -> std::result::Result<u64, sqlx::Error> {
        let cutoff = now_micros().saturating_sub(micros(older_than));
        let r = sqlx::query(sql(stmt))
            .bind(cutoff)
            .bind(limit_i64(batch))
            .execute(self)
            .await?;
        Ok(r.rows_affected())
    }
    async fn run(&mut self, stmt: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(sql(stmt)).execute(self).await.map(|_| ())
    }
}

/// One consumer's view of an inbox table. Cheap to clone; build it once.
#[derive(Clone, Debug)]
pub struct Inbox {
    consumer: String,
    table: TableName,
    postgres: InboxStatements,
    mysql: InboxStatements,
    sqlite: InboxStatements,
}

impl Inbox {
    /// The inbox of `consumer` (a stable name: the service or handler) in the default table
    /// `outbox_inbox`. The name is checked (1 to 190 bytes, no control characters).
    pub fn new(consumer: impl Into<String>) -> Result<Self> {
        Self::with_table(consumer, default_inbox_table())
    }

    /// The inbox of `consumer` in `table`.
    pub fn with_table(consumer: impl Into<String>, table: TableName) -> Result<Self> {
        let consumer = consumer.into();
        validate_consumer(&consumer)?;
        Ok(Inbox {
            postgres: InboxStatements::new(&table, Dialect::Postgres),
            mysql: InboxStatements::new(&table, Dialect::MySql),
            sqlite: InboxStatements::new(&table, Dialect::Sqlite),
            consumer,
            table,
        })
    }

    /// The consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    fn statements<C: InboxConnection>(&self) -> &InboxStatements {
        match C::dialect() {
            Dialect::Postgres => &self.postgres,
            Dialect::MySql => &self.mysql,
            Dialect::Sqlite => &self.sqlite,
        }
    }

    /// Creates the inbox table and its index, idempotently.
    pub async fn migrate<C: InboxConnection>(&self, conn: &mut C) -> Result<()> {
        for stmt in create_inbox_table_sql(&self.table, C::dialect()) {
            conn.run(&stmt)
                .await
                .map_err(|e| map_sqlx("creating the inbox table", e))?;
        }
        Ok(())
    }

    /// Records `id` for this consumer on `conn` (the consumer's open transaction) and says
    /// whether it is new. Apply the business change only when it is, on the same
    /// transaction, then commit. A concurrent delivery of the same id waits for this
    /// transaction to end.
    pub async fn record<C: InboxConnection>(
        &self,
        conn: &mut C,
        id: EventId,
    ) -> Result<InboxOutcome> {
        let rows = conn
            .insert_record(&self.statements::<C>().record, &self.consumer, id)
            .await
            .map_err(|e| map_sqlx("recording the event in the inbox", e))?;
        Ok(InboxOutcome::from_rows_affected(rows))
    }

    /// Whether `id` was processed (and committed) by this consumer.
    pub async fn seen<C: InboxConnection>(&self, conn: &mut C, id: EventId) -> Result<bool> {
        conn.exists(&self.statements::<C>().seen, &self.consumer, id)
            .await
            .map_err(|e| map_sqlx("reading the inbox", e))
    }

    /// Deletes records (of every consumer in the table) processed more than `older_than`
    /// ago, `batch` rows per statement so no statement holds locks for long. Returns how
    /// many were deleted. Keep records longer than the longest time a broker may redeliver
    /// (retention of the topic or queue, plus the relay's retry window).
    pub async fn purge<C: InboxConnection>(
        &self,
        conn: &mut C,
        older_than: Duration,
        batch: usize,
    ) -> Result<u64> {
        let stmt = &self.statements::<C>().purge;
        let batch = batch.max(1);
        let mut total = 0;
        loop {
            let n = conn
                .purge_batch(stmt, older_than, batch)
                .await
                .map_err(|e| map_sqlx("purging the inbox", e))?;
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
        }
    }
}
