//! One trace from the writer's request to the consumer (`outbox-core`'s `opentelemetry`
//! feature), recorded by an in-process OpenTelemetry exporter, no collector.
//!
//! The writer builds its event inside a span and writes it with an outbox helper in its
//! own transaction; the relay publishes it to a real broker; the consumer reads the message,
//! takes its trace context and makes its own span a child. The chain every test checks:
//!
//! ```text
//! writer span ──parent──▶ "send <destination>" (relay, producer) ──parent──▶ consumer span
//! ```
//!
//! All three share one trace id, the `send` span carries the messaging attributes, and the
//! message carries the `send` span's context (not the writer's).

use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox_core::testkit::unique_name;
use outbox_core::{Envelope, TableName, TraceContext};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The exporter every span of this test binary goes to (one global subscriber: the relay's
/// spans may be opened on any worker thread).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-tests"));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("the only global subscriber of this test binary");
            (exporter, provider)
        })
        .0
}

/// Builds an event inside a finished "place order" span, as a request handler would;
/// returns it with the span's context.
fn write_in_span(destination: &str) -> (Envelope, SpanContext) {
    exporter();
    let request = tracing::info_span!("place order");
    let envelope = request.in_scope(|| {
        Envelope::builder("order", "o-1", "order.placed", destination)
            .json(&serde_json::json!({ "order": 1 }))
            .build()
            .expect("valid envelope")
    });
    let writer = request.context().span().span_context().clone();
    assert!(writer.is_valid(), "the writer's span is recorded");
    assert_eq!(
        envelope.trace(),
        TraceContext::from_span_context(&writer).as_ref(),
        "the builder took the current span's context without being told"
    );
    (envelope, writer)
}

/// The consumer's side: a "handle order" span made a child of the message's context.
fn consume_in_span(received: Option<TraceContext>) {
    let received = received.expect("the message carries a trace context");
    let span = tracing::info_span!("handle order");
    assert!(
        received.make_parent_of(&span),
        "parent set before the span starts"
    );
    span.in_scope(|| tracing::info!("handled"));
}

/// The finished spans of `trace`, once `names` are all among them (spans are exported as
/// they end; the relay's end when their call's outcomes are sorted).
async fn spans_of(writer: &SpanContext, names: &[&str]) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans: Vec<SpanData> = exporter()
            .get_finished_spans()
            .expect("finished spans")
            .into_iter()
            .filter(|s| s.span_context.trace_id() == writer.trace_id())
            .collect();
        let all = names.iter().all(|n| spans.iter().any(|s| s.name == *n));
        if all || tokio::time::Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Asserts the documented chain for `event`, published to `destination` on `system`.
