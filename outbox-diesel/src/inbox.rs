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
use outbox_core::inbox::{InboxOutcome, PurgeBatches};
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
}

/// The inbox's methods on one kind of connection: `[]` and the sync trait, or `[async]`,
/// `[.await]` and the diesel-async trait.
macro_rules! inbox_methods {
    ($cfg:meta, [$($asyncness:ident)?], [$($dot_await:tt)*], $conn:ident,
     $migrate:ident, $record:ident, $purge:ident, $docs:literal) => {
        #[$cfg]
        #[doc = $docs]
        impl Inbox {
            /// Creates the inbox table and its index, idempotently.
            pub $($asyncness)? fn $migrate<C: $conn>(&self, conn: &mut C) -> QueryResult<()> {
                for stmt in self.spec.create_table_sql(C::DIALECT) {
                    conn.run(&stmt)$($dot_await)*?;
                }
                Ok(())
            }

            /// Records `id` for this consumer on `conn` (inside your `transaction`) and says
            /// whether it is new. Apply the business change only when it is, on the same
            /// connection.
            pub $($asyncness)? fn $record<C: $conn>(
                &self,
                conn: &mut C,
                id: EventId,
            ) -> QueryResult<InboxOutcome> {
                let stmt = &self.statements(C::DIALECT).record;
                let rows = conn.insert_record(id, self.spec.consumer(), stmt)$($dot_await)*?;
                Ok(InboxOutcome::from_rows_affected(rows as u64))
            }

            /// Deletes records processed more than `older_than` ago, `batch` rows per
            /// statement. Returns how many.
            pub $($asyncness)? fn $purge<C: $conn>(
                &self,
                conn: &mut C,
                older_than: Duration,
                batch: usize,
            ) -> QueryResult<u64> {
                let stmt = &self.statements(C::DIALECT).purge;
                let mut purge = PurgeBatches::new(batch);
                loop {
                    let n = conn.purge_batch(older_than, purge.size(), stmt)$($dot_await)*?;
                    if let Some(total) = purge.add(n as u64) {
                        return Ok(total);
                    }
                }
            }
        }
    };
}

inbox_methods!(
    cfg(all()),
    [],
    [],
    InboxConnection,
    migrate,
    record,
    purge,
    "On a synchronous diesel connection."
);
inbox_methods!(
    cfg(any(feature = "async-postgres", feature = "async-mysql")),
    [async],
    [.await],
    AsyncInboxConnection,
    migrate_async,
    record_async,
    purge_async,
    "On a diesel-async connection, inside `conn.transaction(async |conn| ..)`."
);

/// A synchronous diesel connection the inbox can work on. Sealed.
pub trait InboxConnection: private::Sealed {
    #[doc(hidden)]
    const DIALECT: Dialect;
    #[doc(hidden)]
    fn insert_record(&mut self, id: EventId, consumer: &str, stmt: &str) -> QueryResult<usize>;
    #[doc(hidden)]
    fn purge_batch(&mut self, older_than: Duration, batch: usize, stmt: &str)
    -> QueryResult<usize>;
    #[doc(hidden)]
    fn run(&mut self, stmt: &str) -> QueryResult<()>;
}

mod private {
    /// Implemented by `inbox_connection!` for each supported connection.
    pub trait Sealed {}
}

/// Implements the sync or async connection trait for one connection type: `$id` bound as
/// the event id, `$extra` after it in the record statement (SQLite's clock), `$age` the
/// purge statement's first value.
macro_rules! inbox_connection {
    ($feature:literal, $trait:ident, $dsl:path, [$($asyncness:ident)?], [$($dot_await:tt)*],
     $conn:ty, $dialect:expr, id: $idty:ty = |$i:ident| $id:expr, record_extra: [$($extra:expr),*],
     purge_first: |$a:ident| $age:expr) => {
        #[cfg(feature = $feature)]
        impl private::Sealed for $conn {}

        #[cfg(feature = $feature)]
        impl $trait for $conn {
            const DIALECT: Dialect = $dialect;
            $($asyncness)? fn insert_record(
                &mut self,
                $i: EventId,
                consumer: &str,
                stmt: &str,
            ) -> QueryResult<usize> {
                use $dsl as _;
                let q = diesel::sql_query(stmt)
                    .bind::<Text, _>(consumer.to_owned())
                    .bind::<$idty, _>($id);
                $(let q = q.bind::<BigInt, _>($extra);)*
                q.execute(self)$($dot_await)*
            }
            $($asyncness)? fn purge_batch(
                &mut self,
                $a: Duration,
                batch: usize,
                stmt: &str,
            ) -> QueryResult<usize> {
                use $dsl as _;
                diesel::sql_query(stmt)
                    .bind::<BigInt, _>($age)
                    .bind::<BigInt, _>(batch_i64(batch))
                    .execute(self)$($dot_await)*
            }
            $($asyncness)? fn run(&mut self, stmt: &str) -> QueryResult<()> {
                use $dsl as _;
                diesel::sql_query(stmt).execute(self)$($dot_await)*.map(|_| ())
            }
        }
    };
}

/// A diesel-async connection the inbox can work on. Sealed.
#[cfg(any(feature = "async-postgres", feature = "async-mysql"))]
pub trait AsyncInboxConnection: private::Sealed + Send {
    #[doc(hidden)]
    const DIALECT: Dialect;
    #[doc(hidden)]
    fn insert_record(
        &mut self,
        id: EventId,
        consumer: &str,
        stmt: &str,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    #[doc(hidden)]
    fn purge_batch(
        &mut self,
        older_than: Duration,
        batch: usize,
        stmt: &str,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    #[doc(hidden)]
    fn run(&mut self, stmt: &str) -> impl std::future::Future<Output = QueryResult<()>> + Send;
}

inbox_connection!("postgres", InboxConnection, diesel::RunQueryDsl, [], [], diesel::PgConnection,
    Dialect::Postgres, id: diesel::sql_types::Uuid = |id| id.as_uuid(), record_extra: [],
    purge_first: |age| micros(age));
inbox_connection!("async-mysql", AsyncInboxConnection, diesel_async::RunQueryDsl, [async], [.await],
    diesel_async::AsyncMysqlConnection, Dialect::MySql, id: Text = |id| event_id_text(id),
    record_extra: [], purge_first: |age| micros(age));
inbox_connection!("sqlite", InboxConnection, diesel::RunQueryDsl, [], [], diesel::SqliteConnection,
    Dialect::Sqlite, id: Text = |id| event_id_text(id), record_extra: [now_micros()],
    purge_first: |age| now_micros().saturating_sub(micros(age)));
inbox_connection!("async-postgres", AsyncInboxConnection, diesel_async::RunQueryDsl, [async],
    [.await], diesel_async::AsyncPgConnection, Dialect::Postgres,
    id: diesel::sql_types::Uuid = |id| id.as_uuid(), record_extra: [], purge_first: |age| micros(age));
inbox_connection!("mysql", InboxConnection, diesel::RunQueryDsl, [], [], diesel::MysqlConnection,
    Dialect::MySql, id: Text = |id| event_id_text(id), record_extra: [],
    purge_first: |age| micros(age));
