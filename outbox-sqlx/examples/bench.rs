//! Benchmarks of the sqlx stores against the machine's real databases. Not a test: it
//! prints a table of figures, each with a ratio against a baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p outbox-sqlx --example bench            # PostgreSQL (+ MariaDB, SQLite)
//! OUTBOX_BENCH_SCALE=0.2 cargo run --release -p outbox-sqlx --example bench   # quicker
//! ```
//!
//! URLs: `OUTBOX_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! `OUTBOX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`; skipped if down).
//! Every run works in schemas/databases of its own and drops them at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::store::Store;
use outbox_core::{Envelope, EventId, TableName};
use outbox_sql::Quote;
use outbox_sqlx::mysql::{MySqlOutbox, MySqlStore};
use outbox_sqlx::postgres::{PgNotifier, PgOutbox, PgStore, channel_name};
use outbox_sqlx::sqlite::{SqliteOutbox, SqliteStore};
use sqlx::postgres::{PgPool, PgPoolOptions};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

fn scale() -> f64 {
    std::env::var("OUTBOX_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(1.0)
}

fn scaled(n: usize) -> usize {
    ((n as f64 * scale()) as usize).max(10)
}

fn event(i: usize, keys: usize) -> Result<Envelope, outbox_core::EnvelopeError> {
    Envelope::builder(
        "order",
        format!("order-{}", i % keys),
        "order.placed",
        "orders",
    )
    .json(&serde_json::json!({
        "order_id": i, "customer": "c-4711", "total_cents": 4200, "currency": "EUR",
        "lines": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}]
    }))
    .build()
}

struct Row {
    section: &'static str,
    case: String,
    figure: f64,
    unit: &'static str,
    ratio: f64,
    baseline: &'static str,
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| {:<34} | {:<44} | {:>12} | {:<8} | {:>7} | {:<28} |",
        "measure", "case", "figure", "unit", "ratio", "ratio against"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(36),
        "-".repeat(46),
        "-".repeat(14),
        "-".repeat(10),
        "-".repeat(9),
        "-".repeat(30)
    );
    for r in rows {
        println!(
            "| {:<34} | {:<44} | {:>12.1} | {:<8} | {:>7.2} | {:<28} |",
            r.section, r.case, r.figure, r.unit, r.ratio, r.baseline
        );
    }
}

/// A schema of its own on PostgreSQL, dropped at the end.
struct PgBench {
    pool: PgPool,
    schema: String,
}

impl PgBench {
    async fn new(url: &str, tag: &str) -> Res<PgBench> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        let schema = format!("outbox_bench_{tag}_{}", std::process::id());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&pool)
        .await?;
        let table = TableName::with_schema(&schema, "outbox_events")?;
        outbox_sqlx::postgres::migrate(&pool, &table).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE \"{schema}\".orders (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, total BIGINT NOT NULL)"
        )))
        .execute(&pool)
        .await?;
        Ok(PgBench { pool, schema })
    }

    fn table(&self) -> Res<TableName> {
        Ok(TableName::with_schema(&self.schema, "outbox_events")?)
    }

    async fn fill(&self, n: usize, keys: usize) -> Res<()> {
        let outbox = PgOutbox::new(self.table()?);
        let mut i = 0;
        while i < n {
            let batch = (i..(i + 1000).min(n))
                .map(|j| event(j, keys))
                .collect::<Result<Vec<_>, _>>()?;
            let mut tx = self.pool.begin().await?;
            outbox.enqueue_all(&mut tx, &batch).await?;
            tx.commit().await?;
            i += batch.len();
        }
        Ok(())
    }

    async fn drop_schema(self) -> Res<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{}\" CASCADE",
            self.schema
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Claims and marks until the store is empty; events per second.
async fn drain<S: Store>(store: &S, batch: usize, expected: usize) -> Res<f64> {
    let start = Instant::now();
    let mut done = 0;
    while done < expected {
        let claim = store.claim(batch, Duration::from_secs(30)).await?;
        if claim.events.is_empty() {
            return Err(format!("store ran dry after {done} of {expected} events").into());
        }
        let ids: Vec<EventId> = claim.events.iter().map(|e| e.envelope.id()).collect();
        let marked = store.mark_published(&claim.lease, &ids).await?;
        if marked != ids.len() as u64 {
            return Err(format!("marked {marked} of {} claimed", ids.len()).into());
        }
        done += ids.len();
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

async fn claim_throughput(url: &str, rows: &mut Vec<Row>) -> Res<()> {
    let mut base = None;
    for (batch, n) in [
        (1, scaled(3_000)),
        (100, scaled(50_000)),
        (1000, scaled(100_000)),
    ] {
        let b = PgBench::new(url, &format!("claim{batch}")).await?;
        b.fill(n, 10_000).await?;
        let store = PgStore::new(b.pool.clone(), b.table()?);
        let rate = drain(&store, batch, n).await?;
        let base_rate = *base.get_or_insert(rate);
        rows.push(Row {
            section: "PG claim+mark throughput",
            case: format!("batch {batch} ({n} events, 10k keys)"),
            figure: rate,
            unit: "events/s",
            ratio: rate / base_rate,
            baseline: "batch 1",
        });
        b.drop_schema().await?;
    }
    Ok(())
}

/// Claim latency of a batch of 100 with and without a large published history.
async fn history_effect(url: &str, rows: &mut Vec<Row>) -> Res<()> {
    let history = scaled(500_000);
    let mut base = None;
    for (label, published) in [("empty history", 0), ("published history", history)] {
        let b = PgBench::new(url, "history").await?;
        if published > 0 {
            let t = b.table()?.quoted(outbox_core::schema::Dialect::Postgres);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
                   payload, content_type, headers, created_at, available_at, status, processed_at) \
                 SELECT gen_random_uuid(), 'order', 'o' || g % 10000, 'order.placed', 'orders', 'order-' || g % 10000, \
                   '\\x7b7d'::bytea, 'application/json', '{{}}', now() - interval '1 day', now() - interval '1 day', 2, now() \
                 FROM generate_series(1, $1) g"
            )))
            .bind(published as i64)
            .execute(&b.pool)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {t}")))
                .execute(&b.pool)
                .await?;
        }
        let n = scaled(20_000);
        b.fill(n, 10_000).await?;
        let store = PgStore::new(b.pool.clone(), b.table()?);
        let rate = drain(&store, 100, n).await?;
        let base_rate = *base.get_or_insert(rate);
        rows.push(Row {
            section: "PG claim+mark, batch 100",
            case: format!("{label} ({published} published rows)"),
            figure: rate,
            unit: "events/s",
            ratio: rate / base_rate,
            baseline: "empty history",
        });
        b.drop_schema().await?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Write {
    BusinessOnly,
    WithEnqueue,
    NotifyInTx,
    NotifyAfterCommit,
}

