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
use outbox_core::store::{Claim, Lease, WakeUp};
use outbox_core::{Envelope, Error, ErrorKind, EventId, Result, TableName};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgQueryResult};
use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use crate::common::{INSERT_COLUMNS, Sql, limit_i64, micros, sql};
use crate::error::map_sqlx;
use crate::store::{Backend, Mark, SqlxOutbox, SqlxStore};
use outbox_sql::{key_budget, ready_keys};

/// PostgreSQL, as a [`Backend`] of the generic store: ids are `uuid`, times
/// `timestamptz`, and a claim is one statement (`outbox_sql::pg_claim`).
#[derive(Clone, Copy, Debug)]
pub struct PgBackend;

/// The PostgreSQL store. Cheap to clone.
pub type PgStore = SqlxStore<PgBackend>;

/// Enqueues into a configured table. Cheap to clone; build once.
pub type PgOutbox = SqlxOutbox<PgBackend>;

crate::store::module_fns!(PgStore, PgOutbox, PgPool, PgConnection);

/// Writes `envelope` into the WAL as a transactional logical decoding message, through
/// `conn` (the caller's open transaction, `&mut *tx`): the CDC relay's message mode, with no
/// outbox table. The relay sees it once the transaction commits; a rollback emits nothing.
/// Needs `wal_level = logical` for a relay to read it.
pub async fn emit(conn: &mut PgConnection, envelope: &Envelope) -> Result<()> {
    emit_all(conn, std::slice::from_ref(envelope)).await
}

/// Writes `envelopes`, in order, as [`emit`] does, in one statement.
pub async fn emit_all(conn: &mut PgConnection, envelopes: &[Envelope]) -> Result<()> {
    emit_with_prefix(conn, outbox_core::codec::MESSAGE_PREFIX, envelopes).await
}

/// [`emit_all`] with a message prefix of your own, for a relay configured with the same one
/// (several applications sharing a database, each with its own relay).
pub async fn emit_with_prefix(
    conn: &mut PgConnection,
    prefix: &str,
    envelopes: &[Envelope],
) -> Result<()> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let encoded: Vec<Vec<u8>> = envelopes.iter().map(outbox_core::codec::encode).collect();
    sqlx::query(outbox_sql::PG_EMIT_MESSAGES)
        .bind(prefix)
        .bind(encoded)
        .execute(conn)
        .await
        .map_err(|e| map_sqlx("emitting events into the WAL", e))?;
    Ok(())
}

/// The SQL of `statement` (your own `INSERT`, `UPDATE` or `DELETE`, binding `$1` to
/// `$params`) that also emits events as [`emit_with_prefix`] does, in the same statement:
/// one round trip where your statement and then [`emit`] take two (on a busy server, the
/// difference between a few per cent and a fifth of write throughput). Bind your
/// parameters, then [`bind_events`]:
///
/// ```no_run
/// # async fn run(tx: &mut sqlx::PgConnection, event: outbox_core::Envelope)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_sqlx::postgres::{bind_events, emitting};
/// // Build the SQL once and keep it; sqlx prepares it once per connection.
/// let sql = emitting("INSERT INTO orders (customer, total) VALUES ($1, $2)", 2)?;
/// let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind("c-4711").bind(4200_i64);
/// bind_events(query, outbox_core::codec::MESSAGE_PREFIX, &[event])
///     .execute(&mut *tx)
///     .await?;
/// # Ok(()) }
/// ```
///
/// Your statement runs exactly once as a data-modifying `WITH` query; its `RETURNING` rows
/// are not returned, and the events are emitted whatever rows it touched (see
/// [`outbox_sql::pg_emit_with`]). An empty statement is an error naming it.
pub fn emitting(statement: &str, params: usize) -> Result<String> {
    outbox_sql::pg_emit_with(statement, params)
}

/// Binds what an [`emitting`] statement takes after your parameters: the message `prefix`
/// (`outbox_core::codec::MESSAGE_PREFIX` unless your relay sets its own) and `envelopes`,
/// encoded.
pub fn bind_events<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    prefix: &'q str,
    envelopes: &[Envelope],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let encoded: Vec<Vec<u8>> = envelopes.iter().map(outbox_core::codec::encode).collect();
    query.bind(prefix).bind(encoded)
}

/// The claim and the fenced marks (`outbox_sql::PgStatements`), shared cheaply.
pub struct Statements {
    claim: Sql,
    mark_published: Sql,
    retry: Sql,
    dead: Sql,
    release: Sql,
}

fn uuids(ids: impl Iterator<Item = EventId>) -> Vec<Uuid> {
    ids.map(|id| id.as_uuid()).collect()
}

