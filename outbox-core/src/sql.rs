//! Statement text and row decoding shared by the SQL stores (outbox-sqlx, outbox-diesel), so
//! every stack claims, fences and decodes the same way.

use chrono::{DateTime, Utc};

use crate::envelope::{EnvelopeParts, EventId, ValidationLimits};
use crate::error::{Error, ErrorKind};
use crate::schema::{Dialect, TableName};
use crate::store::{ClaimedEvent, Undecodable};

/// Run in a PostgreSQL claim's transaction, before the claim. The claim is a chain of
/// `ORDER BY ... LIMIT` probes on the key index; these settings keep the planner on that
/// shape whatever the table's statistics say (never analysed after `TRUNCATE`, or taken
/// while the outbox was empty), so a probe never turns into a sorted or bitmap scan of a
/// key's whole backlog. JIT is off because the claim's estimated cost, inflated by the
/// recursive walk, would otherwise buy a compilation that costs a second per claim.
pub const PG_CLAIM_SETTINGS: &str = "SELECT set_config('enable_sort', 'off', true), \
     set_config('enable_bitmapscan', 'off', true), set_config('jit', 'off', true)";

/// Most keys with a claimable head one claim takes rows from, for a batch of `limit` rows:
/// `limit`, at most 100. Each takes its fair share of the batch (`limit` / keys found), so
/// a batch of 1000 over many keys holds about 100 keys, ten events each, and leaves the
/// other keys to the relay's other batches in flight.
pub fn ready_keys(limit: usize) -> usize {
    limit.clamp(1, 100)
}

/// Most ordering keys one claim looks at, for a batch of `limit` rows: [`ready_keys`], at
/// least 16. Each key visited costs one index probe; keys whose head is in flight or waiting
/// for a retry are skipped at that cost, so a claim's cost is bounded by its batch, not by
/// the backlog. Keys past the budget are reached by the next claims, which start where this
/// one stopped; the keys a claim finds ready share its whole batch, so skipped keys make
/// their runs longer, not the batch smaller. (A budget of twice as many cost an empty claim
/// over 1000 held keys 6.1 ms instead of 2.0 ms, and the drains were no faster for it.)
pub fn key_budget(limit: usize) -> usize {
    ready_keys(limit).max(16)
}

/// Where a store's next claim starts its walk over the ordering keys.
///
/// Claims walk the keys that have unfinished rows in key order, starting after the key
/// where the previous claim stopped and wrapping around, so every key with due rows is
/// served in turn (round robin) however the backlog is spread, and keys held by batches in
/// flight are stepped over instead of rescanned by every claim.
#[derive(Debug, Default)]
pub struct ClaimCursor {
    after: std::sync::Mutex<String>,
}

impl ClaimCursor {
    /// The key after which the next claim starts (`""`: the first key).
    pub fn start(&self) -> String {
        self.after
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records where a claim that started after `start` stopped: at `walked_to` when the
    /// walk ended before its batch was full (it visited its whole key budget or every key),
    /// else at the last key it claimed from, in walk order (keys after `start` first, then
    /// the keys it wrapped around to).
    pub fn advance<'a>(
        &self,
        start: &str,
        claimed_keys: impl IntoIterator<Item = &'a str>,
        walked_to: Option<&str>,
    ) {
        let next = match walked_to {
            Some(w) => Some(w.to_owned()),
            None => {
                let (mut after, mut wrapped): (Option<&str>, Option<&str>) = (None, None);
                for k in claimed_keys {
                    let slot = if k > start { &mut after } else { &mut wrapped };
                    if slot.is_none_or(|m| k > m) {
                        *slot = Some(k);
                    }
                }
                wrapped.or(after).map(str::to_owned)
            }
        };
        if let Some(n) = next {
            match self.after.lock() {
                Ok(mut g) => *g = n,
                Err(p) => *p.into_inner() = n,
            }
        }
    }
}

/// The steps of a claim that walks ordering keys one statement at a time, inside the
/// store's own claim transaction (MySQL/MariaDB and SQLite; PostgreSQL runs the same walk
/// as one statement). [`walk_keys`] drives it.
pub trait KeyWalk {
    /// The smallest key with pending rows that is greater than `after` (`None`: any) and
    /// at most `upto` (`None`: no bound), and whether its head can be claimed now (not in
    /// flight, due). One index probe: a held key costs no more than this.
    fn next_key(
        &mut self,
        after: Option<&str>,
        upto: Option<&str>,
    ) -> impl std::future::Future<Output = crate::Result<Option<(String, bool)>>> + Send;

