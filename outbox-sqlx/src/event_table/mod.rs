//! [`EventTableSource`]: relays an existing append-only table (an event store, a ledger)
//! without copying its rows into an outbox. The user maps their columns to the envelope;
//! the relay keeps a gap-aware checkpoint in a table of its own (`outbox_checkpoints` by
//! default). See [`outbox_core::event_table`] for how rows that commit out of position order are
//! never skipped.
//!
//! ```no_run
//! # async fn f(pool: sqlx::PgPool, publisher: outbox_core::InMemoryPublisher) -> outbox_core::Result<()> {
//! use outbox_sqlx::event_table::{EventTableMapping, EventTableSource};
//! use outbox_core::{LogRelay, LogRelayConfig};
//!
//! let mapping = EventTableMapping {
//!     table: "ledger_transactions".into(),
//!     position: "id".into(),
//!     aggregate_id: "account_id".into(),
//!     event_type: "kind".into(),
//!     payload: "body".into(),
//!     created_at: Some("booked_at".into()),
//!     destination: "ledger".into(),
//!     ..EventTableMapping::default()
//! };
//! let source = EventTableSource::new(pool, "ledger-to-kafka", mapping)?;
//! source.migrate().await?; // the checkpoint table
//! let relay = LogRelay::new(source, publisher, LogRelayConfig::default())?;
//! relay.run_until(std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! # Column requirements
//!
//! - `position`: a unique integer column that grows with inserts (identity, sequence,
//!   `AUTO_INCREMENT`, SQLite `INTEGER PRIMARY KEY`), indexed (a primary key is).
//! - `payload`: text or JSON (`TEXT`, `JSON`, `JSONB`, `VARCHAR`). It is read as text.
//! - `created_at`: a timestamp; MySQL `DATETIME` values are taken as UTC; on SQLite an
//!   integer is Unix microseconds and text is an ISO-8601 time.
//! - `event_id`: a UUID (or its text). Without one, ids are derived from the source name
//!   and the position ([`outbox_core::event_table::derived_event_id`]), stable across replays.
//! - `headers`: a JSON object of string values. A valid W3C `traceparent` (with its
//!   `tracestate`) among them is the event's trace context, as an outbox row's trace columns
//!   are: the relay's `send` span is its child and the message carries that span in its
//!   place. One that is not valid is relayed as a plain header, without a trace.
//!
//! # Gap detection per database
//!
//! PostgreSQL reads in a `REPEATABLE READ` transaction whose snapshot also yields the
//! transaction horizon (`pg_current_snapshot()`), so gaps close exactly when their writers
//! ended. MySQL/MariaDB use the start time of the oldest InnoDB transaction (needs the
//! `PROCESS` privilege; without it gaps close after `gap_timeout`, logged once). SQLite
//! serialises writers, so its gaps are final at once.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_core::envelope::{EnvelopeParts, JSON_CONTENT_TYPE};
use outbox_core::event_table::{
    Checkpoint, GapOracle, LogRead, LogRecord, LogSource, ReadPlan, UndecodableRecord,
    derived_event_id,
};
use outbox_core::{Error, ErrorKind, EventId, Result, TableName, ValidationLimits};
use outbox_sql::Quote;
use outbox_sql::event_table::{Hold, as_micros, as_text};
use outbox_sql::quote_ident;
use outbox_sql::{Bound, Value};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::any::{AnyPool, each};

#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
use crate::common::{limit_i64, micros, sql};
use crate::error::map_sqlx;

/// The default checkpoint table.
pub const DEFAULT_CHECKPOINT_TABLE: &str = "outbox_checkpoints";

/// How the user's table maps to the envelope. Column names are checked identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventTableMapping {
    /// The table (`table` or `schema.table`).
    pub table: String,
    /// The position column (default `id`).
    pub position: String,
    /// The aggregate id column (also the default ordering key).
    pub aggregate_id: String,
    /// The event type column.
    pub event_type: String,
    /// The payload column.
    pub payload: String,
    /// The aggregate type column; without one, [`aggregate_type_name`](Self::aggregate_type_name).
    pub aggregate_type: Option<String>,
    /// The aggregate type when there is no column (default: the table name).
    pub aggregate_type_name: Option<String>,
    /// The creation time column; without one, the time of the read.
    pub created_at: Option<String>,
    /// The event id column; without one, ids are derived from the position.
    pub event_id: Option<String>,
    /// A column of JSON headers.
    pub headers: Option<String>,
    /// Where every event goes (topic, subject, queue, `exchange/key`).
    pub destination: String,
    /// The payload's content type (default `application/json`).
    pub content_type: String,
    /// Start after this position when the checkpoint is created (default 0: the whole
    /// table).
    pub start_after: i64,
}