impl crate::store::sealed::Sealed for PgBackend {}

impl Backend for PgBackend {
    type Db = sqlx::Postgres;
    type Id = Uuid;
    type Time = DateTime<Utc>;
    type Statements = Statements;
    const DIALECT: Dialect = Dialect::Postgres;
    const STORE: &'static str = "PgStore";

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    fn statements(table: &TableName, _quoted: &str) -> Statements {
        let s = outbox_sql::PgStatements::new(table);
        Statements {
            claim: s.claim.into(),
            mark_published: s.mark_published.into(),
            retry: s.retry.into(),
            dead: s.dead.into(),
            release: s.release.into(),
        }
    }

    async fn claim(store: &PgStore, limit: usize, lease_for: Duration) -> Result<Claim> {
        let lease = outbox_sql::new_lease(lease_for);
        let token = lease.token;
        const WHAT: &str = "claiming outbox rows";
        let mut tx = store.pool.begin().await.map_err(|e| map_sqlx(WHAT, e))?;
        sqlx::query(outbox_sql::PG_CLAIM_SETTINGS)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let start = store.cursor.start();
        let rows = sqlx::query(sql(Arc::clone(&store.stmts.claim)))
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
                raw.push(PgStore::decode(row).map_err(|e| map_sqlx(DECODE, e))?);
            }
        }
        Ok(store
            .cursor
            .finish(&start, lease, raw, walked_to.as_deref(), &store.limits))
    }

    async fn mark(store: &PgStore, lease: &Lease, mark: Mark<'_>) -> Result<u64> {
        let s = &store.stmts;
        let stmt = match mark {
            Mark::Published(_) => &s.mark_published,
            Mark::Release(_) => &s.release,
            Mark::Retry(_) => &s.retry,
            Mark::Dead(_) => &s.dead,
        };
        let mut q = sqlx::query(sql(Arc::clone(stmt)))
            .bind(uuids(mark.ids().into_iter()))
            .bind(lease.token.as_i64());
        // Retries and dead letters carry a delay and an error per row, as arrays too.
        if let Mark::Retry(retries) = mark {
            q = q.bind(retries.iter().map(|r| micros(r.delay)).collect::<Vec<_>>());
        }
        let errors = match mark {
            Mark::Retry(retries) => Some(retries.iter().map(|r| r.error.as_str()).collect()),
            Mark::Dead(dead) => Some(dead.iter().map(|d| d.error.as_str()).collect::<Vec<_>>()),
            _ => None,
        };
        if let Some(errors) = errors {
            q = q.bind(errors);
        }
        let done = q
            .execute(&store.pool)
            .await
            .map_err(|e| map_sqlx(mark.what(), e))?;
        Ok(done.rows_affected())
    }

    fn insert_sql(quoted: &str) -> String {
        format!(
            "INSERT INTO {quoted} ({INSERT_COLUMNS}) SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], \
             $5::text[], $6::text[], $7::bytea[], $8::text[], $9::text[], $10::text[], $11::text[], \
             $12::timestamptz[], $13::timestamptz[])"
        )
    }

    /// One statement, each column bound as an array.
    async fn insert(
        conn: &mut PgConnection,
        outbox: &PgOutbox,
        envelopes: &[Envelope],
    ) -> Result<()> {
        // One array per column, in the events' order.
        fn column<'e, T>(envelopes: &'e [Envelope], f: impl Fn(&'e Envelope) -> T) -> Vec<T> {
            envelopes.iter().map(f).collect()
        }
        sqlx::query(sql(Arc::clone(&outbox.insert)))
            .bind(uuids(envelopes.iter().map(Envelope::id)))
            .bind(column(envelopes, Envelope::aggregate_type))
            .bind(column(envelopes, Envelope::aggregate_id))
            .bind(column(envelopes, Envelope::event_type))
            .bind(column(envelopes, Envelope::destination))
            .bind(column(envelopes, Envelope::ordering_key))
            .bind(column(envelopes, |e| e.payload().as_ref()))
            .bind(column(envelopes, Envelope::content_type))
            .bind(column(envelopes, Envelope::headers_json))
            .bind(column(envelopes, |e| e.trace().map(|t| t.traceparent())))
            .bind(column(envelopes, |e| {
                e.trace().and_then(|t| t.tracestate())
            }))
            .bind(column(envelopes, Envelope::created_at))
            .bind(column(envelopes, Envelope::available_at))
            .execute(conn)
            .await
            .map_err(|e| map_sqlx("enqueueing outbox events", e))?;
        Ok(())
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