    /// Takes `key`'s run: its head (earliest unfinished row) and the rows after it in
    /// `seq` order, at most `max`, stopping before the first one that is not claimable
    /// now. Returns nothing if the head itself is not claimable (in flight, waiting for a
    /// retry, or being claimed by another relay). The rows returned are locked for this
    /// claim's transaction.
    fn take_run(
        &mut self,
        key: &str,
        max: usize,
    ) -> impl std::future::Future<Output = crate::Result<Vec<StoredRow>>> + Send;
}

/// Walks the keys after `start` (wrapping around) until [`ready_keys`] keys with a
/// claimable head are found or [`key_budget`] keys were visited, then takes each found key's run, up to
/// its fair share of the batch (`limit` / keys found, at least 1). Returns the rows in walk
/// order and, when the batch is not full, where the walk stopped (for [`ClaimCursor`]).
pub async fn walk_keys<W: KeyWalk>(
    w: &mut W,
    start: &str,
    limit: usize,
) -> crate::Result<(Vec<StoredRow>, Option<String>)> {
    let budget = key_budget(limit);
    let most = ready_keys(limit);
    // Keys whose head is claimable, at most `most` of them, in walk order.
    let mut ready: Vec<String> = Vec::new();
    let mut visited = 0usize;
    let mut last: Option<String> = None;
    let mut wrapped = false;
    let mut after: Option<String> = Some(start.to_owned());
    while ready.len() < most && visited < budget {
        let upto = if wrapped { Some(start) } else { None };
        let (key, claimable) = match w.next_key(after.as_deref(), upto).await? {
            Some(k) => k,
            None if !wrapped => {
                wrapped = true;
                after = None;
                continue;
            }
            None => break,
        };
        visited += 1;
        if claimable {
            ready.push(key.clone());
        }
        after = Some(key.clone());
        last = Some(key);
    }
    // Each ready key's fair share of the batch: a hot key alone fills it, many keys give
    // one event each (one pipelined wave for the relay).
    let share = limit.div_ceil(ready.len().max(1));
    let mut rows: Vec<StoredRow> = Vec::new();
    for key in &ready {
        if rows.len() >= limit {
            break;
        }
        let run = w.take_run(key, share.min(limit - rows.len())).await?;
        rows.extend(run);
    }
    let walked_to = if rows.len() < limit {
        if ready.len() >= most {
            ready.last().cloned()
        } else {
            last
        }
    } else {
        None
    };
    Ok((rows, walked_to))
}

/// The columns a claim reads back, in this order.
pub const SELECT_COLUMNS: &str = "seq, id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
     payload, content_type, headers, traceparent, tracestate, created_at, available_at, attempts, last_error";

/// The columns an enqueue writes, in this order.
pub const INSERT_COLUMNS: &str = "id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
     payload, content_type, headers, traceparent, tracestate, created_at, available_at";

/// A row as a store read it, before validation. Each field is the column of that name.
pub struct StoredRow {
    /// Column `seq`.
    pub seq: i64,
    /// Column `id`.
    pub id: EventId,
    /// Column `aggregate_type`.
    pub aggregate_type: String,
    /// Column `aggregate_id`.
    pub aggregate_id: String,
    /// Column `event_type`.
    pub event_type: String,
    /// Column `destination`.
    pub destination: String,
    /// Column `ordering_key`.
    pub ordering_key: String,
    /// Column `payload`.
    pub payload: Vec<u8>,
    /// Column `content_type`.
    pub content_type: String,
    /// Column `headers`.
    pub headers: String,
    /// Column `traceparent`.
    pub traceparent: Option<String>,
    /// Column `tracestate`.
    pub tracestate: Option<String>,
    /// Column `created_at`.
    pub created_at: DateTime<Utc>,
    /// Column `available_at`.
    pub available_at: DateTime<Utc>,
    /// Column `attempts`.
    pub attempts: i32,
    /// Column `last_error`.
    pub last_error: Option<String>,
}