impl Default for EventTableMapping {
    fn default() -> Self {
        EventTableMapping {
            table: String::new(),
            position: "id".to_owned(),
            aggregate_id: "aggregate_id".to_owned(),
            event_type: "event_type".to_owned(),
            payload: "payload".to_owned(),
            aggregate_type: None,
            aggregate_type_name: None,
            created_at: None,
            event_id: None,
            headers: None,
            destination: String::new(),
            content_type: JSON_CONTENT_TYPE.to_owned(),
            start_after: 0,
        }
    }
}

fn check_column(field: &str, name: &str) -> Result<()> {
    outbox_core::schema::check_identifier(&format!("event table mapping `{field}` column"), name)
}

impl EventTableMapping {
    /// Checks the mapping; the error names the field.
    pub fn validate(&self) -> Result<TableName> {
        if self.table.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "event table mapping `table` is empty",
            ));
        }
        let table = TableName::parse(&self.table)?;
        for (field, col) in [
            ("position", &self.position),
            ("aggregate_id", &self.aggregate_id),
            ("event_type", &self.event_type),
            ("payload", &self.payload),
        ] {
            check_column(field, col)?;
        }
        for (field, col) in [
            ("aggregate_type", &self.aggregate_type),
            ("created_at", &self.created_at),
            ("event_id", &self.event_id),
            ("headers", &self.headers),
        ] {
            if let Some(c) = col {
                check_column(field, c)?;
            }
        }
        if self.destination.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "event table mapping `destination` is empty: name the topic, subject, queue or exchange",
            ));
        }
        Ok(table)
    }
}

/// One row as read, before mapping.
struct RawRecord {
    position: i64,
    event_id: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    event_type: Option<String>,
    payload: Option<String>,
    created_micros: Option<i64>,
    headers: Option<String>,
}

/// Relays an existing append-only table. See the module docs.
#[derive(Clone)]
pub struct EventTableSource {
    name: String,
    pool: AnyPool,
    mapping: Arc<EventTableMapping>,
    checkpoint_table: TableName,
    select: Arc<str>,
    position_col: Arc<str>,
    limits: ValidationLimits,
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    oracle_warned: Arc<AtomicBool>,
}

impl std::fmt::Debug for EventTableSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTableSource")
            .field("name", &self.name)
            .field("table", &self.mapping.table)
            .field("checkpoint_table", &self.checkpoint_table)
            .finish()
    }
}