async fn assert_one_trace(
    writer: &SpanContext,
    event: &Envelope,
    system: &str,
    sent_trace: Option<TraceContext>,
) {
    let send_name = format!("send {}", event.destination());
    let spans = spans_of(writer, &["place order", &send_name, "handle order"]).await;
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in the writer's trace: {spans:#?}"))
    };
    let (request, send, handle) = (
        named("place order"),
        named(&send_name),
        named("handle order"),
    );
    assert_eq!(request.span_context.span_id(), writer.span_id());
    assert_eq!(
        send.parent_span_id,
        writer.span_id(),
        "the relay's span is the writer's child"
    );
    assert!(send.parent_span_is_remote, "its parent came from the row");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.status, Status::Ok);
    assert_eq!(attribute(send, "messaging.system").as_deref(), Some(system));
    assert_eq!(
        attribute(send, "messaging.destination.name").as_deref(),
        Some(event.destination())
    );
    assert_eq!(
        attribute(send, "messaging.message.id"),
        Some(event.id().to_string())
    );
    assert_eq!(
        attribute(send, "messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(
        sent_trace,
        TraceContext::from_span_context(&send.span_context),
        "the message carries the relay's span, not the writer's"
    );
    assert_eq!(
        handle.parent_span_id,
        send.span_context.span_id(),
        "the consumer's span is the relay's child"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_relay_joins_writer_and_consumer() {
    let (event, writer) = write_in_span("orders");
    let store = outbox_core::InMemoryStore::new();
    store.enqueue_committed([event.clone()]).expect("enqueue");
    let publisher = outbox_core::InMemoryPublisher::new();
    outbox_tests::drain_into(store, publisher.clone(), 1).await;
    let sent = publisher
        .deliveries()
        .into_iter()
        .find(|d| d.envelope.id() == event.id())
        .expect("delivered")
        .envelope;
    consume_in_span(sent.trace().cloned());
    assert_one_trace(&writer, &event, "other", sent.trace().cloned()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_to_nats_one_trace() {
    let [nats_url, pg_url] = outbox_core::service_or_skip!("trace over NATS", [Nats, Postgres]);
    let stream_name = unique_name("trace");
    let (event, writer) = write_in_span(&format!("{stream_name}.orders"));

    // Writer: the event in the caller's transaction, with the sqlx helper.
    let pg = sqlx::PgPool::connect(&pg_url).await.expect("postgres");
    let table = TableName::parse(&unique_name("trace_outbox")).expect("name");
    outbox_sqlx::postgres::migrate(&pg, &table)
        .await
        .expect("migrate");
    let outbox = outbox_sqlx::postgres::PgOutbox::new(table.clone());
    let mut tx = pg.begin().await.expect("begin");
    outbox.enqueue(&mut tx, &event).await.expect("enqueue");
    tx.commit().await.expect("commit");

    // Relay: to a JetStream stream.
    let publisher = outbox_nats::NatsPublisher::connect(outbox_nats::NatsConfig::new(&nats_url))
        .await
        .expect("nats");
    let js = publisher.jetstream();
    let stream =
        outbox_tests::nats::memory_stream(&js, &stream_name, &format!("{stream_name}.>")).await;
    let store = outbox_sqlx::postgres::PgStore::new(pg.clone(), table);
    outbox_tests::drain_into(store, publisher, 1).await;

    // Consumer: a pull consumer on the stream.
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let message = batch.next().await.expect("one message").expect("message");
    assert_eq!(
        outbox_nats::consumer::event_id(&message).expect("id"),
        event.id()
    );
    let received = outbox_nats::consumer::trace_context(&message);
    consume_in_span(received.clone());
    assert_one_trace(&writer, &event, "nats", received).await;
    let _ = js.delete_stream(&stream_name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_outbox_to_rabbitmq_one_trace() {
    let [amqp_url, my_url] = outbox_core::service_or_skip!("trace over RabbitMQ", [Amqp, MySql]);
    let exchange = unique_name("trace");
    let queue = unique_name("trace_q");
    let (event, writer) = write_in_span(&format!("{exchange}/order.placed"));

    // Writer: the event in the caller's transaction, in a database of its own.
    let my = sqlx::MySqlPool::connect(&my_url).await.expect("mariadb");
    let table = TableName::with_schema(&unique_name("trace"), "outbox_events").expect("name");
    outbox_sqlx::mysql::migrate(&my, &table)
        .await
        .expect("migrate");
    let outbox = outbox_sqlx::mysql::MySqlOutbox::new(table.clone());
    let mut tx = my.begin().await.expect("begin");
    outbox.enqueue(&mut tx, &event).await.expect("enqueue");
    tx.commit().await.expect("commit");

    // Relay: to a topic exchange with a queue bound.
    let (_conn, channel) = outbox_tests::amqp::admin(&amqp_url).await;
    outbox_tests::amqp::topic_queue(&channel, &exchange, &queue).await;
    let publisher = outbox_amqp::AmqpPublisher::connect(outbox_amqp::AmqpConfig::new(&amqp_url))
        .await
        .expect("rabbitmq");
    let store = outbox_sqlx::mysql::MySqlStore::new(my.clone(), table.clone());
    outbox_tests::drain_into(store, publisher, 1).await;

    // Consumer: basic.get on the queue.
    let got = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("one message");
    let properties = &got.delivery.properties;
    assert_eq!(
        outbox_amqp::consumer::event_id(properties).expect("id"),
        event.id()
    );
    let received = outbox_amqp::consumer::trace_context(properties);
    consume_in_span(received.clone());
    assert_one_trace(&writer, &event, "rabbitmq", received).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {}",
        table.schema().unwrap_or_default()
    )))
    .execute(&my)
    .await;
}