impl StoredRow {
    /// Validates the row into a claimed event, or reports it undecodable.
    pub fn into_claimed(self, limits: &ValidationLimits) -> Result<ClaimedEvent, Undecodable> {
        let id = self.id;
        let fail = |e: crate::EnvelopeError| Undecodable {
            id,
            error: Error::new(ErrorKind::Decode, format!("row {id}: {e}")),
        };
        let headers = EnvelopeParts::parse_headers(&self.headers).map_err(fail)?;
        let envelope = EnvelopeParts {
            id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            event_type: self.event_type,
            destination: self.destination,
            ordering_key: Some(self.ordering_key),
            payload: self.payload.into(),
            content_type: self.content_type,
            headers,
            created_at: self.created_at,
            available_at: Some(self.available_at),
            traceparent: self.traceparent,
            tracestate: self.tracestate,
        }
        .into_envelope(limits)
        .map_err(fail)?;
        Ok(ClaimedEvent {
            envelope,
            seq: self.seq,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            last_error: self.last_error,
        })
    }
}

impl StoredRow {
    /// The row as a dead letter, dead-lettered at `dead_at`: its event, or what could be
    /// read of it with the decode error when it is not a valid event.
    pub fn into_dead_record(
        self,
        dead_at: Option<DateTime<Utc>>,
        limits: &ValidationLimits,
    ) -> crate::store::DeadLetterRecord {
        use crate::store::{DeadEvent, DeadLetterRecord, UndecodableRow};
        let (id, seq) = (self.id, self.seq);
        let attempts = u32::try_from(self.attempts).unwrap_or(0);
        let last_error = self.last_error.clone();
        let raw = UndecodableRow {
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            event_type: self.event_type.clone(),
            destination: self.destination.clone(),
            ordering_key: self.ordering_key.clone(),
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
            payload_len: self.payload.len(),
            created_at: self.created_at,
            error: String::new(),
        };
        let event = match self.into_claimed(limits) {
            Ok(c) => DeadEvent::Event(c.envelope),
            Err(u) => DeadEvent::Undecodable(UndecodableRow {
                error: u.error.to_string(),
                ..raw
            }),
        };
        DeadLetterRecord {
            id,
            seq,
            event,
            attempts,
            last_error,
            dead_at,
        }
    }
}

/// Splits decoded rows into claimed events (sorted by `seq`) and undecodable ones.
pub fn split_rows(
    mut rows: Vec<StoredRow>,
    limits: &ValidationLimits,
) -> (Vec<ClaimedEvent>, Vec<Undecodable>) {
    rows.sort_by_key(|r| r.seq);
    let mut events = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for r in rows {
        match r.into_claimed(limits) {
            Ok(e) => events.push(e),
            Err(u) => bad.push(u),
        }
    }
    (events, bad)
}

/// PostgreSQL statement text for a table, shared by the sqlx and diesel stores.
#[derive(Clone, Debug)]
pub struct PgStatements {
    /// Claims runs of due rows key by key (see [`pg_claim`]): binds `$1` limit, `$2` token,
    /// `$3` lease in microseconds, `$4` the key to start after, `$5` the key budget
    /// ([`key_budget`]), `$6` the most keys to take from ([`ready_keys`]);
    /// returns `walked_to` and then [`SELECT_COLUMNS`] (all NULL on the one row an empty
    /// claim returns).
    pub claim: String,
    /// Marks held rows published: `$1` ids (`uuid[]`), `$2` token.
    pub mark_published: String,
    /// Reschedules held rows: `$1` ids, `$2` token, `$3` delays in microseconds (`bigint[]`), `$4` errors (`text[]`).
    pub retry: String,
    /// Dead-letters held rows: `$1` ids, `$2` token, `$3` errors.
    pub dead: String,
    /// Releases held rows without an attempt: `$1` ids, `$2` token.
    pub release: String,
    /// Deletes published rows: `$1` cut-off, `$2` limit.
    pub purge: String,
    /// Pending, in-flight and dead counts, and the oldest unfinished `created_at`.
    pub stats: String,
    /// Lists dead letters: `$1`..`$5` the filter (type, key, since, before, ids), `$6` limit.
    pub list_dead: String,
    /// Requeues dead letters matching the filter (`$1`..`$5`).
    pub requeue_dead: String,
    /// Deletes dead letters matching the filter (`$1`..`$5`).
    pub purge_dead: String,
}

