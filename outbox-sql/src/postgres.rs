//! PostgreSQL statements for the outbox table.

use outbox_core::schema::{Dialect, TableName};

use crate::quote::Quote;
use crate::row::SELECT_COLUMNS;

/// Run in a PostgreSQL claim's transaction, before the claim. The claim is a chain of
/// `ORDER BY ... LIMIT` probes on the key index; these settings keep the planner on that
/// shape whatever the table's statistics say (never analysed after `TRUNCATE`, or taken
/// while the outbox was empty), so a probe never turns into a sorted or bitmap scan of a
/// key's whole backlog. JIT is off because the claim's estimated cost, inflated by the
/// recursive walk, would otherwise buy a compilation that costs a second per claim.
pub const PG_CLAIM_SETTINGS: &str = "SELECT set_config('enable_sort', 'off', true), \
     set_config('enable_bitmapscan', 'off', true), set_config('jit', 'off', true)";

/// Writes encoded envelopes ([`outbox_core::codec`]) into the WAL as transactional logical
/// decoding messages, in array order: `$1` the message prefix, `$2` the encoded envelopes
/// (`bytea[]`). Run inside the caller's transaction; a rollback emits nothing. The CDC
/// relay's message mode reads them from a replication slot; no table is written.
pub const PG_EMIT_MESSAGES: &str = "SELECT pg_logical_emit_message(true, $1, m) \
     FROM unnest($2::bytea[]) WITH ORDINALITY AS t(m, n) ORDER BY n";

/// One statement that runs `statement` (the caller's own `INSERT`, `UPDATE` or `DELETE`,
/// binding `$1` to `$params`) and emits envelopes as [`PG_EMIT_MESSAGES`] does: `$params+1`
/// the message prefix, `$params+2` the encoded envelopes. One round trip to the server
/// instead of two; the write and the events commit or roll back together as ever.
///
/// `statement` runs as a data-modifying `WITH` query: exactly once, to completion. Its
/// `RETURNING` rows, if any, are not returned, and the events are emitted whatever rows it
/// touched (run the statement and `emit` separately to decide from its result). An empty
/// statement is an error; PostgreSQL refuses more than one.
pub fn pg_emit_with(statement: &str, params: usize) -> outbox_core::Result<String> {
    let invalid = |why: &str| {
        outbox_core::Error::new(
            outbox_core::ErrorKind::InvalidInput,
            format!("the statement to emit with {why}"),
        )
    };
    let body = statement.trim().trim_end_matches(';').trim_end();
    if body.is_empty() {
        return Err(invalid("is empty"));
    }
    let (prefix, messages) = (params + 1, params + 2);
    Ok(format!(
        "WITH business AS ({body}) SELECT pg_logical_emit_message(true, ${prefix}, m) \
         FROM unnest(${messages}::bytea[]) WITH ORDINALITY AS t(m, n) ORDER BY n"
    ))
}

/// PostgreSQL's claim and fenced marks for a table, shared by the sqlx and diesel stores
/// (retention, backlog figures and dead letters are [`AdminStatements`](crate::admin::AdminStatements)).
#[derive(Clone, Debug)]
pub struct PgStatements {
    /// Claims runs of due rows key by key (see [`pg_claim`]): binds `$1` limit, `$2` token,
    /// `$3` lease in microseconds, `$4` the key to start after, `$5` the key budget
    /// ([`key_budget`](crate::claim::key_budget)), `$6` the most keys to take from ([`ready_keys`](crate::claim::ready_keys));
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
}

/// The PostgreSQL claim for the quoted table `t`, one statement:
///
/// 1. `fwd` and `back` walk the keys that have unfinished rows, after the cursor `$4` and
///    then wrapping around to it, with one probe of the key index (`ordering_key, seq`,
///    partial on `status < 2`) per key; the probe also returns the key's head row. The walk
///    stops after `$5` keys, or earlier, because it is evaluated lazily: only as far as
///    `cand` asks.
/// 2. `ready` keeps the keys whose head is claimable, at most `$6` ([`ready_keys`](crate::claim::ready_keys)) of
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
        }
    }
}

/// What a log-tailing (CDC) relay writes into an outbox-shaped table: no lease fences these
/// (the relay claims nothing; the slot's position is its checkpoint), and each is
/// idempotent, since a restarted relay writes down its replayed window again.
#[derive(Clone, Debug)]
pub struct PgCdcStatements {
    /// `$1` ids (`uuid[]`): the rows become published, unless already settled.
    pub mark_published: String,
    /// `$1` ids, `$2` attempts (`int[]`), `$3` errors (`text[]`): the rows become dead
    /// letters, unless already published.
    pub mark_dead: String,
    /// `$1` ids: removes the rows (before a dead event is written again, or requeued).
    pub delete: String,
    /// `$1` id, `$2` raw bytes, `$3` error: a dead letter for something that was not an
    /// event (all text columns empty), unless that id is there already.
    pub insert_undecodable: String,
}

impl PgCdcStatements {
    /// The statements for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.quoted(Dialect::Postgres);
        PgCdcStatements {
            mark_published: format!(
                "UPDATE {t} SET status = 2, processed_at = now(), lease_token = NULL, \
                 lease_until = NULL WHERE id = ANY($1) AND status < 2"
            ),
            mark_dead: format!(
                "UPDATE {t} AS u SET status = 3, attempts = d.attempts, last_error = d.err, \
                   processed_at = now(), lease_token = NULL, lease_until = NULL \
                 FROM UNNEST($1::uuid[], $2::int[], $3::text[]) AS d(id, attempts, err) \
                 WHERE u.id = d.id AND u.status <> 2"
            ),
            delete: format!("DELETE FROM {t} WHERE id = ANY($1)"),
            insert_undecodable: format!(
                "INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, destination, \
                   ordering_key, payload, content_type, headers, created_at, available_at, \
                   status, attempts, last_error, processed_at) \
                 SELECT $1, '', '', '', '', '', $2, '', '{{}}', now(), now(), 3, 0, $3, now() \
                 WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE id = $1)"
            ),
        }
    }
}
