//! A small diesel service: each order and its event are written in one
//! `conn.transaction(...)`, a failed order rolls both back, and a relay publishes exactly the
//! committed events. Runs on a temporary SQLite file; nothing to install.
//!
//! ```text
//! cargo run -p outbox-examples --example diesel_orders
//! ```

use std::time::Duration;

use diesel::prelude::*;
use outbox_core::{Envelope, InMemoryPublisher, Relay, RelayConfig, TableName};
use outbox_diesel::sqlite::{enqueue, run_migrations};

diesel::table! {
    /// The service's own table.
    orders (id) {
        /// Order id.
        id -> Integer,
        /// Total in cents.
        total_cents -> BigInt,
    }
}

/// Places an order: the row and its event commit together, or not at all.
fn place_order(conn: &mut SqliteConnection, id: i32, total_cents: i64) -> QueryResult<()> {
    let event = Envelope::builder("order", format!("o-{id}"), "order.placed", "orders")
        .json(&serde_json::json!({ "order_id": id, "total_cents": total_cents }))
        .build()
        .map_err(|e| diesel::result::Error::QueryBuilderError(Box::new(e)))?;
    conn.transaction(|conn| {
        diesel::insert_into(orders::table)
            .values((orders::id.eq(id), orders::total_cents.eq(total_cents)))
            .execute(conn)?;
        enqueue(conn, &event)?;
        if total_cents <= 0 {
            // A business rule fails after both writes: the transaction rolls back.
            return Err(diesel::result::Error::RollbackTransaction);
        }
        Ok(())
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("outbox_diesel_{}.db", std::process::id()));
    {
        let mut conn = SqliteConnection::establish(&path.display().to_string())?;
        run_migrations(&mut conn)?;
        diesel::sql_query(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents BIGINT NOT NULL)",
        )
        .execute(&mut conn)?;
        for (id, total) in [(1, 4200), (2, 0), (3, 990)] {
            match place_order(&mut conn, id, total) {
                Ok(()) => println!("order {id}: committed with its event"),
                Err(e) => println!("order {id}: rolled back ({e})"),
            }
        }
    }

    // The relay reads the same file; every outbox crate writes the one table schema.
    let pool = outbox_sqlx::sqlite::connect(&format!("sqlite://{}", path.display())).await?;
    let store = outbox_sqlx::sqlite::SqliteStore::new(pool.clone(), TableName::default());
    let publisher = InMemoryPublisher::new();
    let config = RelayConfig {
        lease: Duration::from_secs(10),
        publish_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    };
    let report = Relay::new(store, publisher.clone(), config)?
        .drain()
        .await?;
    for d in publisher.deliveries() {
        println!(
            "published {} for {} to {}",
            d.envelope.event_type(),
            d.envelope.aggregate_id(),
            d.envelope.destination()
        );
    }
    let ok = report.published == 2
        && publisher
            .deliveries()
            .iter()
            .all(|d| d.envelope.aggregate_id() != "o-2");
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if !ok {
        return Err("expected exactly the two committed orders' events".into());
    }
    println!("exactly the committed events were published");
    Ok(())
}
