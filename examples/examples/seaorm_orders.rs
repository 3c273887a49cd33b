//! A small SeaORM service: each order and its event are written in one SeaORM transaction,
//! a failed order rolls both back, and the relay (on SeaORM's own pool) publishes exactly the
//! committed events. Runs on a temporary SQLite file; nothing to install.
//!
//! ```text
//! cargo run -p outbox-examples --example seaorm_orders
//! ```

use std::time::Duration;

use outbox_core::{Envelope, Error, ErrorKind, InMemoryPublisher, Relay, RelayConfig};
use outbox_seaorm::{OutboxMigrator, enqueue, map_db_err};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, Statement, TransactionError, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

/// Places an order: the business row and its event commit together, or not at all.
async fn place_order(
    db: &DatabaseConnection,
    id: u32,
    total_cents: i64,
) -> outbox_core::Result<()> {
    let event = Envelope::builder("order", format!("o-{id}"), "order.placed", "orders")
        .json(&serde_json::json!({ "order_id": id, "total_cents": total_cents }))
        .build()?;
    db.transaction::<_, (), Error>(|txn| {
        Box::pin(async move {
            txn.execute_raw(Statement::from_sql_and_values(
                txn.get_database_backend(),
                "INSERT INTO orders (id, total_cents) VALUES (?, ?)",
                [id.into(), total_cents.into()],
            ))
            .await
            .map_err(|e| map_db_err("inserting the order", e))?;
            enqueue(txn, &event).await?;
            if total_cents <= 0 {
                // A business rule fails after both writes: the transaction rolls back.
                return Err(Error::new(
                    ErrorKind::Rejected,
                    "an order must cost something",
                ));
            }
            Ok(())
        })
    })
    .await
    .map_err(|e| match e {
        TransactionError::Connection(db) => map_db_err("order transaction", db),
        TransactionError::Transaction(e) => e,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("outbox_seaorm_{}.db", std::process::id()));
    let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display())).await?;
    OutboxMigrator::up(&db, None).await?;
    db.execute_unprepared(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total_cents INTEGER NOT NULL)",
    )
    .await?;

    for (id, total) in [(1, 4200), (2, 0), (3, 990)] {
        match place_order(&db, id, total).await {
            Ok(()) => println!("order {id}: committed with its event"),
            Err(e) => println!("order {id}: rolled back ({e})"),
        }
    }

    let publisher = InMemoryPublisher::new();
    let config = RelayConfig {
        lease: Duration::from_secs(10),
        publish_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    };
    let relay = Relay::new(outbox_seaorm::store(&db)?, publisher.clone(), config)?;
    let report = relay.drain().await?;
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
    db.close().await?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if !ok {
        return Err("expected exactly the two committed orders' events".into());
    }
    println!("exactly the committed events were published");
    Ok(())
}
