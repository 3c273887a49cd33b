//! [`DieselPgStore`]: the relay's store on diesel-async, for services that use diesel
//! without sqlx. Its SQL is `outbox_sql::PgStatements`, the statement text the sqlx
//! store runs too, so claims, leases and fencing behave the same on every stack.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Binary, Integer, Nullable, Text, Timestamptz};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use outbox_core::store::{Claim, DeadLetter, Lease, Retry, Store};
use outbox_core::{Error, ErrorKind, EventId, Result, TableName, ValidationLimits};
use outbox_sql::{ClaimCursor, PG_CLAIM_SETTINGS, PgStatements, StoredRow, key_budget, ready_keys};

use crate::error::map_diesel;

/// A row of the claim statement as diesel reads it: `walked_to`, then the claimed row's
/// columns, which are all NULL on the one row an empty claim returns.
#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Nullable<Text>)]
    walked_to: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    id: Option<uuid::Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    aggregate_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    aggregate_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    event_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    destination: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    ordering_key: Option<String>,
    #[diesel(sql_type = Nullable<Binary>)]
    payload: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Text>)]
    content_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    headers: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    tracestate: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    available_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Integer>)]
    attempts: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
}

impl Row {
    /// The claimed row, `None` on an empty claim's row; a NULL in a NOT NULL column is an
    /// error naming it.
    fn into_stored(self) -> Result<Option<StoredRow>> {
        let Some(seq) = self.seq else {
            return Ok(None);
        };
        fn req<T>(v: Option<T>, col: &str, seq: i64) -> Result<T> {
            v.ok_or_else(|| {
                Error::new(
                    ErrorKind::Decode,
                    format!("claimed row seq {seq}: column `{col}` is NULL"),
                )
            })
        }
        Ok(Some(StoredRow {
            seq,
            id: EventId::from_uuid(req(self.id, "id", seq)?),
            aggregate_type: req(self.aggregate_type, "aggregate_type", seq)?,
            aggregate_id: req(self.aggregate_id, "aggregate_id", seq)?,
            event_type: req(self.event_type, "event_type", seq)?,
            destination: req(self.destination, "destination", seq)?,
            ordering_key: req(self.ordering_key, "ordering_key", seq)?,
            payload: req(self.payload, "payload", seq)?,
            content_type: req(self.content_type, "content_type", seq)?,
            headers: req(self.headers, "headers", seq)?,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            created_at: req(self.created_at, "created_at", seq)?,
            available_at: req(self.available_at, "available_at", seq)?,
            attempts: req(self.attempts, "attempts", seq)?,
            last_error: self.last_error,
        }))
    }
}

/// The PostgreSQL store on a diesel-async (bb8) pool. Cheap to clone.
#[derive(Clone)]
pub struct DieselPgStore {
    pool: Pool<AsyncPgConnection>,
    table: TableName,
    stmts: std::sync::Arc<PgStatements>,
    limits: ValidationLimits,
    cursor: std::sync::Arc<ClaimCursor>,
}

impl std::fmt::Debug for DieselPgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pool's manager holds the URL (and any password): show only the table.
        f.debug_struct("DieselPgStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn uuids(ids: impl Iterator<Item = EventId>) -> Vec<uuid::Uuid> {
    ids.map(|id| id.as_uuid()).collect()
}

impl DieselPgStore {
    /// Opens a pool of `max_size` connections on `url` for `table` (which the migration
    /// created; name it with its schema if it is not on the search path). TLS follows the
    /// URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` as in libpq
    /// ([`pg_tls`](crate::pg_tls)).
    pub async fn connect(url: &str, table: TableName, max_size: u32) -> Result<Self> {
        // TLS as the URL's sslmode/sslrootcert/sslcert/sslkey ask (tokio-postgres alone
        // knows neither the verify modes nor the files).
        let mut config = diesel_async::pooled_connection::ManagerConfig::default();
        config.custom_setup = Box::new(|url| Box::pin(crate::pg_tls::establish(url)));
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
        let opening = || {
            format!(
                "opening a diesel-async pool on {}",
                outbox_core::redact_url(url)
            )
        };
        // One connection first: the pool itself reports a refused connection only as a
        // timeout, without its cause (a refused certificate, a wrong password).
        bb8::ManageConnection::connect(&manager)
            .await
            .map_err(|e| Error::new(ErrorKind::Connection, opening()).with_source(e))?;
        let pool = Pool::builder()
            .max_size(max_size)
            .build(manager)
            .await
            .map_err(|e| Error::new(ErrorKind::Connection, opening()).with_source(e))?;
        Ok(Self::new(pool, table))
    }