/// The PostgreSQL claim for the quoted table `t`, one statement:
///
/// 1. `fwd` and `back` walk the keys that have unfinished rows, after the cursor `$4` and
///    then wrapping around to it, with one probe of the key index (`ordering_key, seq`,
///    partial on `status < 2`) per key; the probe also returns the key's head row. The walk
///    stops after `$5` keys, or earlier, because it is evaluated lazily: only as far as
///    `cand` asks.
/// 2. `ready` keeps the keys whose head is claimable, at most `$6` ([`ready_keys`]) of
///    them (its `LIMIT` stops the walk there); `cand` takes each one's run, its fair share of the batch
///    (`$1` / keys ready, at least 1): the key's first unfinished rows in `seq` order, up to
///    the first that is not claimable. One hot key fills the batch alone; a hundred keys
///    give one event each, which the relay publishes in one pipelined wave.
/// 3. `locked` locks the heads (`SKIP LOCKED`, re-checked on the latest row version): a
///    head is every claimer's lock for its key, so two relays never split one key's run.
/// 4. `upd` leases the runs of the locked keys, re-checking each row.
/// 5. The result carries `walked_to` when the batch is not full: the last ready key if
///    there were `$6` of them, else the last key visited, so the next claim starts after it;
///    an empty claim returns that one row alone.
///
/// Each probe and each run is an `ORDER BY ordering_key, seq ... LIMIT` that only the key
/// index delivers in order, and [`PG_CLAIM_SETTINGS`] turns sorting off, so the planner
/// stays on that index: the cost is a probe per key visited plus the rows taken, whatever
/// the backlog, the published history or the statistics. A run selects its key as the range
/// `ordering_key >= k AND ordering_key <= k`, not `= k`: with an equality the planner drops
/// `ordering_key` from the wanted order, and where statistics say a key holds a tenth of
/// the table it walked the primary key in `seq` order instead, filtering out the published
/// history of every key (7,586 rows per key and 22 ms per claim at 10 keys × 2,000 rows,
/// 4 ms with the range).
pub fn pg_claim(t: &str) -> String {
    let claimable = |a: &str| {
        format!("{a}.available_at <= now() AND ({a}.status = 0 OR {a}.lease_until <= now())")
    };
    let returning = SELECT_COLUMNS
        .split(", ")
        .map(|c| format!("u.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cols = "o.ordering_key, o.seq, o.status, o.available_at, o.lease_until";
    format!(
        "WITH RECURSIVE \
         fwd(k, seq, status, available_at, lease_until, n) AS ( \
           (SELECT {cols}, 1 FROM {t} o WHERE o.status < 2 AND o.ordering_key > $4 \
              ORDER BY o.ordering_key, o.seq LIMIT 1) \
           UNION ALL \
           (SELECT x.* FROM fwd f CROSS JOIN LATERAL ( \
              SELECT {cols}, f.n + 1 FROM {t} o WHERE o.status < 2 AND o.ordering_key > f.k \
              ORDER BY o.ordering_key, o.seq LIMIT 1) x WHERE f.n < $5)), \
         back(k, seq, status, available_at, lease_until, n) AS ( \
           (SELECT {cols}, (SELECT count(*) FROM fwd)::int + 1 FROM {t} o \
              WHERE o.status < 2 AND o.ordering_key <= $4 ORDER BY o.ordering_key, o.seq LIMIT 1) \
           UNION ALL \
           (SELECT x.* FROM back b CROSS JOIN LATERAL ( \
              SELECT {cols}, b.n + 1 FROM {t} o WHERE o.status < 2 AND o.ordering_key > b.k \
                AND o.ordering_key <= $4 ORDER BY o.ordering_key, o.seq LIMIT 1) x WHERE b.n < $5)), \
         walk AS (SELECT * FROM fwd UNION ALL SELECT * FROM back WHERE n <= $5), \
         ready AS (SELECT w.k, w.seq AS head, w.n FROM walk w WHERE {ok_w} LIMIT $6), \
         share AS (SELECT ceil($1::float8 / greatest(count(*), 1))::bigint AS per FROM ready), \
         cand AS ( \
           SELECT r.seq, w.head FROM ready w CROSS JOIN share CROSS JOIN LATERAL ( \
             SELECT x.seq FROM ( \
               SELECT y.seq, bool_and(y.ok) OVER (ORDER BY y.ordering_key, y.seq) AS ok FROM ( \
                 SELECT o.ordering_key, o.seq, {ok_o} AS ok FROM {t} o \
                 WHERE o.ordering_key >= w.k AND o.ordering_key <= w.k AND o.status < 2 \
                 ORDER BY o.ordering_key, o.seq LIMIT share.per) y) x \
             WHERE x.ok) r \
           LIMIT $1), \
         locked AS ( \
           SELECT o.seq FROM {t} o WHERE o.seq IN (SELECT head FROM cand) AND o.status < 2 \
             AND {ok_o} FOR UPDATE OF o SKIP LOCKED), \
         upd AS ( \
           UPDATE {t} AS u SET status = 1, lease_token = $2, \
             lease_until = now() + make_interval(secs => $3::float8 / 1000000) \
           FROM cand c WHERE u.seq = c.seq AND c.head IN (SELECT seq FROM locked) \
             AND u.status < 2 AND {ok_u} \
           RETURNING {returning}) \
         SELECT m.walked_to, upd.* FROM ( \
           SELECT CASE WHEN (SELECT count(*) FROM cand) >= $1 THEN NULL \
             WHEN (SELECT count(*) FROM ready) >= $6 THEN (SELECT k FROM ready ORDER BY n DESC LIMIT 1) \
             ELSE (SELECT k FROM walk ORDER BY n DESC LIMIT 1) END AS walked_to) m \
         LEFT JOIN upd ON true",
        ok_o = claimable("o"),
        ok_w = claimable("w"),
        ok_u = claimable("u"),
    )
}

impl PgStatements {
    /// The statements for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted(Dialect::Postgres);
        let held = "status = 1 AND lease_token = $2 AND lease_until > now()";
        let dead_filter = "status = 3 AND ($1::text IS NULL OR event_type = $1) AND ($2::text IS NULL OR ordering_key = $2) \
             AND ($3::timestamptz IS NULL OR processed_at >= $3) AND ($4::timestamptz IS NULL OR processed_at < $4) \
             AND ($5::uuid[] IS NULL OR id = ANY($5))";
        PgStatements {
            claim: pg_claim(&t),
            mark_published: format!(
                "UPDATE {t} SET status = 2, processed_at = now(), lease_token = NULL, lease_until = NULL \
                 WHERE id = ANY($1) AND {held}"
            ),
            retry: format!(
                "UPDATE {t} AS u SET status = 0, attempts = u.attempts + 1, last_error = d.err, \
                   available_at = now() + make_interval(secs => d.delay_us::float8 / 1000000), \
                   lease_token = NULL, lease_until = NULL \
                 FROM UNNEST($1::uuid[], $3::bigint[], $4::text[]) AS d(id, delay_us, err) \
                 WHERE u.id = d.id AND u.status = 1 AND u.lease_token = $2 AND u.lease_until > now()"
            ),
            dead: format!(
                "UPDATE {t} AS u SET status = 3, attempts = u.attempts + 1, last_error = d.err, processed_at = now(), \
                   lease_token = NULL, lease_until = NULL \
                 FROM UNNEST($1::uuid[], $3::text[]) AS d(id, err) \
                 WHERE u.id = d.id AND u.status = 1 AND u.lease_token = $2 AND u.lease_until > now()"
            ),
            release: format!(
                "UPDATE {t} SET status = 0, lease_token = NULL, lease_until = NULL WHERE id = ANY($1) AND {held}"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE status = 2 AND processed_at < $1 \
                 ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            stats: format!(
                "SELECT count(*) FILTER (WHERE status = 0 OR (status = 1 AND lease_until <= now())), \
                        count(*) FILTER (WHERE status = 1 AND lease_until > now()), \
                        count(*) FILTER (WHERE status = 3), \
                        min(created_at) FILTER (WHERE status IN (0, 1)), \
                        (SELECT count(*) FROM {t} WHERE status = 2 \
                           AND processed_at > now() - interval '1 minute') \
                 FROM {t} WHERE status IN (0, 1, 3)"
            ),
            list_dead: format!(
                "SELECT {SELECT_COLUMNS}, processed_at FROM {t} WHERE {dead_filter} ORDER BY processed_at, seq LIMIT $6"
            ),
            requeue_dead: format!(
                "UPDATE {t} SET status = 0, attempts = 0, available_at = now(), processed_at = NULL WHERE {dead_filter}"
            ),
            purge_dead: format!("DELETE FROM {t} WHERE {dead_filter}"),
        }
    }
}
