//! The consumer-side inbox for diesel: record an event id inside the transaction that
//! applies its effect, and learn whether it was processed before.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # fn f(conn: &mut diesel::SqliteConnection, event_id: outbox_core::EventId) -> outbox_core::Result<()> {
//! use diesel::Connection;
//! use outbox_diesel::inbox::Inbox;
//!
//! let inbox = Inbox::new("shipping")?;
//! conn.transaction(|conn| {
//!     if inbox.record(conn, event_id)?.is_new() {
//!         // apply the business change with `conn`
//!     }
//!     diesel::QueryResult::Ok(())
//! })
//! .map_err(|e| outbox_diesel::map_diesel("processing the event", e))?;
//! // now acknowledge the message to the broker
//! # Ok(()) }
//! ```
//!
//! With diesel-async, [`Inbox::record_async`] inside `conn.transaction(async |conn| ..)`.
//! See [`outbox_core::inbox`] for the semantics.

#![cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "sqlite",
        feature = "async-postgres",
        feature = "async-mysql"
    )),
    allow(unused_imports, dead_code)
)]

use std::time::Duration;

use diesel::QueryResult;
use diesel::sql_types::{BigInt, Text};
use outbox_core::EventId;
use outbox_core::inbox::InboxOutcome;
use outbox_core::schema::Dialect;
use outbox_sql::InboxStatements;
#[cfg(any(feature = "mysql", feature = "sqlite", feature = "async-mysql"))]
use outbox_sql::event_id_text;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn batch_i64(batch: usize) -> i64 {
    i64::try_from(batch).unwrap_or(i64::MAX)
}

#[cfg(feature = "sqlite")]
fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

outbox_sql::inbox_type!();

impl Inbox {
    fn statements(&self, d: Dialect) -> &InboxStatements {
        self.spec.statements(d)
    }

    /// Creates the inbox table and its index, idempotently.
    pub fn migrate<C: InboxConnection>(&self, conn: &mut C) -> QueryResult<()> {
        for stmt in self.spec.create_table_sql(C::DIALECT) {
            conn.run(&stmt)?;
        }
        Ok(())
    }

    /// Records `id` for this consumer on `conn` (inside your `transaction`) and says whether
    /// it is new. Apply the business change only when it is, on the same connection.
    pub fn record<C: InboxConnection>(
        &self,
        conn: &mut C,
        id: EventId,
    ) -> QueryResult<InboxOutcome> {
        let rows = conn.insert_record(
            &self.statements(C::DIALECT).record,
            self.spec.consumer(),
            id,
        )?;
        Ok(InboxOutcome::from_rows_affected(rows as u64))
    }

    /// Deletes records processed more than `older_than` ago, `batch` rows per statement.
    /// Returns how many.
    pub fn purge<C: InboxConnection>(
        &self,
        conn: &mut C,
        older_than: Duration,
        batch: usize,
    ) -> QueryResult<u64> {
        let batch = batch.max(1);
        let mut total = 0u64;
        loop {
            let n = conn.purge_batch(&self.statements(C::DIALECT).purge, older_than, batch)?;
            total += n as u64;
            if n < batch {
                return Ok(total);
            }
        }
    }
}

/// A synchronous diesel connection the inbox can work on. Sealed.
pub trait InboxConnection: private::Sealed {
    #[doc(hidden)]
    const DIALECT: Dialect;
    #[doc(hidden)]
    fn insert_record(&mut self, stmt: &str, consumer: &str, id: EventId) -> QueryResult<usize>;
    #[doc(hidden)]
    fn purge_batch(&mut self, stmt: &str, older_than: Duration, batch: usize)
    -> QueryResult<usize>;
    #[doc(hidden)]
    fn run(&mut self, stmt: &str) -> QueryResult<()>;
}

mod private {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for diesel::PgConnection {}
    #[cfg(feature = "mysql")]
    impl Sealed for diesel::MysqlConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed for diesel::SqliteConnection {}
    #[cfg(feature = "async-postgres")]
    impl Sealed for diesel_async::AsyncPgConnection {}
    #[cfg(feature = "async-mysql")]
    impl Sealed for diesel_async::AsyncMysqlConnection {}
}

/// Implements [`InboxConnection`] for one synchronous connection type.
macro_rules! sync_inbox {
    ($feature:literal, $conn:ty, $dialect:expr, |$q:ident, $consumer:ident, $id:ident| $bind_record:expr, |$p:ident, $age:ident, $n:ident| $bind_purge:expr) => {
        #[cfg(feature = $feature)]
        impl InboxConnection for $conn {
            const DIALECT: Dialect = $dialect;
            fn insert_record(
                &mut self,
                stmt: &str,
                $consumer: &str,
                $id: EventId,
            ) -> QueryResult<usize> {
                use diesel::RunQueryDsl as _;
                let $q = diesel::sql_query(stmt);
                $bind_record.execute(self)
            }
            fn purge_batch(&mut self, stmt: &str, $age: Duration, $n: usize) -> QueryResult<usize> {
                use diesel::RunQueryDsl as _;
                let $p = diesel::sql_query(stmt);
                $bind_purge.execute(self)
            }
            fn run(&mut self, stmt: &str) -> QueryResult<()> {
                use diesel::RunQueryDsl as _;
                diesel::sql_query(stmt).execute(self).map(|_| ())
            }
        }
    };
}

