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
use outbox_core::store::{Claim, Lease};
use outbox_core::{Envelope, Result, TableName};
use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlQueryResult};
use sqlx::{Executor, Row};

use crate::common::bind_envelope;
use crate::common::{
    INSERT_COLUMNS, NextKeySql, RawRow, SELECT_COLUMNS, Sql, limit_i64, markers, micros, sql,
};
use crate::error::map_sqlx;
use crate::store::{Backend, Mark, SqlxOutbox, SqlxStore, StoredTime};
use outbox_sql::{KeyWalk, Value, walk_keys};

/// Rows per multi-row statement: well under the protocol's 65,535 placeholders.
const CHUNK: usize = 1000;

/// MySQL and MariaDB, as a [`Backend`] of the generic store: ids are `CHAR(36)`, times
/// `DATETIME(6)` in UTC.
#[derive(Clone, Copy, Debug)]
pub struct MySqlBackend;

/// The MySQL/MariaDB store. Cheap to clone.
pub type MySqlStore = SqlxStore<MySqlBackend>;

/// Enqueues into a configured table. Cheap to clone; build once.
pub type MySqlOutbox = SqlxOutbox<MySqlBackend>;

crate::store::module_fns!(MySqlStore, MySqlOutbox, MySqlPool, MySqlConnection);

const ROW_MARKERS: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// A row is held by a lease when it is in flight under that token and not yet expired.
const HELD: &str = "status = 1 AND lease_token = ? AND lease_until > UTC_TIMESTAMP(6)";

/// The claim's statements and the per-row marks, shared cheaply.
pub struct Statements {
    reap: Sql,
    next: NextKeySql,
    run: Sql,
    check: Sql,
    retry: Sql,
    dead: Sql,
    /// Dead-letters a locked row whose id cannot be read: `?` error, `?` seq.
    bury: Sql,
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
            bury: format!(
                "UPDATE {t} SET status = 3, attempts = attempts + 1, last_error = ?, processed_at = {now}, \
                   lease_token = NULL, lease_until = NULL WHERE seq = ?"
            )
            .into(),
        }
    }
}

/// One claim's walk, inside its transaction.
struct MySqlWalk<'a, 'c> {
    tx: &'a mut sqlx::Transaction<'c, sqlx::MySql>,
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
            match MySqlStore::decode(row) {
                Ok(r) => run.push(r),
                Err(e) => {
                    let Some(why) = MySqlStore::unreadable_id(&e) else {
                        return Err(map_sqlx("decoding claimed rows", e));
                    };
                    tracing::warn!(seq, error = %why, "dead-lettering a row whose id cannot be read");
                    sqlx::query(sql(Arc::clone(&self.stmts.bury)))
                        .bind(why)
                        .bind(seq)
                        .execute(&mut **self.tx)
                        .await
                        .map_err(|e| map_sqlx("dead-lettering a row whose id cannot be read", e))?;
                }
            }
        }
        Ok(run)
    }
}

impl crate::store::sealed::Sealed for MySqlBackend {}

impl Backend for MySqlBackend {
    type Db = sqlx::MySql;
    type Id = String;
    type Time = DateTime<Utc>;
    type Statements = Statements;
    const DIALECT: Dialect = Dialect::MySql;
    const STORE: &'static str = "MySqlStore";

    fn rows_affected(done: &MySqlQueryResult) -> u64 {
        done.rows_affected()
    }

    fn statements(table: &TableName, quoted: &str) -> Statements {
        Statements::new(quoted, &table.derived("key_idx"))
    }

    async fn claim(store: &MySqlStore, limit: usize, lease_for: Duration) -> Result<Claim> {
        const WHAT: &str = "claiming outbox rows";
        let lease = outbox_sql::new_lease(lease_for);
        let token = lease.token;
        let mut conn = store.pool.acquire().await.map_err(|e| map_sqlx(WHAT, e))?;
        // Applies to the next transaction on this connection only.
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        // Expired leases go back to pending (the old holder's fenced marks then miss).
        sqlx::query(sql(Arc::clone(&store.stmts.reap)))
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let start = store.cursor.start();
        let mut walk = MySqlWalk {
            tx: &mut tx,
            stmts: &store.stmts,
        };
        let (raw, walked_to) = walk_keys(&mut walk, &start, limit).await?;
        for chunk in raw.chunks(CHUNK) {
            let stmt = format!(
                "UPDATE {} SET status = 1, lease_token = ?, \
                   lease_until = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE seq IN ({})",
                store.quoted,
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
        Ok(store
            .cursor
            .finish(&start, lease, raw, walked_to.as_deref(), &store.limits))
    }

    /// Published and released rows: one `UPDATE ... WHERE id IN (...)` per thousand ids.
    /// Retries and dead letters carry a message and delay per row, so they run one
    /// statement per row in one transaction (they are the uncommon path).
    async fn mark(store: &MySqlStore, lease: &Lease, mark: Mark<'_>) -> Result<u64> {
        let what = mark.what();
        let token = lease.token.as_i64();
        let (set, ids) = match mark {
            Mark::Published(ids) => ("status = 2, processed_at = UTC_TIMESTAMP(6)", ids),
            Mark::Release(ids) => ("status = 0", ids),
            Mark::Retry(retries) => {
                let rows = retries
                    .iter()
                    .map(|r| {
                        let delay = Value::Int(micros(r.delay));
                        vec![
                            Value::Text(r.error.clone()),
                            delay,
                            Value::Id(r.id),
                            Value::Int(token),
                        ]
                    })
                    .collect();
                return store.per_row(&store.stmts.retry, rows, what).await;
            }
            Mark::Dead(dead) => {
                let rows = dead
                    .iter()
                    .map(|d| {
                        vec![
                            Value::Text(d.error.clone()),
                            Value::Id(d.id),
                            Value::Int(token),
                        ]
                    })
                    .collect();
                return store.per_row(&store.stmts.dead, rows, what).await;
            }
        };
        let mut changed = 0;
        for chunk in ids.chunks(CHUNK) {
            let stmt = format!(
                "UPDATE {} SET {set}, lease_token = NULL, lease_until = NULL WHERE id IN ({}) AND {HELD}",
                store.quoted,
                markers(chunk.len())
            );
            let mut q = sqlx::query(sql(stmt));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            let done = q
                .bind(token)
                .execute(&store.pool)
                .await
                .map_err(|e| map_sqlx(what, e))?;
            changed += done.rows_affected();
        }
        Ok(changed)
    }

    fn insert_sql(quoted: &str) -> String {
        format!("INSERT INTO {quoted} ({INSERT_COLUMNS}) VALUES {ROW_MARKERS}")
    }

    /// One multi-row `INSERT` per thousand events.
    async fn insert(
        conn: &mut MySqlConnection,
        outbox: &MySqlOutbox,
        envelopes: &[Envelope],
    ) -> Result<()> {
        for chunk in envelopes.chunks(CHUNK) {
            let text: Sql = if chunk.len() == 1 {
                Arc::clone(&outbox.insert)
            } else {
                format!(
                    "INSERT INTO {} ({INSERT_COLUMNS}) VALUES {}",
                    outbox.quoted,
                    vec![ROW_MARKERS; chunk.len()].join(", ")
                )
                .into()
            };
            let mut q = sqlx::query(sql(text));
            for e in chunk {
                q = bind_envelope!(q, e, <DateTime<Utc> as StoredTime>::store);
            }
            q.execute(&mut *conn)
                .await
                .map_err(|e| map_sqlx("enqueueing outbox events", e))?;
        }
        Ok(())
    }
}
