//! An order service and an idempotent shipping consumer.
//!
//! ```text
//! orders service ──(diesel-async, PostgreSQL: order row + outbox row in one transaction)
//!        │
//!      relay (DieselPgStore) ──> RabbitMQ queue ──> shipping consumer
//!                                                    (diesel-async, MariaDB: inbox record +
//!                                                     shipment row in one transaction)
//! ```
//!
//! The consumer acknowledges each message only after its transaction committed. To show
//! what redelivery does, it *refuses* every first delivery after committing (as if it had
//! crashed before the ack), so RabbitMQ delivers every message twice. The inbox turns the
//! second delivery into a no-op: each order ships exactly once. The example checks that
//! and exits with an error if not.
//!
//! It also traces (OpenTelemetry through `tracing`, spans kept in memory): each order is
//! placed in a `place order` span, the relay publishes it in a `send` span that is its
//! child, and the consumer handles each delivery in a `ship order` span made a child of
//! the message's context. The example prints the first order's trace and checks that every
//! committed order has this one trace.
//!
//! Needs PostgreSQL, MariaDB and RabbitMQ (`scripts/services.sh` starts them):
//!
//! ```text
//! cargo run -p outbox-examples --example order_shipping
//! ```
//!
//! URLs come from `OUTBOX_TEST_POSTGRES_URL`, `OUTBOX_TEST_MYSQL_URL` and
//! `OUTBOX_TEST_AMQP_URL` (defaults: the local services). Each run works in databases and
//! a queue of its own and removes them afterwards.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use outbox_amqp::{AmqpConfig, AmqpPublisher};
use outbox_core::schema::Dialect;
use outbox_core::{Envelope, Relay, RelayConfig, TableName};
use outbox_diesel::DieselPgStore;
use outbox_diesel::inbox::Inbox;
use outbox_sql::create_table_sql;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

diesel::table! {
    /// The order service's own table.
    orders (id) {
        /// Order id.
        id -> Text,
        /// Total in cents.
        total_cents -> BigInt,
    }
}

