//! Publish throughput to JetStream: the adapter next to async-nats' own publish loops, same
//! message size, same run. Prints a table; not a test.
//!
//! ```text
//! cargo run --release -p outbox-nats --example bench     # OUTBOX_TEST_NATS_URL, OUTBOX_BENCH_SCALE
//! ```

use std::time::Instant;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use outbox_core::{Envelope, Publisher};
use outbox_nats::{NatsConfig, NatsPublisher};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PAYLOAD: usize = 256;
const BATCH: usize = 100;

fn scaled(n: usize) -> usize {
    let s = std::env::var("OUTBOX_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(BATCH)
}

async fn fresh_stream(js: &jetstream::Context, name: &str) -> Res<()> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let url = std::env::var("OUTBOX_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let n = scaled(50_000);
    let name = format!("outbox_bench_{}", std::process::id());
    let subject = format!("{name}.events");
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let publisher = NatsPublisher::connect(NatsConfig::new(&url)).await?;
    let js = publisher.jetstream();
    let mut rows: Vec<(&str, f64)> = Vec::new();

    // Raw, one acknowledgement awaited per message: the naive loop.
    fresh_stream(&js, &name).await?;
    let naive_n = n / 10;
    let start = Instant::now();
    for _ in 0..naive_n {
        js.publish(subject.clone(), payload.clone()).await?.await?;
    }
    rows.push((
        "async-nats, await each ack",
        naive_n as f64 / start.elapsed().as_secs_f64(),
    ));

    // The same envelopes both pipelined loops send, so messages are byte-for-byte alike.
    let events: Vec<Envelope> = (0..n)
        .map(|i| {
            Envelope::builder("order", format!("o-{}", i % 1000), "order.placed", &subject)
                .with_payload(payload.clone(), "application/octet-stream")
                .build()
        })
        .collect::<Result<_, _>>()?;

    // Raw, pipelined: a batch of publishes, then its acknowledgements (the baseline). Header
    // maps are built before the clock starts, which favours this loop.
    fresh_stream(&js, &name).await?;
    let maps: Vec<async_nats::HeaderMap> = events
        .iter()
        .map(|e| {
            let mut h = async_nats::HeaderMap::new();
            for (k, v) in outbox_core::transport::message_headers(e) {
                h.insert(k, v);
            }
            h.insert("Nats-Msg-Id", e.id().to_string());
            h
        })
        .collect();
    let start = Instant::now();
    for chunk in maps.chunks(BATCH) {
        let mut acks = Vec::with_capacity(BATCH);
        for h in chunk {
            acks.push(
                js.publish_with_headers(subject.clone(), h.clone(), payload.clone())
                    .await?,
            );
        }
        for a in acks {
            a.await?;
        }
    }
    let raw = n as f64 / start.elapsed().as_secs_f64();
    rows.push(("async-nats, batch of 100 then acks", raw));

    // The adapter: envelopes published in batches of 100, as the relay does.
    fresh_stream(&js, &name).await?;
    let start = Instant::now();
    for chunk in events.chunks(BATCH) {
        for o in publisher.publish(chunk).await {
            if !o.is_published() {
                return Err(format!("publish failed: {o:?}").into());
            }
        }
    }
    rows.push((
        "outbox-nats NatsPublisher, batch of 100",
        n as f64 / start.elapsed().as_secs_f64(),
    ));
    js.delete_stream(&name).await?;

    println!("\nJetStream publish, {PAYLOAD}-byte payload, memory stream, {n} messages\n");
    println!(
        "| {:<42} | {:>10} | {:>24} |",
        "publisher", "msgs/s", "ratio to raw pipelined"
    );
    println!("|{}|{}|{}|", "-".repeat(44), "-".repeat(12), "-".repeat(26));
    for (what, rate) in rows {
        println!("| {what:<42} | {rate:>10.0} | {:>24.2} |", rate / raw);
    }
    Ok(())
}
