//! The outbox in one file, with nothing to install: an order service writes orders and
//! their events in one SQLite transaction, a transaction rolls back, the relay crashes
//! between publishing and marking, and a second relay finishes the job. Every committed
//! event arrives; the rolled-back one never does; the duplicate the crash causes carries
//! the same event id, so the consumer drops it. Events are printed as JSON lines.
//!
//! Run: `cargo run -p outbox-examples --example quickstart`
//! (the database is `outbox-quickstart.db` in the system's temp folder, made afresh).

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::{
    Envelope, Error, ErrorKind, InMemoryPublisher, Publisher, Relay, RelayConfig, Store, TableName,
};
use outbox_sqlx::map_sqlx;
use outbox_sqlx::sqlite::{SqliteOutbox, SqliteStore, connect, migrate};

fn order_placed(order: u32, cents: u32) -> outbox_core::Result<Envelope> {
    Ok(
        Envelope::builder("order", format!("order-{order}"), "order.placed", "orders")
            .json(&serde_json::json!({ "order": order, "total_cents": cents }))
            .build()?,
    )
}

#[tokio::main]
async fn main() -> outbox_core::Result<()> {
    let path = std::env::temp_dir().join("outbox-quickstart.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let pool = connect(&format!("sqlite://{}", path.display())).await?;
    let table = TableName::default();
    migrate(&pool, &table).await?;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .map_err(|e| map_sqlx("creating the orders table", e))?;
    let outbox = SqliteOutbox::new(table.clone());
    let store = SqliteStore::new(pool.clone(), table);
    let broker = InMemoryPublisher::new();

    // 1. The application: each order and its event commit together; order 99 rolls back.
    for (order, commit) in [(1, true), (2, true), (3, true), (99, false)] {
        let mut tx = pool.begin().await.map_err(|e| map_sqlx("begin", e))?;
        sqlx::query("INSERT INTO orders (id, total_cents) VALUES (?, ?)")
            .bind(order)
            .bind(1000 * order)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx("inserting an order", e))?;
        outbox
            .enqueue(&mut tx, &order_placed(order, 1000 * order)?)
            .await?;
        if commit {
            tx.commit().await.map_err(|e| map_sqlx("commit", e))?;
        } else {
            tx.rollback().await.map_err(|e| map_sqlx("rollback", e))?;
        }
    }

    // 2. A relay claims the batch, publishes it, and crashes before it can mark it.
    let lease = Duration::from_millis(300);
    let claim = store.claim(100, lease).await?;
    let envelopes: Vec<Envelope> = claim.events.iter().map(|e| e.envelope.clone()).collect();
    broker.publish(&envelopes).await;
    drop(claim);
    eprintln!(
        "relay 1 published {} events and crashed before marking them",
        envelopes.len()
    );

    // 3. Its lease expires; a second relay publishes everything still unmarked.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let config = RelayConfig {
        lease: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(1),
        ..RelayConfig::default()
    };
    let report = Relay::new(store.clone(), broker.clone(), config)?
        .drain()
        .await?;
    eprintln!("relay 2 published {} events", report.published);

    // 4. The consumer deduplicates by event id.
    let mut seen = HashSet::new();
    for delivery in broker.deliveries() {
        let env = &delivery.envelope;
        let duplicate = !seen.insert(env.id());
        println!(
            "{}",
            serde_json::json!({
                "event_id": env.id().to_string(),
                "type": env.event_type(),
                "key": env.ordering_key(),
                "payload": serde_json::from_slice::<serde_json::Value>(env.payload()).unwrap_or_default(),
                "duplicate_dropped_by_consumer": duplicate,
            })
        );
    }
    if seen.len() != 3 {
        return Err(Error::new(
            ErrorKind::Other,
            format!("expected 3 distinct events, got {}", seen.len()),
        ));
    }
    eprintln!(
        "3 distinct events delivered, once each after dedupe; the rolled-back order 99 never was"
    );
    Ok(())
}
