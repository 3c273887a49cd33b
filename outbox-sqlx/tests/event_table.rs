//! The event-table source against the machine's real PostgreSQL, MariaDB and SQLite:
//! writers whose transactions commit out of position order, rollbacks, relays stopped and
//! crashed mid-stream. Each test uses tables of its own.
#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outbox_core::event_table::{LogSource, derived_event_id};
use outbox_core::testkit::{TempDb, service_url, unique_name};
use outbox_core::{EventId, InMemoryPublisher, LogRelay, LogRelayConfig, RetryPolicy};
use outbox_sqlx::AnyPool;
use outbox_sqlx::event_table::{EventTableMapping, EventTableSource};
use sqlx::AssertSqlSafe;
use tokio::sync::Mutex;

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// MariaDB's and SQLite's `begin_insert`: the row gets no event id column, the relay
/// derives the id from the position the insert reports.
macro_rules! begin_insert_without_id {
    ($ledger:expr, $pool:expr, $account:expr, $begin:literal, $writer:path, |$r:ident| $pos:expr) => {{
        let mut c = $pool.acquire().await.expect("conn").detach();
        sqlx::Executor::execute(&mut c, $begin)
            .await
            .expect("begin");
        let $r = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (account_id, kind, body) VALUES (?, 'posted', '{{\"amount\": 5}}')",
            $ledger.table
        )))
        .bind($account)
        .execute(&mut c)
        .await
        .expect("insert");
        let pos = $pos;
        ($writer(c), pos, derived_event_id(&$ledger.name, pos))
    }};
}

/// A user's ledger table on one database.
struct Ledger {
    pool: AnyPool,
    table: String,
    name: String,
    _file: Option<TempDb>,
}

/// An open writer transaction holding one inserted row.
enum Writer {
    Pg(sqlx::PgConnection),
    My(sqlx::MySqlConnection),
    Lite(sqlx::SqliteConnection),
}

impl Ledger {
    async fn new(kind: &str) -> Option<Ledger> {
        let table = unique_name("ledger");
        let name = unique_name("src");
        let (pool, ddl, file) = match kind {
            "pg" => {
                let url =
                    service_url("event_table_postgres", "OUTBOX_TEST_POSTGRES_URL", PG_URL).await?;
                (
                    AnyPool::connect(&url, 8).await.expect("connect"),
                    format!(
                        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, event_uuid UUID NOT NULL, account_id TEXT NOT NULL, \
                         kind TEXT NOT NULL, body JSONB NOT NULL, booked_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    ),
                    None,
                )
            }
            "my" => {
                let url =
                    service_url("event_table_mariadb", "OUTBOX_TEST_MYSQL_URL", MY_URL).await?;
                (
                    AnyPool::connect(&url, 8).await.expect("connect"),
                    format!(
                        "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, account_id VARCHAR(64) NOT NULL, \
                         kind VARCHAR(64) NOT NULL, body JSON NOT NULL, booked_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
                    ),
                    None,
                )
            }
            _ => {
                let file = TempDb::new(&table);
                (
                    AnyPool::connect(&file.url(), 8).await.expect("open"),
                    format!(
                        "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, account_id TEXT NOT NULL, \
                         kind TEXT NOT NULL, body TEXT NOT NULL, booked_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"
                    ),
                    Some(file),
                )
            }
        };
        let l = Ledger {
            pool,
            table,
            name,
            _file: file,
        };
        l.exec(&ddl).await;
        Some(l)
    }

    async fn exec(&self, q: &str) {
        let q = AssertSqlSafe(q.to_owned());
        match &self.pool {
            AnyPool::Postgres(p) => drop(sqlx::query(q).execute(p).await.expect("sql")),
            AnyPool::MySql(p) => drop(sqlx::query(q).execute(p).await.expect("sql")),
            AnyPool::Sqlite(p) => drop(sqlx::query(q).execute(p).await.expect("sql")),
        }
    }