impl EventTableSource {
    /// A source named `name` (the checkpoint's key: one relay position per name) over the
    /// mapped table, with its checkpoint in `outbox_checkpoints`.
    pub fn new(
        pool: impl Into<AnyPool>,
        name: impl Into<String>,
        mapping: EventTableMapping,
    ) -> Result<Self> {
        let pool = pool.into();
        let name = name.into();
        if name.is_empty() || name.len() > 190 || name.chars().any(char::is_control) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "event table source name {name:?} must be 1 to 190 bytes without control characters"
                ),
            ));
        }
        let table = mapping.validate()?;
        let d = pool.dialect();
        let m = &mapping;
        let select = format!(
            "SELECT {pos}, {id}, {atype}, {aid}, {etype}, {payload}, {created}, {headers} FROM {table}",
            pos = quote_ident(d, &m.position),
            id = as_text(d, m.event_id.as_deref()),
            atype = as_text(d, m.aggregate_type.as_deref()),
            aid = as_text(d, Some(&m.aggregate_id)),
            etype = as_text(d, Some(&m.event_type)),
            payload = as_text(d, Some(&m.payload)),
            created = as_micros(d, m.created_at.as_deref()),
            headers = as_text(d, m.headers.as_deref()),
            table = table.quoted(d),
        );
        let checkpoint_table = TableName::parse(DEFAULT_CHECKPOINT_TABLE)?;
        Ok(EventTableSource {
            position_col: quote_ident(d, &m.position).into(),
            name,
            pool,
            mapping: Arc::new(mapping),
            checkpoint_table,
            select: select.into(),
            limits: ValidationLimits::default(),
            oracle_warned: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Bind marker number `n` (1-based) in the pool's dialect.
    fn marker(&self, n: usize) -> String {
        outbox_sql::event_table::marker(self.pool.dialect(), n)
    }

    /// Keeps the checkpoint in `table` instead of `outbox_checkpoints`.
    pub fn with_checkpoint_table(mut self, table: TableName) -> Self {
        self.checkpoint_table = table;
        self
    }

    /// Validates mapped rows with these limits instead of the defaults.
    pub fn with_limits(mut self, limits: ValidationLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The mapping.
    pub fn mapping(&self) -> &EventTableMapping {
        &self.mapping
    }

    /// The checkpoint as saved, if any (for status tools).
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let t = self.checkpoint_table.quoted(self.pool.dialect());
        let q = format!("SELECT state FROM {t} WHERE name = {}", self.marker(1));
        let state: Option<String> = each!(AnyPool, &self.pool, p => {
            sqlx::query_scalar(sql(q)).bind(&self.name).fetch_optional(p).await
        })
        .map_err(|e| map_sqlx("reading the checkpoint", e))?;
        state.map(|s| parse_state(&s)).transpose()
    }

    /// Creates the checkpoint table, idempotently.
    pub async fn migrate(&self) -> Result<()> {
        let d = self.pool.dialect();
        let t = self.checkpoint_table.quoted(d);
        let ddl = outbox_sql::event_table::checkpoint_table_sql(&t, d);
        each!(AnyPool, &self.pool, p => sqlx::query(sql(ddl)).execute(p).await.map(|_| ()))
            .map_err(|e| map_sqlx("creating the checkpoint table", e))
    }

    fn read_sql(&self, plan: &ReadPlan, limit: usize) -> String {
        let limit = limit_i64(limit);
        format!(
            "{} WHERE {} ORDER BY {} LIMIT {limit}",
            self.select,
            outbox_sql::read_plan_condition(plan, &self.position_col),
            self.position_col
        )
    }

    fn map(
        &self,
        raw: RawRecord,
        now: DateTime<Utc>,
    ) -> std::result::Result<LogRecord, UndecodableRecord> {
        let position = raw.position;
        let bad = |field: &str, why: String| UndecodableRecord {
            position,
            error: Error::new(
                ErrorKind::Decode,
                format!(
                    "row at position {position} of {}: column for `{field}` {why}",
                    self.mapping.table
                ),
            ),
        };
        let id = match raw.event_id {
            Some(text) => EventId::from_uuid(
                uuid::Uuid::parse_str(text.trim())
                    .map_err(|e| bad("event_id", format!("is not a UUID ({e})")))?,
            ),
            None if self.mapping.event_id.is_some() => {
                return Err(bad("event_id", "is NULL".into()));
            }
            None => derived_event_id(&self.name, position),
        };
        let need = |field: &str, v: Option<String>| v.ok_or_else(|| bad(field, "is NULL".into()));
        let aggregate_id = need("aggregate_id", raw.aggregate_id)?;
        let event_type = need("event_type", raw.event_type)?;
        let payload = need("payload", raw.payload)?;
        let aggregate_type = match (raw.aggregate_type, &self.mapping.aggregate_type_name) {
            (Some(t), _) => t,
            (None, Some(n)) => n.clone(),
            (None, None) => self.mapping.table.clone(),
        };
        let created_at = match raw.created_micros {
            Some(us) => DateTime::<Utc>::from_timestamp_micros(us)
                .ok_or_else(|| bad("created_at", format!("is out of range ({us} µs)")))?,
            None => now,
        };
        let headers = match raw.headers {
            Some(json) => {
                EnvelopeParts::parse_headers(&json).map_err(|e| bad("headers", e.to_string()))?
            }
            None => Default::default(),
        };
        let mut parts = EnvelopeParts {
            id,
            aggregate_type,
            aggregate_id,
            event_type,
            destination: self.mapping.destination.clone(),
            ordering_key: None,
            payload: payload.into_bytes().into(),
            content_type: self.mapping.content_type.clone(),
            headers,
            created_at,
            available_at: None,
            traceparent: None,
            tracestate: None,
        };
        parts.take_trace_from_headers();
        parts
            .into_envelope(&self.limits)
            .map(|envelope| LogRecord { position, envelope })
            .map_err(|e| UndecodableRecord {
                position,
                error: Error::new(
                    ErrorKind::Decode,
                    format!("row at position {position}: {e}"),
                ),
            })
    }

    fn split(&self, raws: Vec<RawRecord>, now: DateTime<Utc>, oracle: GapOracle) -> LogRead {
        let mut records = Vec::with_capacity(raws.len());
        let mut undecodable = Vec::new();
        for raw in raws {
            match self.map(raw, now) {
                Ok(r) => records.push(r),
                Err(u) => undecodable.push(u),
            }
        }
        LogRead {
            records,
            undecodable,
            now,
            oracle,
        }
    }

    fn initial_state(&self) -> Result<String> {
        serde_json::to_string(&Checkpoint::starting_after(self.mapping.start_after))
            .map_err(|e| Error::new(ErrorKind::Other, "encoding the checkpoint").with_source(e))
    }
}

fn parse_state(s: &str) -> Result<Checkpoint> {
    serde_json::from_str(s).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!("the saved checkpoint is not valid: {e}"),
        )
    })
}

fn encode_state(cp: &Checkpoint) -> Result<String> {
    serde_json::to_string(cp)
        .map_err(|e| Error::new(ErrorKind::Other, "encoding the checkpoint").with_source(e))
}