sync_inbox!(
    "postgres",
    diesel::PgConnection,
    Dialect::Postgres,
    |q, consumer, id| q
        .bind::<Text, _>(consumer)
        .bind::<diesel::sql_types::Uuid, _>(id.as_uuid()),
    |p, age, n| p
        .bind::<BigInt, _>(micros(age))
        .bind::<BigInt, _>(batch_i64(n))
);
sync_inbox!(
    "mysql",
    diesel::MysqlConnection,
    Dialect::MySql,
    |q, consumer, id| q
        .bind::<Text, _>(consumer)
        .bind::<Text, _>(event_id_text(id)),
    |p, age, n| p
        .bind::<BigInt, _>(micros(age))
        .bind::<BigInt, _>(batch_i64(n))
);
sync_inbox!(
    "sqlite",
    diesel::SqliteConnection,
    Dialect::Sqlite,
    |q, consumer, id| q
        .bind::<Text, _>(consumer)
        .bind::<Text, _>(event_id_text(id))
        .bind::<BigInt, _>(now_micros()),
    |p, age, n| p
        .bind::<BigInt, _>(now_micros().saturating_sub(micros(age)))
        .bind::<BigInt, _>(batch_i64(n))
);

/// A diesel-async connection the inbox can work on. Sealed.
#[cfg(any(feature = "async-postgres", feature = "async-mysql"))]
pub trait AsyncInboxConnection: private::Sealed + Send {
    #[doc(hidden)]
    const DIALECT: Dialect;
    #[doc(hidden)]
    fn insert_record(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    #[doc(hidden)]
    fn purge_batch(
        &mut self,
        stmt: &str,
        older_than: Duration,
        batch: usize,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    #[doc(hidden)]
    fn run(&mut self, stmt: &str) -> impl std::future::Future<Output = QueryResult<()>> + Send;
}

#[cfg(feature = "async-postgres")]
impl AsyncInboxConnection for diesel_async::AsyncPgConnection {
    const DIALECT: Dialect = Dialect::Postgres;
    async fn insert_record(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> QueryResult<usize> {
        use diesel_async::RunQueryDsl as _;
        diesel::sql_query(stmt)
            .bind::<Text, _>(consumer.to_owned())
            .bind::<diesel::sql_types::Uuid, _>(id.as_uuid())
            .execute(self)
            .await
    }
    async fn purge_batch(
        &mut self,
        stmt: &str,
        older_than: Duration,
        batch: usize,
    ) -> QueryResult<usize> {
        use diesel_async::RunQueryDsl as _;
        diesel::sql_query(stmt)
            .bind::<BigInt, _>(micros(older_than))
            .bind::<BigInt, _>(batch_i64(batch))
            .execute(self)
            .await
    }
    async fn run(&mut self, stmt: &str) -> QueryResult<()> {
        use diesel_async::RunQueryDsl as _;
        diesel::sql_query(stmt).execute(self).await.map(|_| ())
    }
}

#[cfg(feature = "async-mysql")]
impl AsyncInboxConnection for diesel_async::AsyncMysqlConnection {
    const DIALECT: Dialect = Dialect::MySql;
    async fn insert_record(
        &mut self,
        stmt: &str,
        consumer: &str,
        id: EventId,
    ) -> QueryResult<usize> {
        use diesel_async::RunQueryDsl as _;
        diesel::sql_query(stmt)
            .bind::<Text, _>(consumer.to_owned())
            .bind::<Text, _>(event_id_text(id))
            .execute(self)
            .await
    }
    async fn purge_batch(
        &mut self,
        stmt: &str,
        older_than: Duration,
        batch: usize,
    ) -> QueryResult<usize> {
        use diesel_async::RunQueryDsl as _;
        diesel::sql_query(stmt)
            .bind::<BigInt, _>(micros(older_than))
            .bind::<BigInt, _>(batch_i64(batch))
            .execute(self)
            .await
    }
    async fn run(&mut self, stmt: &str) -> QueryResult<()> {
        use diesel_async::RunQueryDsl as _;
        diesel::sql_query(stmt).execute(self).await.map(|_| ())
    }
}

#[cfg(any(feature = "async-postgres", feature = "async-mysql"))]
impl Inbox {
    /// [`migrate`](Self::migrate) on a diesel-async connection.
    pub async fn migrate_async<C: AsyncInboxConnection>(&self, conn: &mut C) -> QueryResult<()> {
        for stmt in self.spec.create_table_sql(C::DIALECT) {
            conn.run(&stmt).await?;
        }
        Ok(())
    }

    /// [`record`](Self::record) on a diesel-async connection, inside
    /// `conn.transaction(async |conn| ..)`.
    pub async fn record_async<C: AsyncInboxConnection>(
        &self,
        conn: &mut C,
        id: EventId,
    ) -> QueryResult<InboxOutcome> {
        let rows = conn
            .insert_record(
                &self.statements(C::DIALECT).record,
                self.spec.consumer(),
                id,
            )
            .await?;
        Ok(InboxOutcome::from_rows_affected(rows as u64))
    }

    /// [`purge`](Self::purge) on a diesel-async connection.
    pub async fn purge_async<C: AsyncInboxConnection>(
        &self,
        conn: &mut C,
        older_than: Duration,
        batch: usize,
    ) -> QueryResult<u64> {
        let batch = batch.max(1);
        let mut total = 0u64;
        loop {
            let n = conn
                .purge_batch(&self.statements(C::DIALECT).purge, older_than, batch)
                .await?;
            total += n as u64;
            if n < batch {
                return Ok(total);
            }
        }
    }
}