/// `writers` tasks each run `per_writer` transactions; transactions per second.
async fn write_rate(url: &str, mode: Write, writers: usize, per_writer: usize) -> Res<f64> {
    let b = Arc::new(PgBench::new(url, "write").await?);
    let table = b.table()?;
    let outbox = PgOutbox::new(table.clone());
    let channel = channel_name(&table);
    let notifier = (mode == Write::NotifyAfterCommit)
        .then(|| PgNotifier::spawn(b.pool.clone(), &table, Duration::from_millis(5)));
    let insert: Arc<str> = format!(
        "INSERT INTO \"{}\".orders (customer, total) VALUES ($1, $2)",
        b.schema
    )
    .into();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (b, outbox, channel, notifier, insert) = (
            Arc::clone(&b),
            outbox.clone(),
            channel.clone(),
            notifier.clone(),
            Arc::clone(&insert),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let mut tx = b.pool.begin().await?;
                sqlx::query(sqlx::AssertSqlSafe(Arc::clone(&insert)))
                    .bind("c-4711")
                    .bind(4200_i64)
                    .execute(&mut *tx)
                    .await?;
                if mode != Write::BusinessOnly {
                    outbox
                        .enqueue(&mut tx, &event(w * per_writer + i, 1000)?)
                        .await?;
                }
                if mode == Write::NotifyInTx {
                    sqlx::query("SELECT pg_notify($1, '')")
                        .bind(&channel)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                if let Some(n) = &notifier {
                    n.notify();
                }
            }
            Ok::<(), BoxError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = (writers * per_writer) as f64 / start.elapsed().as_secs_f64();
    if let Ok(b) = Arc::try_unwrap(b) {
        b.drop_schema().await?;
    }
    Ok(rate)
}

async fn write_overhead(url: &str, rows: &mut Vec<Row>) -> Res<()> {
    let n = scaled(3_000);
    let alone = write_rate(url, Write::BusinessOnly, 1, n).await?;
    let with = write_rate(url, Write::WithEnqueue, 1, n).await?;
    for (case, rate) in [
        ("business insert alone", alone),
        ("business insert + enqueue", with),
    ] {
        rows.push(Row {
            section: "PG write tx, 1 writer",
            case: case.to_owned(),
            figure: rate,
            unit: "tx/s",
            ratio: rate / alone,
            baseline: "business insert alone",
        });
    }
    Ok(())
}

async fn notify_cost(url: &str, rows: &mut Vec<Row>) -> Res<()> {
    let writers = 16;
    let per = scaled(400);
    let base = write_rate(url, Write::WithEnqueue, writers, per).await?;
    let in_tx = write_rate(url, Write::NotifyInTx, writers, per).await?;
    let after = write_rate(url, Write::NotifyAfterCommit, writers, per).await?;
    for (case, rate) in [
        ("enqueue, no NOTIFY", base),
        ("enqueue + NOTIFY inside the tx", in_tx),
        ("enqueue + PgNotifier after commit", after),
    ] {
        rows.push(Row {
            section: "PG write tx, 16 writers",
            case: case.to_owned(),
            figure: rate,
            unit: "tx/s",
            ratio: rate / base,
            baseline: "enqueue, no NOTIFY",
        });
    }
    Ok(())
}

/// Claim+mark at batch 100 on SQLite and MariaDB, against PostgreSQL in the same run.
async fn other_stores(pg_url: &str, my_url: &str, rows: &mut Vec<Row>) -> Res<()> {
    let n = scaled(20_000);
    let events = (0..n)
        .map(|i| event(i, 10_000))
        .collect::<Result<Vec<_>, _>>()?;

    let b = PgBench::new(pg_url, "cmp").await?;
    b.fill(n, 10_000).await?;
    let pg = drain(&PgStore::new(b.pool.clone(), b.table()?), 100, n).await?;
    b.drop_schema().await?;
    rows.push(Row {
        section: "claim+mark, batch 100",
        case: format!("PostgreSQL ({n} events)"),
        figure: pg,
        unit: "events/s",
        ratio: 1.0,
        baseline: "PostgreSQL",
    });

    let path = std::env::temp_dir().join(format!("outbox_bench_{}.db", std::process::id()));
    let lite_pool = outbox_sqlx::sqlite::connect(&format!("sqlite://{}", path.display())).await?;
    let table = TableName::default();
    outbox_sqlx::sqlite::migrate(&lite_pool, &table).await?;
    let lite_outbox = SqliteOutbox::new(table.clone());
    for chunk in events.chunks(1000) {
        let mut tx = lite_pool.begin().await?;
        lite_outbox.enqueue_all(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    let lite = drain(&SqliteStore::new(lite_pool.clone(), table), 100, n).await?;
    lite_pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    rows.push(Row {
        section: "claim+mark, batch 100",
        case: format!("SQLite, WAL file ({n} events)"),
        figure: lite,
        unit: "events/s",
        ratio: lite / pg,
        baseline: "PostgreSQL",
    });

    let my_pool = match sqlx::mysql::MySqlPool::connect(my_url).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("MariaDB at {my_url} not reachable ({e}); its rows are left out");
            return Ok(());
        }
    };
    let mut my_empty = None;
    for history in [0, scaled(500_000)] {
        let my = mysql_drain(&my_pool, &events, history).await?;
        let base = *my_empty.get_or_insert(my);
        rows.push(Row {
            section: "claim+mark, batch 100",
            case: format!("MariaDB ({n} events, {history} published)"),
            figure: my,
            unit: "events/s",
            ratio: my / pg,
            baseline: "PostgreSQL",
        });
        if history > 0 {
            rows.push(Row {
                section: "MariaDB claim+mark, batch 100",
                case: format!("published history ({history} rows)"),
                figure: my,
                unit: "events/s",
                ratio: my / base,
                baseline: "MariaDB, empty history",
            });
        }
    }
    Ok(())
}

/// Fills a fresh MariaDB database with `history` published rows, then `events`, and drains.
async fn mysql_drain(
    pool: &sqlx::mysql::MySqlPool,
    events: &[Envelope],
    history: usize,
) -> Res<f64> {
    let db = format!("outbox_bench_{}_{history}", std::process::id());
    let table = TableName::with_schema(&db, "outbox_events")?;
    outbox_sqlx::mysql::migrate(pool, &table).await?;
    let t = table.quoted(outbox_core::schema::Dialect::MySql);
    let mut conn = pool.acquire().await?;
    sqlx::query("SET SESSION max_recursive_iterations = 100000000")
        .execute(&mut *conn)
        .await?;
    if history > 0 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, destination, ordering_key, \
               payload, content_type, headers, created_at, available_at, status, processed_at) \
             WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) \
             SELECT UUID(), 'order', CONCAT('o', n % 10000), 'order.placed', 'orders', CONCAT('order-', n % 10000), \
               '{{}}', 'application/json', '{{}}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), 2, UTC_TIMESTAMP(6) FROM g"
        )))
        .bind(history as i64)
        .execute(&mut *conn)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE TABLE {t}")))
            .execute(&mut *conn)
            .await?;
    }
    drop(conn);
    let outbox = MySqlOutbox::new(table.clone());
    for chunk in events.chunks(1000) {
        let mut tx = pool.begin().await?;
        outbox.enqueue_all(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    let rate = drain(&MySqlStore::new(pool.clone(), table), 100, events.len()).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{db}`")))
        .execute(pool)
        .await?;
    Ok(rate)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let pg_url = std::env::var("OUTBOX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let my_url = std::env::var("OUTBOX_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    eprintln!("outbox-sqlx bench, scale {} (OUTBOX_BENCH_SCALE)", scale());
    let mut rows = Vec::new();
    claim_throughput(&pg_url, &mut rows).await?;
    history_effect(&pg_url, &mut rows).await?;
    write_overhead(&pg_url, &mut rows).await?;
    notify_cost(&pg_url, &mut rows).await?;
    other_stores(&pg_url, &my_url, &mut rows).await?;
    print_table(&rows);
    Ok(())
}