diesel::table! {
    /// The shipping service's own table. No unique key on `order_id`: a duplicate effect
    /// would show as a second row, which the example checks for.
    shipments (id) {
        /// Row id.
        id -> BigInt,
        /// The order shipped.
        order_id -> Text,
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// `url` with its database path replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/{db}")
}

/// Places an order: the row and its event commit together, or not at all.
async fn place_order(
    conn: &mut AsyncPgConnection,
    queue: &str,
    n: usize,
) -> Result<bool, BoxError> {
    let order_id = format!("o-{n}");
    let total_cents = i64::try_from(n * 250)?;
    // The request's span; the envelope takes its trace context without being told.
    let request = tracing::info_span!("place order", order_id = %order_id);
    let event = request.in_scope(|| {
        Envelope::builder("order", &order_id, "order.placed", format!("/{queue}"))
            .json(&serde_json::json!({ "order_id": order_id, "total_cents": total_cents }))
            .build()
    })?;
    // Every seventh order breaks a business rule after both writes: it rolls back.
    let fails = n.is_multiple_of(7);
    let result = conn
        .transaction::<(), diesel::result::Error, _>(async move |conn| {
            diesel::insert_into(orders::table)
                .values((
                    orders::id.eq(&order_id),
                    orders::total_cents.eq(total_cents),
                ))
                .execute(conn)
                .await?;
            outbox_diesel::pg::enqueue_async(conn, &event).await?;
            if fails {
                return Err(diesel::result::Error::RollbackTransaction);
            }
            Ok(())
        })
        .instrument(request)
        .await;
    match result {
        Ok(()) => Ok(true),
        Err(diesel::result::Error::RollbackTransaction) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Ships an order once: the inbox record and the shipment commit together.
async fn ship(
    conn: &mut AsyncMysqlConnection,
    inbox: &Inbox,
    delivery: &lapin::message::Delivery,
) -> Result<bool, BoxError> {
    let event_id = outbox_amqp::consumer::event_id(&delivery.properties)?;
    let body: serde_json::Value = serde_json::from_slice(&delivery.data)?;
    let order_id = body["order_id"]
        .as_str()
        .ok_or("payload has no order_id")?
        .to_owned();
    // The consumer's span continues the relay's, which continues the order request's.
    let span = tracing::info_span!("ship order", order_id = %order_id, otel.kind = "consumer");
    if let Some(trace) = outbox_amqp::consumer::trace_context(&delivery.properties) {
        trace.make_parent_of(&span);
    }
    let inbox = inbox.clone();
    let new = conn
        .transaction::<bool, diesel::result::Error, _>(async move |conn| {
            if !inbox.record_async(conn, event_id).await?.is_new() {
                return Ok(false);
            }
            diesel::insert_into(shipments::table)
                .values(shipments::order_id.eq(&order_id))
                .execute(conn)
                .await?;
            Ok(true)
        })
        .instrument(span)
        .await?;
    Ok(new)
}

/// Spans go to `tracing`, and through its OpenTelemetry layer into memory.
fn start_tracing() -> InMemorySpanExporter {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("order_shipping"));
    tracing_subscriber::registry().with(layer).init();
    exporter
}

/// The spans of `trace`'s tree below `parent`, printed with their depth.
fn print_tree(spans: &[SpanData], parent: SpanId, depth: usize) {
    for s in spans.iter().filter(|s| s.parent_span_id == parent) {
        println!(
            "{}{} (span {})",
            "    ".repeat(depth),
            s.name,
            s.span_context.span_id()
        );
        print_tree(spans, s.span_context.span_id(), depth + 1);
    }
}

/// Checks that each committed order's trace runs writer -> relay -> consumer, and prints
/// the first one.
fn check_traces(exporter: &InMemorySpanExporter, committed: &[String]) -> Result<(), BoxError> {
    let spans = exporter.get_finished_spans()?;
    let attr = |s: &SpanData, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let mut whole = 0;
    for (n, order) in committed.iter().enumerate() {
        let request = spans
            .iter()
            .find(|s| s.name == "place order" && attr(s, "order_id").as_deref() == Some(order))
            .ok_or_else(|| format!("no `place order` span for {order}"))?;
        let trace: Vec<SpanData> = spans
            .iter()
            .filter(|s| s.span_context.trace_id() == request.span_context.trace_id())
            .cloned()
            .collect();
        let send = trace.iter().find(|s| {
            s.parent_span_id == request.span_context.span_id() && s.name.starts_with("send ")
        });
        let shipped = send.is_some_and(|send| {
            trace
                .iter()
                .any(|s| s.name == "ship order" && s.parent_span_id == send.span_context.span_id())
        });
        if shipped {
            whole += 1;
        }
        if n == 0 {
            println!(
                "\ntrace {} (order {order}):",
                request.span_context.trace_id()
            );
            print_tree(&trace, SpanId::INVALID, 1);
        }
    }
    println!(
        "{whole} of {} committed orders: one trace from the order request through the relay to the shipping consumer",
        committed.len()
    );
    if whole != committed.len() {
        return Err("some orders' traces do not run order request -> relay -> consumer".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let spans = start_tracing();
    let pg_url = env_or(
        "OUTBOX_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let my_url = env_or("OUTBOX_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
    let amqp_url = env_or(
        "OUTBOX_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let run = format!("{}_{}", std::process::id(), fastrand::u32(..));
    let (orders_db, shipping_db, queue) = (
        format!("ex_orders_{run}"),
        format!("ex_shipping_{run}"),
        format!("ex_orders_{run}"),
    );

    // Set-up: a database per service, the outbox table, the inbox table, a queue.
    let mut pg_admin = AsyncPgConnection::establish(&pg_url).await?;
    diesel::sql_query(format!("CREATE DATABASE {orders_db}"))
        .execute(&mut pg_admin)
        .await?;
    let orders_url = with_database(&pg_url, &orders_db);
    let mut my_admin = AsyncMysqlConnection::establish(&my_url).await?;
    diesel::sql_query(format!("CREATE DATABASE {shipping_db}"))
        .execute(&mut my_admin)
        .await?;
    let shipping_url = with_database(&my_url, &shipping_db);

    let outcome = run_example(&orders_url, &shipping_url, &amqp_url, &queue, &spans).await;

    // Clean-up, whatever happened.
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {orders_db} WITH (FORCE)"))
        .execute(&mut pg_admin)
        .await;
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {shipping_db}"))
        .execute(&mut my_admin)
        .await;
    if let Ok(conn) =
        lapin::Connection::connect(amqp_url.as_str(), lapin::ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    outcome
}

async fn run_example(
    orders_url: &str,
    shipping_url: &str,
    amqp_url: &str,
    queue: &str,
    spans: &InMemorySpanExporter,
) -> Result<(), BoxError> {
    let mut orders_conn = AsyncPgConnection::establish(orders_url).await?;
    for stmt in create_table_sql(&TableName::default(), Dialect::Postgres) {
        diesel::sql_query(stmt).execute(&mut orders_conn).await?;
    }
    diesel::sql_query("CREATE TABLE orders (id TEXT PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .execute(&mut orders_conn)
        .await?;
    let mut shipping_conn = AsyncMysqlConnection::establish(shipping_url).await?;
    let inbox = Inbox::new("shipping")?;
    inbox.migrate_async(&mut shipping_conn).await?;
    diesel::sql_query("CREATE TABLE shipments (id BIGINT AUTO_INCREMENT PRIMARY KEY, order_id VARCHAR(64) NOT NULL)")
        .execute(&mut shipping_conn)
        .await?;
    let amqp = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // 1. The order service.
    let mut committed = Vec::new();
    let mut rolled_back = 0;
    for n in 1..=30 {
        if place_order(&mut orders_conn, queue, n).await? {
            committed.push(format!("o-{n}"));
        } else {
            rolled_back += 1;
        }
    }
    println!(
        "orders: {} committed with their events, {rolled_back} rolled back with theirs",
        committed.len()
    );

    // 2. The relay: outbox table -> RabbitMQ (publisher confirms, message_id = event id).
    let store = DieselPgStore::connect(orders_url, TableName::default(), 4).await?;
    let publisher = AmqpPublisher::connect(AmqpConfig::new(amqp_url)).await?;
    let config = RelayConfig {
        lease: Duration::from_secs(10),
        publish_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    };
    let report = Relay::new(store, publisher, config)?.drain().await?;
    println!(
        "relay: {} published, {} dead",
        report.published, report.dead_lettered
    );

    // 3. The shipping consumer: every first delivery is refused after its commit, so the
    //    broker redelivers every message.
    let (mut deliveries, mut new, mut duplicates) = (0usize, 0usize, 0usize);
    let mut idle_since = tokio::time::Instant::now();
    while idle_since.elapsed() < Duration::from_secs(2) {
        let Some(msg) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        idle_since = tokio::time::Instant::now();
        let delivery = msg.delivery;
        deliveries += 1;
        if ship(&mut shipping_conn, &inbox, &delivery).await? {
            new += 1;
        } else {
            duplicates += 1;
        }
        if delivery.redelivered {
            delivery.acker.ack(BasicAckOptions::default()).await?;
        } else {
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
    }

    // 4. Check: every committed order shipped exactly once, nothing else shipped.
    let shipped: Vec<String> = shipments::table
        .select(shipments::order_id)
        .load(&mut shipping_conn)
        .await?;
    let mut per_order: HashMap<&str, usize> = HashMap::new();
    for o in &shipped {
        *per_order.entry(o.as_str()).or_default() += 1;
    }
    println!();
    println!("| measure                          | value |");
    println!("|----------------------------------|-------|");
    println!(
        "| orders committed                 | {:>5} |",
        committed.len()
    );
    println!("| messages delivered to shipping   | {deliveries:>5} |");
    println!("| first deliveries (shipped)       | {new:>5} |");
    println!("| redeliveries (inbox: duplicate)  | {duplicates:>5} |");
    println!(
        "| shipment rows                    | {:>5} |",
        shipped.len()
    );
    let once = committed
        .iter()
        .all(|o| per_order.get(o.as_str()) == Some(&1));
    if !once
        || shipped.len() != committed.len()
        || deliveries != 2 * committed.len()
        || duplicates != committed.len()
    {
        return Err(format!(
            "expected each of {} orders delivered twice and shipped once; got {deliveries} deliveries, {} shipments",
            committed.len(),
            shipped.len()
        )
        .into());
    }
    println!("\nevery order was delivered twice and shipped exactly once");
    check_traces(spans, &committed)
}
