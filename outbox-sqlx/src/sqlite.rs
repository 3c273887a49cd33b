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
use outbox_core::store::{Claim, Lease};
use outbox_core::{Envelope, Error, ErrorKind, EventId, Result, TableName};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult,
};

use crate::common::bind_envelope;
use crate::common::{
    INSERT_COLUMNS, NextKeySql, RawRow, SELECT_COLUMNS, Sql, limit_i64, markers, micros, sql,
};
use crate::error::map_sqlx;
use crate::store::{Backend, Mark, SqlxOutbox, SqlxStore};
use outbox_sql::{KeyWalk, Value, walk_keys};

/// SQLite, as a [`Backend`] of the generic store: ids are text, times integer
/// microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
pub struct SqliteBackend;

/// The SQLite store. Cheap to clone.
pub type SqliteStore = SqlxStore<SqliteBackend>;

/// Enqueues into a configured table. Cheap to clone; build once.
pub type SqliteOutbox = SqlxOutbox<SqliteBackend>;

crate::store::module_fns!(SqliteStore, SqliteOutbox, SqlitePool, SqliteConnection);

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

fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The claim's key walk and the fenced marks, built once per store.
pub struct Statements {
    walk: WalkSql,
    marks: Marks,
}

/// The statements of a claim's key walk.
struct WalkSql {
    /// The next key and whether its head is claimable: `?1` after it, `?2` at most, `?3`
    /// now (each form names only the bounds it has).
    next: NextKeySql,
    /// Leases a key's run: `?1` token, `?2` lease end, `?3` now, `?4` key, `?5` most rows.
    run: Sql,
    /// Dead-letters a claimed row whose id cannot be read: `?1` error, `?2` now, `?3` seq.
    bury: Sql,
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
            bury: format!(
                "UPDATE {t} SET status = 3, attempts = attempts + 1, last_error = ?1, \
                 processed_at = ?2, lease_token = NULL, lease_until = NULL WHERE seq = ?3"
            )
            .into(),
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
        let mut run = Vec::with_capacity(rows.len());
        for row in &rows {
            match SqliteStore::decode(row) {
                Ok(r) => run.push(r),
                Err(e) => {
                    let Some(why) = SqliteStore::unreadable_id(&e) else {
                        return Err(map_sqlx("decoding claimed rows", e));
                    };
                    let seq: i64 = sqlx::Row::try_get(row, "seq")
                        .map_err(|e| map_sqlx("decoding claimed rows", e))?;
                    tracing::warn!(seq, error = %why, "dead-lettering a row whose id cannot be read");
                    sqlx::query(sql(Arc::clone(&self.sql.bury)))
                        .bind(why)
                        .bind(self.now)
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

impl crate::store::sealed::Sealed for SqliteBackend {}

impl Backend for SqliteBackend {
    type Db = sqlx::Sqlite;
    type Id = String;
    type Time = i64;
    type Statements = Statements;
    const DIALECT: Dialect = Dialect::Sqlite;
    const STORE: &'static str = "SqliteStore";

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    fn statements(_table: &TableName, quoted: &str) -> Statements {
        Statements {
            walk: WalkSql::new(quoted),
            marks: Marks::new(quoted),
        }
    }

    async fn claim(store: &SqliteStore, limit: usize, lease_for: Duration) -> Result<Claim> {
        let now = Utc::now();
        let lease = outbox_sql::new_lease(lease_for);
        let (token, until) = (lease.token, lease.until);
        const WHAT: &str = "claiming outbox rows";
        let mut tx = store
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(WHAT, e))?;
        let start = store.cursor.start();
        let mut walk = SqliteWalk {
            tx: &mut tx,
            sql: &store.stmts.walk,
            token: token.as_i64(),
            until: to_micros(until),
            now: to_micros(now),
        };
        let (raw, walked_to) = walk_keys(&mut walk, &start, limit).await?;
        tx.commit().await.map_err(|e| map_sqlx(WHAT, e))?;
        Ok(store
            .cursor
            .finish(&start, lease, raw, walked_to.as_deref(), &store.limits))
    }

    /// One fenced statement per row, in one transaction: its own values, then the row's
    /// id, the token and now.
    async fn mark(store: &SqliteStore, lease: &Lease, mark: Mark<'_>) -> Result<u64> {
        let now = Utc::now();
        let m = &store.stmts.marks;
        let what = mark.what();
        let text = |e: &str| Value::Text(e.to_owned());
        let (stmt, own): (&Sql, Vec<(EventId, Vec<Value>)>) = match mark {
            Mark::Published(ids) => (
                &m.published,
                ids.iter().map(|id| (*id, vec![Value::Time(now)])).collect(),
            ),
            Mark::Retry(retries) => (&m.retry, {
                // Stored as microseconds: the delay adds to those, saturating.
                let at = |r: &outbox_core::store::Retry| {
                    Value::Int(to_micros(now).saturating_add(micros(r.delay)))
                };
                retries
                    .iter()
                    .map(|r| (r.id, vec![text(&r.error), at(r)]))
                    .collect()
            }),
            Mark::Dead(dead) => (&m.dead, {
                let row = |d: &outbox_core::store::DeadLetter| {
                    (d.id, vec![text(&d.error), Value::Time(now)])
                };
                dead.iter().map(row).collect()
            }),
            Mark::Release(ids) => (&m.release, ids.iter().map(|id| (*id, Vec::new())).collect()),
        };
        let token = lease.token.as_i64();
        let rows = own
            .into_iter()
            .map(|(id, mut values)| {
                values.extend([Value::Id(id), Value::Int(token), Value::Time(now)]);
                values
            })
            .collect();
        store.per_row(stmt, rows, what).await
    }

    fn insert_sql(quoted: &str) -> String {
        format!(
            "INSERT INTO {quoted} ({INSERT_COLUMNS}) VALUES ({})",
            markers(13)
        )
    }

    /// One prepared insert per event (SQLite runs them in-process).
    async fn insert(
        conn: &mut SqliteConnection,
        outbox: &SqliteOutbox,
        envelopes: &[Envelope],
    ) -> Result<()> {
        for e in envelopes {
            bind_envelope!(sqlx::query(sql(Arc::clone(&outbox.insert))), e, to_micros)
                .execute(&mut *conn)
                .await
                .map_err(|e| map_sqlx("enqueueing an outbox event", e))?;
        }
        Ok(())
    }
}
