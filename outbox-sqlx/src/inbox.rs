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

use outbox_core::inbox::{InboxOutcome, PurgeBatches};
use outbox_core::schema::Dialect;
use outbox_core::{EventId, Result};
use outbox_sql::InboxStatements;

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
    /// Implemented by `inbox_connection!` for each supported connection.
    pub trait Sealed {}
}

#[cfg(feature = "sqlite")]
fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Implements [`InboxConnection`] for one connection type: how it binds the event id, what
/// else the record statement takes, and the purge statement's first value.
macro_rules! inbox_connection {
    (
        $feature:literal, $conn:ty, $dialect:expr,
        id: |$id:ident| $id_value:expr,
        record_extra: [$($extra:expr),*],
        purge_first: |$age:ident| $first:expr
    ) => {
        #[cfg(feature = $feature)]
        impl private::Sealed for $conn {}

        #[cfg(feature = $feature)]
        impl InboxConnection for $conn {
            fn dialect() -> Dialect {
                $dialect
            }
            async fn insert_record(
                &mut self,
                stmt: &str,
                consumer: &str,
                $id: EventId,
            ) -> std::result::Result<u64, sqlx::Error> {
                let q = sqlx::query(sql(stmt)).bind(consumer).bind($id_value);
                $(let q = q.bind($extra);)*
                Ok(q.execute(self).await?.rows_affected())
            }
            async fn exists(
                &mut self,
                stmt: &str,
                consumer: &str,
                $id: EventId,
            ) -> std::result::Result<bool, sqlx::Error> {
                let r = sqlx::query(sql(stmt))
                    .bind(consumer)
                    .bind($id_value)
                    .fetch_optional(self)
                    .await?;
                Ok(r.is_some())
            }
            async fn purge_batch(
                &mut self,
                stmt: &str,
                $age: Duration,
                batch: usize,
            ) -> std::result::Result<u64, sqlx::Error> {
                let r = sqlx::query(sql(stmt))
                    .bind($first)
                    .bind(limit_i64(batch))
                    .execute(self)
                    .await?;
                Ok(r.rows_affected())
            }
            async fn run(&mut self, stmt: &str) -> std::result::Result<(), sqlx::Error> {
                sqlx::query(sql(stmt)).execute(self).await.map(|_| ())
            }
        }
    };
}

inbox_connection!(
    "postgres", sqlx::PgConnection, Dialect::Postgres,
    id: |id| id.as_uuid(),
    record_extra: [],
    purge_first: |age| micros(age)
);
inbox_connection!(
    "mysql", sqlx::MySqlConnection, Dialect::MySql,
    id: |id| outbox_sql::event_id_text(id),
    record_extra: [],
    purge_first: |age| micros(age)
);
inbox_connection!(
    "sqlite", sqlx::SqliteConnection, Dialect::Sqlite,
    id: |id| outbox_sql::event_id_text(id),
    record_extra: [now_micros()],
    purge_first: |age| now_micros().saturating_sub(micros(age))
);

outbox_sql::inbox_type!();

impl Inbox {
    fn statements<C: InboxConnection>(&self) -> &InboxStatements {
        self.spec.statements(C::dialect())
    }

    /// Creates the inbox table and its index, idempotently.
    pub async fn migrate<C: InboxConnection>(&self, conn: &mut C) -> Result<()> {
        for stmt in self.spec.create_table_sql(C::dialect()) {
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
            .insert_record(&self.statements::<C>().record, self.spec.consumer(), id)
            .await
            .map_err(|e| map_sqlx("recording the event in the inbox", e))?;
        Ok(InboxOutcome::from_rows_affected(rows))
    }

    /// Whether `id` was processed (and committed) by this consumer.
    pub async fn seen<C: InboxConnection>(&self, conn: &mut C, id: EventId) -> Result<bool> {
        conn.exists(&self.statements::<C>().seen, self.spec.consumer(), id)
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
        let mut purge = PurgeBatches::new(batch);
        loop {
            let n = conn.purge_batch(stmt, older_than, purge.size()).await;
            if let Some(total) = purge.add(n.map_err(|e| map_sqlx("purging the inbox", e))?) {
                return Ok(total);
            }
        }
    }
}
