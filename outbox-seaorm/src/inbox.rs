//! The consumer-side inbox for SeaORM: record an event id inside the transaction that
//! applies its effect, and learn whether it was processed before.
//!
//! ```no_run
//! # async fn f(db: sea_orm::DatabaseConnection, event_id: outbox_core::EventId) -> outbox_core::Result<()> {
//! use outbox_seaorm::inbox::Inbox;
//! use sea_orm::TransactionTrait;
//!
//! let inbox = Inbox::new("shipping")?;
//! let txn = db.begin().await.map_err(|e| outbox_seaorm::map_db_err("begin", e))?;
//! if inbox.record(&txn, event_id).await?.is_new() {
//!     // apply the business change with `&txn`
//! }
//! txn.commit().await.map_err(|e| outbox_seaorm::map_db_err("commit", e))?;
//! // now acknowledge the message to the broker
//! # Ok(()) }
//! ```
//!
//! See [`outbox_core::inbox`] for the semantics.

use std::time::Duration;

use outbox_core::inbox::InboxOutcome;
use outbox_core::schema::Dialect;
use outbox_core::{EventId, Result};
use outbox_sql::{InboxStatements, event_id_text};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use crate::error::map_db_err;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

outbox_sql::inbox_type!();

fn dialect(backend: DbBackend) -> Dialect {
    match backend {
        DbBackend::Postgres => Dialect::Postgres,
        DbBackend::MySql => Dialect::MySql,
        _ => Dialect::Sqlite,
    }
}

impl Inbox {
    fn statements(&self, backend: DbBackend) -> &InboxStatements {
        self.spec.statements(dialect(backend))
    }

    /// Creates the inbox table and its index, idempotently.
    pub async fn migrate<C: ConnectionTrait>(&self, conn: &C) -> Result<()> {
        let backend = conn.get_database_backend();
        for stmt in self.spec.create_table_sql(dialect(backend)) {
            conn.execute_raw(Statement::from_string(backend, stmt))
                .await
                .map_err(|e| map_db_err("creating the inbox table", e))?;
        }
        Ok(())
    }

    /// Records `id` for this consumer through `conn` (the consumer's open transaction) and
    /// says whether it is new. Apply the business change only when it is, on the same
    /// transaction, then commit.
    pub async fn record<C: ConnectionTrait>(&self, conn: &C, id: EventId) -> Result<InboxOutcome> {
        let backend = conn.get_database_backend();
        let id_value: Value = match backend {
            DbBackend::Postgres => id.as_uuid().into(),
            _ => event_id_text(id).into(),
        };
        let mut values: Vec<Value> = vec![self.spec.consumer().to_owned().into(), id_value];
        if dialect(backend) == Dialect::Sqlite {
            values.push(chrono::Utc::now().timestamp_micros().into());
        }
        let stmt = Statement::from_sql_and_values(
            backend,
            self.statements(backend).record.clone(),
            values,
        );
        let done = conn
            .execute_raw(stmt)
            .await
            .map_err(|e| map_db_err("recording the event in the inbox", e))?;
        Ok(InboxOutcome::from_rows_affected(done.rows_affected()))
    }

    /// Deletes records processed more than `older_than` ago, `batch` rows per statement.
    /// Returns how many.
    pub async fn purge<C: ConnectionTrait>(
        &self,
        conn: &C,
        older_than: Duration,
        batch: usize,
    ) -> Result<u64> {
        let backend = conn.get_database_backend();
        let batch = batch.max(1);
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let first: Value = if dialect(backend) == Dialect::Sqlite {
                chrono::Utc::now()
                    .timestamp_micros()
                    .saturating_sub(micros(older_than))
                    .into()
            } else {
                micros(older_than).into()
            };
            let stmt = Statement::from_sql_and_values(
                backend,
                self.statements(backend).purge.clone(),
                vec![first, limit.into()],
            );
            let n = conn
                .execute_raw(stmt)
                .await
                .map_err(|e| map_db_err("purging the inbox", e))?
                .rows_affected();
            total += n;
            if n < batch as u64 {
                return Ok(total);
            }
        }
    }
}