    /// A store over `table` through an existing pool.
    pub fn new(pool: Pool<AsyncPgConnection>, table: TableName) -> Self {
        DieselPgStore {
            stmts: std::sync::Arc::new(PgStatements::new(&table)),
            pool,
            table,
            limits: ValidationLimits::default(),
            cursor: std::sync::Arc::default(),
        }
    }

    /// Validates rows read back against these limits (default: core's defaults).
    pub fn with_limits(mut self, limits: ValidationLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    async fn conn(
        &self,
        what: &str,
    ) -> Result<diesel_async::pooled_connection::bb8::PooledConnection<'_, AsyncPgConnection>> {
        self.pool.get().await.map_err(|e| {
            Error::new(ErrorKind::Connection, format!("{what}: no pool connection")).with_source(e)
        })
    }

    async fn fenced(&self, stmt: &str, lease: &Lease, ids: &[EventId], what: &str) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn(what).await?;
        let n = diesel::sql_query(stmt)
            .bind::<Array<diesel::sql_types::Uuid>, _>(uuids(ids.iter().copied()))
            .bind::<BigInt, _>(lease.token.as_i64())
            .execute(&mut conn)
            .await
            .map_err(|e| map_diesel(what, e))?;
        Ok(n as u64)
    }
}

impl Store for DieselPgStore {
    async fn claim(&self, limit: usize, lease_for: Duration) -> Result<Claim> {
        const WHAT: &str = "claiming outbox rows";
        let lease = outbox_sql::new_lease(lease_for);
        let token = lease.token;
        let budget = i64::try_from(key_budget(limit)).unwrap_or(i64::MAX);
        let most = i64::try_from(ready_keys(limit)).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let lease_us = micros(lease_for);
        let claim = self.stmts.claim.as_str();
        let start = self.cursor.start();
        let after = start.clone();
        let mut conn = self.conn(WHAT).await?;
        let rows: Vec<Row> = conn
            .transaction::<_, diesel::result::Error, _>(async move |c| {
                diesel::sql_query(PG_CLAIM_SETTINGS).execute(c).await?;
                diesel::sql_query(claim)
                    .bind::<BigInt, _>(limit)
                    .bind::<BigInt, _>(token.as_i64())
                    .bind::<BigInt, _>(lease_us)
                    .bind::<Text, _>(after)
                    .bind::<BigInt, _>(budget)
                    .bind::<BigInt, _>(most)
                    .load(c)
                    .await
            })
            .await
            .map_err(|e| map_diesel(WHAT, e))?;
        let walked_to = rows.iter().find_map(|r| r.walked_to.clone());
        let mut raw = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(row) = r.into_stored()? {
                raw.push(row);
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
        const WHAT: &str = "scheduling retries";
        if retries.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn(WHAT).await?;
        let n = diesel::sql_query(self.stmts.retry.as_str())
            .bind::<Array<diesel::sql_types::Uuid>, _>(uuids(retries.iter().map(|r| r.id)))
            .bind::<BigInt, _>(lease.token.as_i64())
            .bind::<Array<BigInt>, _>(retries.iter().map(|r| micros(r.delay)).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(retries.iter().map(|r| r.error.as_str()).collect::<Vec<_>>())
            .execute(&mut conn)
            .await
            .map_err(|e| map_diesel(WHAT, e))?;
        Ok(n as u64)
    }

    async fn dead_letter(&self, lease: &Lease, dead: &[DeadLetter]) -> Result<u64> {
        const WHAT: &str = "dead-lettering rows";
        if dead.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn(WHAT).await?;
        let n = diesel::sql_query(self.stmts.dead.as_str())
            .bind::<Array<diesel::sql_types::Uuid>, _>(uuids(dead.iter().map(|d| d.id)))
            .bind::<BigInt, _>(lease.token.as_i64())
            .bind::<Array<Text>, _>(dead.iter().map(|d| d.error.as_str()).collect::<Vec<_>>())
            .execute(&mut conn)
            .await
            .map_err(|e| map_diesel(WHAT, e))?;
        Ok(n as u64)
    }

    async fn release(&self, lease: &Lease, ids: &[EventId]) -> Result<u64> {
        self.fenced(&self.stmts.release, lease, ids, "releasing rows")
            .await
    }
}
