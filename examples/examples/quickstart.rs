//! The outbox in one file, with nothing to install: an order service writes orders and
//! their events in one transaction, a transaction rolls back, the relay crashes between
//! publishing and marking, and a second relay finishes the job. Every committed event
//! arrives; the rolled-back one never does; the duplicate the crash causes carries the
//! same event id, so the consumer drops it.
//!
//! Run: `cargo run -p outbox-examples --example quickstart`

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::{Envelope, InMemoryPublisher, InMemoryStore, Relay, RelayConfig, Store};

fn order_placed(order: u32, cents: u32) -> outbox_core::Result<Envelope> {
    Ok(
        Envelope::builder("order", format!("order-{order}"), "order.placed", "orders")
            .json(&serde_json::json!({ "order": order, "total_cents": cents }))
            .build()?,
    )
}

#[tokio::main]
async fn main() -> outbox_core::Result<()> {
    let store = InMemoryStore::new();
    let broker = InMemoryPublisher::new();

    // 1. The application: each order and its event commit together.
    for order in 1..=3 {
        let mut tx = store.begin();
        tx.enqueue(order_placed(order, 1000 * order)?);
        tx.commit()?;
    }
    // An order whose transaction fails: its event must never be published.
    let mut tx = store.begin();
    tx.enqueue(order_placed(99, 1)?);
    tx.rollback();

    // 2. A relay claims the batch, publishes it, and crashes before it can mark it.
    let lease = Duration::from_millis(200);
    let claim = store.claim(100, lease).await?;
    let envelopes: Vec<Envelope> = claim.events.iter().map(|e| e.envelope.clone()).collect();
    outbox_core::Publisher::publish(&broker, &envelopes).await;
    drop(claim);
    println!(
        "relay 1 published {} events and crashed before marking them",
        envelopes.len()
    );

    // 3. Its lease expires; a second relay publishes everything still unmarked.
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    let config = RelayConfig {
        lease: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(1),
        ..RelayConfig::default()
    };
    let relay = Relay::new(store.clone(), broker.clone(), config)?;
    let report = relay.drain().await?;
    println!("relay 2 published {} events", report.published);

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
                "duplicate_dropped": duplicate,
            })
        );
    }
    assert_eq!(
        seen.len(),
        3,
        "every committed event arrives, and only those"
    );
    println!(
        "{} distinct events delivered; the rolled-back order 99 never was",
        seen.len()
    );
    Ok(())
}