    fn source(&self) -> EventTableSource {
        let pg = matches!(self.pool, AnyPool::Postgres(_));
        let mapping = EventTableMapping {
            table: self.table.clone(),
            position: "id".into(),
            aggregate_id: "account_id".into(),
            event_type: "kind".into(),
            payload: "body".into(),
            created_at: Some("booked_at".into()),
            event_id: pg.then(|| "event_uuid".into()),
            aggregate_type_name: Some("account".into()),
            destination: "ledger".into(),
            ..EventTableMapping::default()
        };
        EventTableSource::new(self.pool.clone(), self.name.clone(), mapping).expect("mapping")
    }

    /// Begins a transaction and inserts one row; returns the open writer, the position
    /// and the event id the relay will publish.
    async fn begin_insert(&self, account: &str) -> (Writer, i64, EventId) {
        let t = &self.table;
        match &self.pool {
            AnyPool::Postgres(p) => {
                let mut c = p.acquire().await.expect("conn").detach();
                sqlx::Executor::execute(&mut c, "BEGIN")
                    .await
                    .expect("begin");
                let id = EventId::new();
                let (pos,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
                    "INSERT INTO {t} (event_uuid, account_id, kind, body) VALUES ($1, $2, 'posted', '{{\"amount\": 5}}') RETURNING id"
                )))
                .bind(id.as_uuid())
                .bind(account)
                .fetch_one(&mut c)
                .await
                .expect("insert");
                (Writer::Pg(c), pos, id)
            }
            AnyPool::MySql(p) => {
                begin_insert_without_id!(self, p, account, "BEGIN", Writer::My, |r| {
                    i64::try_from(r.last_insert_id()).expect("id")
                })
            }
            AnyPool::Sqlite(p) => {
                begin_insert_without_id!(self, p, account, "BEGIN IMMEDIATE", Writer::Lite, |r| {
                    r.last_insert_rowid()
                })
            }
        }
    }

    async fn drop_tables(&self) {
        if matches!(self.pool, AnyPool::Sqlite(_)) {
            return;
        }
        let q = format!("DROP TABLE IF EXISTS {}", self.table);
        self.exec(&q).await;
        let q = format!(
            "DELETE FROM outbox_checkpoints WHERE name = '{}'",
            self.name
        );
        self.exec(&q).await;
    }
}

impl Writer {
    async fn end(self, commit: bool) {
        let stmt = if commit { "COMMIT" } else { "ROLLBACK" };
        match self {
            Writer::Pg(mut c) => drop(sqlx::Executor::execute(&mut c, stmt).await.expect("end")),
            Writer::My(mut c) => drop(sqlx::Executor::execute(&mut c, stmt).await.expect("end")),
            Writer::Lite(mut c) => drop(sqlx::Executor::execute(&mut c, stmt).await.expect("end")),
        }
    }
}

/// The source, counting failed round ends: a checkpoint that could not be saved after a
/// publish is the one window where the relay publishes rows again.
#[derive(Clone)]
struct Counted {
    inner: EventTableSource,
    failed_saves: Arc<std::sync::atomic::AtomicUsize>,
}

