//! `outbox demo`: the embedded default. No configuration, nothing installed: a SQLite file
//! and the JSON-lines sink.
//!
//! 1. An order service writes orders and their events, each pair in one transaction; one
//!    order fails a business rule and rolls back with its event.
//! 2. A relay publishes a first batch and crashes before marking it published.
//! 3. The relay restarts (a second process would do the same): the crashed batch's lease
//!    runs out, and every committed event is delivered. The crashed batch goes out twice with
//!    the same event ids, which is how a consumer drops the copies.
//!
//! Events go to stdout (or `--out FILE`) as JSON lines; the story goes to stderr.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use outbox_core::{Envelope, EventId, PublishOutcome, Publisher, Relay, RelayConfig, TableName};
use outbox_sqlx::map_sqlx;
use outbox_sqlx::sqlite::{SqliteOutbox, SqliteStore, connect, migrate};

use crate::commands::CmdResult;
use crate::sink::JsonLines;

/// Options of `outbox demo`.
#[derive(Clone, Debug, Args)]
pub struct DemoArgs {
    /// The SQLite file (default: a fresh one in the temp folder).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Append events here instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How many orders to place.
    #[arg(long, default_value_t = 8)]
    pub orders: u32,
}

/// Records what reached the sink, and can "crash" after its first publish.
struct Watched {
    inner: JsonLines,
    delivered: Mutex<Vec<EventId>>,
    crash_after_first: bool,
    crashed: tokio::sync::Notify,
    published_once: std::sync::atomic::AtomicBool,
}

impl Watched {
    fn new(inner: JsonLines, crash_after_first: bool) -> Self {
        Watched {
            inner,
            delivered: Mutex::new(Vec::new()),
            crash_after_first,
            crashed: tokio::sync::Notify::new(),
            published_once: false.into(),
        }
    }

    /// The ids this publisher delivered so far.
    fn delivered(&self) -> Vec<EventId> {
        self.delivered.lock().map(|d| d.clone()).unwrap_or_default()
    }
}

impl Publisher for Watched {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        let out = self.inner.publish(events).await;
        if let Ok(mut d) = self.delivered.lock() {
            d.extend(
                events
                    .iter()
                    .zip(&out)
                    .filter(|(_, o)| o.is_published())
                    .map(|(e, _)| e.id()),
            );
        }
        if self.crash_after_first
            && !self
                .published_once
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            // The process dies after the broker took the batch, before the relay marks it.
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
        out
    }

    fn ordered_runs(&self) -> bool {
        self.inner.ordered_runs()
    }

    fn messaging_system(&self, event: &Envelope) -> &'static str {
        self.inner.messaging_system(event)
    }
}

fn order_event(order: u32, cents: u32) -> outbox_core::Result<Envelope> {
    Ok(
        Envelope::builder("order", format!("order-{order}"), "order.placed", "orders")
            .json(&serde_json::json!({ "order": order, "total_cents": cents }))
            .build()?,
    )
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> CmdResult {
    let path = args.db.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("outbox-demo-{}.db", std::process::id()))
    });
    let fresh = args.db.is_none();
    let pool = connect(&format!("sqlite://{}", path.display())).await?;
    let table = TableName::default();
    migrate(&pool, &table).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS demo_orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .map_err(|e| map_sqlx("creating demo_orders", e))?;
    eprintln!("outbox demo: SQLite database {}", path.display());

    // 1. The application.
    let outbox = SqliteOutbox::new(table.clone());
    let base: u32 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM demo_orders")
        .fetch_one(&pool)
        .await
        .map_err(|e| map_sqlx("reading demo_orders", e))?;
    let failing = base + args.orders.div_ceil(2);
    let mut committed = HashSet::new();
    for order in base + 1..=base + args.orders {
        let cents = if order == failing {
            0
        } else {
            1000 + 10 * order
        };
        let event = order_event(order, cents)?;
        let mut tx = pool.begin().await.map_err(|e| map_sqlx("begin", e))?;
        sqlx::query("INSERT INTO demo_orders (id, total_cents) VALUES (?, ?)")
            .bind(order)
            .bind(cents)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx("inserting an order", e))?;
        outbox.enqueue(&mut tx, &event).await?;
        if cents == 0 {
            tx.rollback().await.map_err(|e| map_sqlx("rollback", e))?;
            eprintln!("  order {order}: a business rule failed; order and event rolled back");
        } else {
            tx.commit().await.map_err(|e| map_sqlx("commit", e))?;
            committed.insert(event.id());
            eprintln!("  order {order}: committed with its event {}", event.id());
        }
    }

    let sink = || async {
        match &args.out {
            Some(p) => JsonLines::file(p).await,
            None => Ok(JsonLines::stdout()),
        }
    };
    let config = RelayConfig {
        batch_size: 3,
        concurrency: 1,
        lease: Duration::from_secs(1),
        publish_timeout: Duration::from_millis(800),
        poll_interval: Duration::from_millis(50),
        max_poll_interval: Duration::from_millis(200),
        ..RelayConfig::default()
    };
    let store = SqliteStore::new(pool.clone(), table);

    // 2. A relay that crashes between publishing and marking.
    let first = Arc::new(Watched::new(sink().await?, true));
    let relay = Relay::new(store.clone(), Arc::clone(&first), config.clone())?.with_name("relay-1");
    let task = tokio::spawn(async move { relay.run_once().await });
    first.crashed.notified().await;
    task.abort();
    let crashed = first.delivered();
    eprintln!(
        "  relay-1 published {} events and crashed before marking them",
        crashed.len()
    );

    // 3. The restart: the crashed batch's lease runs out, everything is delivered.
    tokio::time::sleep(config.lease).await;
    let second = Arc::new(Watched::new(sink().await?, false));
    let report = Relay::new(store.clone(), Arc::clone(&second), config)?
        .with_name("relay-2")
        .drain()
        .await?;
    let after = second.delivered();
    eprintln!(
        "  relay-2 restarted and published {} events",
        report.published
    );

    let all: Vec<EventId> = crashed.iter().chain(&after).copied().collect();
    let distinct: HashSet<EventId> = all.iter().copied().collect();
    let dupes = all.len() - distinct.len();
    pool.close().await;
    if fresh {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    if distinct != committed {
        return Err(format!(
            "delivered {} distinct events, but {} were committed",
            distinct.len(),
            committed.len()
        )
        .into());
    }
    eprintln!(
        "  {} committed events, all delivered; {dupes} re-sent after the crash carry the same ids; the rolled-back one never was",
        committed.len()
    );
    Ok(())
}