fn raw_from<R: Row>(row: &R) -> std::result::Result<RawRecord, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RawRecord {
        position: row.try_get(0)?,
        event_id: row.try_get(1)?,
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        payload: row.try_get(5)?,
        created_micros: row.try_get(6)?,
        headers: row.try_get(7)?,
    })
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn micros_to_time(us: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_else(Utc::now)
}

/// A read's rows decoded, before mapping.
fn raws<R: Row>(rows: &[R]) -> std::result::Result<Vec<RawRecord>, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter().map(raw_from).collect()
}

/// A failed read of the event table, as the relay reports it.
fn read_failed(e: sqlx::Error) -> Error {
    map_sqlx("reading the event table", e)
}

/// The rows `q` selects in the snapshot of `tx`, which then ends.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn rows_then_commit<DB: sqlx::Database>(
    mut tx: sqlx::Transaction<'_, DB>,
    q: String,
) -> Result<Vec<DB::Row>>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let rows = sqlx::query(sql(q))
        .fetch_all(&mut *tx)
        .await
        .map_err(read_failed)?;
    tx.commit().await.map_err(read_failed)?;
    Ok(rows)
}

/// Where a new checkpoint starts: its `high` position and its initial state.
type Seed<'a> = (i64, &'a str);

/// What taking a checkpoint read back: its owner and state, if the row was there.
type Taken = std::result::Result<Option<(Option<String>, String)>, sqlx::Error>;

/// Calls `$module::$f(pool, args…)` for whichever database the pool is on.
macro_rules! by_database {
    ($pool:expr, $f:ident($($arg:expr),*)) => {
        match $pool {
            #[cfg(feature = "postgres")]
            AnyPool::Postgres(p) => postgres::$f(p, $($arg),*).await,
            #[cfg(feature = "mysql")]
            AnyPool::MySql(p) => mysql::$f(p, $($arg),*).await,
            #[cfg(feature = "sqlite")]
            AnyPool::Sqlite(p) => sqlite::$f(p, $($arg),*).await,
        }
    };
}

impl EventTableSource {
    fn hold<'a>(&'a self, owner: &'a str, lease_for: Duration) -> Hold<'a> {
        Hold {
            table: self.checkpoint_table.quoted(self.pool.dialect()),
            name: &self.name,
            owner,
            owner_name: outbox_core::event_table::owner_name(owner),
            lease_us: micros(lease_for),
        }
    }
}

impl LogSource for EventTableSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn acquire(&self, owner: &str, lease_for: Duration) -> Result<Option<Checkpoint>> {
        let hold = self.hold(owner, lease_for);
        let (start, init) = (self.mapping.start_after, self.initial_state()?);
        let row = by_database!(&self.pool, acquire(&hold, (start, &init)))
            .map_err(|e| map_sqlx("taking the checkpoint", e))?;
        match row {
            Some((Some(o), state)) if o == owner => parse_state(&state).map(Some),
            _ => Ok(None),
        }
    }

    async fn read(&self, plan: &ReadPlan, limit: usize) -> Result<LogRead> {
        let q = self.read_sql(plan, limit);
        by_database!(&self.pool, read(self, q))
    }

    async fn save(&self, owner: &str, lease_for: Duration, checkpoint: &Checkpoint) -> Result<()> {
        let hold = self.hold(owner, lease_for);
        let state = encode_state(checkpoint)?;
        let now_us = Utc::now().timestamp_micros();
        let Bound { text, values } =
            hold.save(self.pool.dialect(), &state, checkpoint.high, now_us);
        let rows = each!(AnyPool, &self.pool, p => {
            let mut q = sqlx::query(sql(text));
            for v in values {
                // Checkpoint statements bind text and integers; times are microseconds.
                q = match v {
                    Value::Text(t) => q.bind(t),
                    Value::Int(i) => q.bind(i),
                    Value::Time(t) => q.bind(t.timestamp_micros()),
                    Value::Id(id) => q.bind(id.to_string()),
                };
            }
            q.execute(p).await.map(|done| done.rows_affected())
        })
        .map_err(|e| map_sqlx("saving the checkpoint", e))?;
        if rows == 0 {
            return Err(Error::new(
                ErrorKind::LeaseLost,
                format!("checkpoint {:?} is no longer held by {owner}", self.name),
            ));
        }
        Ok(())
    }

    async fn release(&self, owner: &str) -> Result<()> {
        let t = self.checkpoint_table.quoted(self.pool.dialect());
        let q = format!(
            "UPDATE {t} SET owner = NULL, owner_name = NULL, lease_until = NULL WHERE name = {} AND owner = {}",
            self.marker(1),
            self.marker(2)
        );
        let err = |e| map_sqlx("releasing the checkpoint", e);
        each!(AnyPool, &self.pool, p => {
            sqlx::query(sql(q)).bind(&self.name).bind(owner).execute(p).await.map(|_| ())
        })
        .map_err(err)
    }
}