impl LogSource for Counted {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn acquire(
        &self,
        owner: &str,
        lease_for: Duration,
    ) -> outbox_core::Result<Option<outbox_core::Checkpoint>> {
        self.inner.acquire(owner, lease_for).await
    }
    async fn read(
        &self,
        plan: &outbox_core::event_table::ReadPlan,
        limit: usize,
    ) -> outbox_core::Result<outbox_core::event_table::LogRead> {
        self.inner.read(plan, limit).await
    }
    async fn save(
        &self,
        owner: &str,
        lease_for: Duration,
        cp: &outbox_core::Checkpoint,
    ) -> outbox_core::Result<()> {
        let r = self.inner.save(owner, lease_for, cp).await;
        if let Err(e) = &r {
            eprintln!("checkpoint save failed: {e}");
            self.failed_saves
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }
    async fn release(&self, owner: &str) -> outbox_core::Result<()> {
        self.inner.release(owner).await
    }
}

fn config() -> LogRelayConfig {
    LogRelayConfig {
        batch_size: 25,
        lease: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(20),
        max_poll_interval: Duration::from_millis(100),
        gap_grace: Duration::from_millis(50),
        gap_timeout: Duration::from_secs(600),
        retry: RetryPolicy::backoff(Duration::from_millis(10), Duration::from_millis(50), 10),
        ..LogRelayConfig::default()
    }
}

fn counts(p: &InMemoryPublisher) -> HashMap<EventId, usize> {
    let mut m = HashMap::new();
    for id in p.delivered_ids() {
        *m.entry(id).or_default() += 1;
    }
    m
}

/// Writer A takes a position and holds its transaction; writer B takes the next one and
/// commits. The relay publishes B, keeps A's position as a gap, and publishes A when it
/// commits. A rolled-back position closes once its writer ended, not by timeout.
async fn late_commit_into_a_gap(kind: &str) {
    let Some(l) = Ledger::new(kind).await else {
        return;
    };
    let source = l.source();
    source.migrate().await.expect("checkpoint table");
    source.migrate().await.expect("migrate is idempotent");
    let publisher = InMemoryPublisher::new();
    let relay = LogRelay::new(source.clone(), publisher.clone(), config()).expect("relay");

    let (a, pos_a, id_a) = l.begin_insert("acc-1").await;
    let (b, pos_b, id_b) = l.begin_insert("acc-2").await;
    assert!(pos_b > pos_a);
    b.end(true).await;
    let r = relay.drain().await.expect("drain");
    assert_eq!(r.published, 1, "{kind}: only B is visible");
    let cp = source.checkpoint().await.expect("read").expect("saved");
    assert_eq!(cp.high, pos_b);
    assert!(
        cp.gaps.iter().any(|g| g.from <= pos_a && pos_a <= g.to),
        "{kind}: A's position is awaited: {cp:?}"
    );
    // While A runs, the gap stays open however often the relay polls.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(relay.drain().await.expect("drain").published, 0);
    assert!(
        !source
            .checkpoint()
            .await
            .expect("read")
            .expect("saved")
            .gaps
            .is_empty()
    );

    a.end(true).await;
    assert_eq!(
        relay.drain().await.expect("drain").published,
        1,
        "{kind}: A is published once it commits"
    );
    let c = counts(&publisher);
    assert_eq!((c.get(&id_a), c.get(&id_b)), (Some(&1), Some(&1)));

    // A rolled-back position.
    let (x, _, id_x) = l.begin_insert("acc-3").await;
    let (y, _, id_y) = l.begin_insert("acc-3").await;
    y.end(true).await;
    relay.drain().await.expect("drain");
    x.end(false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = relay.run_once().await.expect("round");
        assert_eq!(
            r.abandoned_gaps, 0,
            "{kind}: closed because the writer ended, not by timeout"
        );
        if r.open_gaps == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind}: the rollback gap never closed"
        );
    }
    let c = counts(&publisher);
    assert_eq!(c.get(&id_y), Some(&1));
    assert_eq!(c.get(&id_x), None, "a rolled-back row is never published");
    l.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_into_a_gap_postgres() {
    late_commit_into_a_gap("pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_into_a_gap_mariadb() {
    late_commit_into_a_gap("my").await;
}

/// Concurrent writers commit out of order (and some roll back) while relays run; the
/// relay is stopped gracefully, crashed (task aborted) and restarted mid-stream. Every
/// committed row is published; nothing rolled back is; duplicates only after the crashes,
/// at most one batch per crash.
async fn writers_and_restarts(kind: &str) {
    let Some(l) = Ledger::new(kind).await else {
        return;
    };
    let l = Arc::new(l);
    let source = l.source();
    source.migrate().await.expect("checkpoint table");
    let counted = Counted {
        inner: source.clone(),
        failed_saves: Arc::default(),
    };
    let publisher = InMemoryPublisher::new();
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let writers = if kind == "lite" { 2 } else { 4 };
    let per_writer = 60;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let l = Arc::clone(&l);
        let committed = Arc::clone(&committed);
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(w as u64);
            for n in 0..per_writer {
                let (tx, _, id) = l.begin_insert(&format!("acc-{}", n % 5)).await;
                tokio::time::sleep(Duration::from_millis(rng.u64(0..15))).await;
                let commit = rng.u8(0..10) != 0;
                tx.end(commit).await;
                if commit {
                    committed.lock().await.insert(id);
                }
            }
        }));
    }

    let run = |owner: &str| {
        let relay = LogRelay::new(counted.clone(), publisher.clone(), config())
            .expect("relay")
            .with_owner(owner);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(relay.run_until(async move {
            let _ = stopped.await;
        }));
        (stop, handle)
    };
    // Graceful stop, then a different relay takes over at once (the lease was released).
    let (stop, h) = run("host-a");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = stop.send(());
    h.await.expect("stopped");
    let (stop, h) = run("host-b");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Crash: abort the task wherever it is; the same owner restarts and takes it back.
    h.abort();
    let _ = h.await;
    drop(stop);
    let crashes = 1;
    let (stop, h) = run("host-b");
    for t in tasks {
        t.await.expect("writer");
    }
    // Let the relay catch up, then stop it and drain what is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    h.await.expect("stopped");
    let finisher = LogRelay::new(counted.clone(), publisher.clone(), config())
        .expect("relay")
        .with_owner("host-c");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        finisher.drain().await.expect("drain");
        let cp = source.checkpoint().await.expect("read").expect("saved");
        if cp.gaps.is_empty() && cp.retries.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind}: gaps never closed: {:?}",
            cp.gaps
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let committed = committed.lock().await.clone();
    let c = counts(&publisher);
    let missing: Vec<_> = committed.iter().filter(|id| !c.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{kind}: {} committed rows never published",
        missing.len()
    );
    let ghosts = c.keys().filter(|id| !committed.contains(id)).count();
    assert_eq!(ghosts, 0, "{kind}: rolled-back rows published");
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    let failed_saves = counted
        .failed_saves
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        duplicates <= (crashes + failed_saves) * config().batch_size,
        "{kind}: {duplicates} duplicates for {crashes} crash and {failed_saves} failed checkpoint saves"
    );
    assert!(
        committed.len() > writers * per_writer / 2,
        "the test wrote enough rows"
    );
    let _ = source.release("host-c").await;
    l.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_and_restarts_postgres() {
    writers_and_restarts("pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_and_restarts_mariadb() {
    writers_and_restarts("my").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_and_restarts_sqlite() {
    writers_and_restarts("lite").await;
}

#[tokio::test]
async fn a_second_relay_waits_for_the_lease() {
    let Some(l) = Ledger::new("lite").await else {
        return;
    };
    let source = l.source();
    source.migrate().await.expect("migrate");
    let a = source
        .acquire("a", Duration::from_secs(60))
        .await
        .expect("acquire");
    assert!(a.is_some());
    assert!(
        source
            .acquire("b", Duration::from_secs(60))
            .await
            .expect("acquire")
            .is_none()
    );
    let cp = a.expect("held");
    let err = source
        .save("b", Duration::from_secs(60), &cp)
        .await
        .expect_err("fenced");
    assert_eq!(err.kind(), outbox_core::ErrorKind::LeaseLost);
    source.release("a").await.expect("release");
    assert!(
        source
            .acquire("b", Duration::from_secs(60))
            .await
            .expect("acquire")
            .is_some()
    );
}

#[tokio::test]
async fn bad_mappings_name_the_field() {
    let file = TempDb::new("map");
    let pool = AnyPool::connect(&file.url(), 1).await.expect("open");
    let bad = EventTableMapping {
        table: "ledger".into(),
        payload: "body; DROP TABLE x".into(),
        destination: "ledger".into(),
        ..EventTableMapping::default()
    };
    let err = EventTableSource::new(pool.clone(), "s", bad).expect_err("bad column");
    assert!(err.message().contains("`payload`"), "{err}");
    let no_dest = EventTableMapping {
        table: "ledger".into(),
        ..EventTableMapping::default()
    };
    let err = EventTableSource::new(pool, "s", no_dest).expect_err("no destination");
    assert!(err.message().contains("destination"), "{err}");
}

#[tokio::test]
async fn an_unmappable_row_is_skipped_and_named() {
    let Some(l) = Ledger::new("lite").await else {
        return;
    };
    let source = l.source();
    source.migrate().await.expect("migrate");
    l.exec(&format!(
        "INSERT INTO {} (account_id, kind, body) VALUES ('a', 'posted', '{{}}'), ('', 'posted', '{{}}'), ('b', 'posted', '{{}}')",
        l.table
    ))
    .await;
    let publisher = InMemoryPublisher::new();
    let relay = LogRelay::new(source.clone(), publisher.clone(), config()).expect("relay");
    let r = relay.drain().await.expect("drain");
    assert_eq!((r.published, r.dead), (2, 1));
    let cp = source.checkpoint().await.expect("read").expect("saved");
    assert_eq!(cp.dead[0].position, 2);
    assert!(
        cp.dead[0].error.contains("position 2"),
        "{}",
        cp.dead[0].error
    );
}

/// A valid `traceparent` among a row's JSON headers is the event's trace (so the relay's
/// `send` span is its child); one that is not valid stays a plain header.
async fn a_trace_among_the_headers(kind: &str) {
    let Some(l) = Ledger::new(kind).await else {
        return;
    };
    let (json_type, uuid) = match kind {
        "pg" => ("JSONB", "gen_random_uuid(), "),
        "my" => ("JSON", ""),
        _ => ("TEXT", ""),
    };
    l.exec(&format!(
        "ALTER TABLE {} ADD COLUMN meta {json_type} NULL",
        l.table
    ))
    .await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let uuid_col = if uuid.is_empty() { "" } else { "event_uuid, " };
    l.exec(&format!(
        "INSERT INTO {t} ({uuid_col}account_id, kind, body, meta) VALUES \
         ({uuid}'a', 'posted', '{{}}', '{{\"traceparent\": \"{parent}\", \"tracestate\": \"v=1\", \"x\": \"y\"}}'), \
         ({uuid}'b', 'posted', '{{}}', '{{\"traceparent\": \"00-nothex-01\"}}'), \
         ({uuid}'c', 'posted', '{{}}', NULL)",
        t = l.table
    ))
    .await;
    let mapping = EventTableMapping {
        headers: Some("meta".into()),
        ..l.source().mapping().clone()
    };
    let source = EventTableSource::new(l.pool.clone(), l.name.clone(), mapping).expect("mapping");
    source.migrate().await.expect("migrate");
    let publisher = InMemoryPublisher::new();
    let relay = LogRelay::new(source, publisher.clone(), config()).expect("relay");
    assert_eq!(relay.drain().await.expect("drain").published, 3, "{kind}");

    let by_account: HashMap<String, outbox_core::Envelope> = publisher
        .deliveries()
        .into_iter()
        .map(|d| (d.envelope.aggregate_id().to_owned(), d.envelope))
        .collect();
    let a = &by_account["a"];
    let trace = a.trace().expect("a's trace");
    assert_eq!(
        (trace.traceparent(), trace.tracestate()),
        (parent, Some("v=1")),
        "{kind}"
    );
    assert_eq!(a.headers().keys().collect::<Vec<_>>(), ["x"], "{kind}");
    let b = &by_account["b"];
    assert!(b.trace().is_none(), "{kind}");
    assert_eq!(
        b.headers().get("traceparent").map(String::as_str),
        Some("00-nothex-01")
    );
    assert!(by_account["c"].trace().is_none() && by_account["c"].headers().is_empty());
    l.drop_tables().await;
}

#[tokio::test]
async fn a_trace_among_the_headers_postgres() {
    a_trace_among_the_headers("pg").await;
}

#[tokio::test]
async fn a_trace_among_the_headers_mariadb() {
    a_trace_among_the_headers("my").await;
}

#[tokio::test]
async fn a_trace_among_the_headers_sqlite() {
    a_trace_among_the_headers("lite").await;
}
