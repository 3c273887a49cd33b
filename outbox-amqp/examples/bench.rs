//! Publish throughput to RabbitMQ: the adapter next to lapin's own publish loops (confirms
//! on, same payload and headers), same run. Prints a table; not a test.
//!
//! ```text
//! cargo run --release -p outbox-amqp --example bench     # OUTBOX_TEST_AMQP_URL, OUTBOX_BENCH_SCALE
//! ```

use std::time::Instant;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use outbox_amqp::{AmqpConfig, AmqpPublisher};
use outbox_core::{Envelope, Publisher, transport};

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

fn properties(e: &Envelope) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in transport::message_headers(e) {
        headers.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v)),
        );
    }
    BasicProperties::default()
        .with_message_id(e.id().to_string().into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let url = std::env::var("OUTBOX_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let n = scaled(30_000);
    let queue = format!("outbox_bench_{}", std::process::id());
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let purge = || async {
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(|_| ())
    };
    let payload = vec![b'x'; PAYLOAD];
    let events: Vec<Envelope> = (0..n)
        .map(|i| {
            Envelope::builder(
                "order",
                format!("o-{}", i % 1000),
                "order.placed",
                format!("/{queue}"),
            )
            .with_payload(payload.clone(), "application/octet-stream")
            .build()
        })
        .collect::<Result<_, _>>()?;
    let props: Vec<BasicProperties> = events.iter().map(properties).collect();
    let mut rows: Vec<(&str, f64)> = Vec::new();

    purge().await?;
    let naive_n = n / 10;
    let start = Instant::now();
    for p in props.iter().take(naive_n) {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &payload,
            p.clone(),
        )
        .await?
        .await?;
    }
    rows.push((
        "lapin, await each confirm",
        naive_n as f64 / start.elapsed().as_secs_f64(),
    ));

    // The baseline: a batch of publishes, then its confirms; properties built beforehand.
    purge().await?;
    let start = Instant::now();
    for chunk in props.chunks(BATCH) {
        let mut confirms = Vec::with_capacity(BATCH);
        for p in chunk {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    p.clone(),
                )
                .await?,
            );
        }
        for c in confirms {
            c.await?;
        }
    }
    let raw = n as f64 / start.elapsed().as_secs_f64();
    rows.push(("lapin, batch of 100 then confirms", raw));

    purge().await?;
    let publisher = AmqpPublisher::connect(AmqpConfig::new(&url)).await?;
    let start = Instant::now();
    for chunk in events.chunks(BATCH) {
        for o in publisher.publish(chunk).await {
            if !o.is_published() {
                return Err(format!("publish failed: {o:?}").into());
            }
        }
    }
    rows.push((
        "outbox-amqp AmqpPublisher, batch of 100",
        n as f64 / start.elapsed().as_secs_f64(),
    ));
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;

    println!("\nRabbitMQ publish, confirms on, {PAYLOAD}-byte payload, persistent, {n} messages\n");
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
