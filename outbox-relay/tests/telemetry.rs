//! `outbox run` exporting spans over OTLP/HTTP (feature `opentelemetry`): a collector
//! stand-in on a loopback port receives the relay's `send` span, child of the trace the
//! writer stored with its event, and the published message carries that span.

#![cfg(feature = "opentelemetry")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::testkit::unique_name;
use outbox_core::{Envelope, TraceContext};
use outbox_tests::RelayProcess;

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

/// An OTLP/HTTP receiver: every request body it was sent, answered `200 {}`.
fn collector() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                // Requests on one kept-alive connection, until it closes.
                loop {
                    let mut length = None;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse::<usize>().ok();
                        }
                    }
                    let mut body = vec![0; length.unwrap_or(0)];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Ok(mut s) = seen.lock() {
                        s.push(String::from_utf8_lossy(&body).into_owned());
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, bodies)
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(unique_name(name))
}

/// The spans of every export request (OTLP/JSON), with their resource's `service.name`.
fn exported_spans(bodies: &[String]) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for b in bodies {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(b) else {
            continue;
        };
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((service.clone(), span.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exports_the_send_span_into_the_writers_trace() {
    let (port, bodies) = collector();
    let db = temp("outbox_otel").with_extension("db");
    let sink = temp("outbox_otel_sink").with_extension("jsonl");
    let config = temp("outbox_otel").with_extension("toml");
    std::fs::write(
        &config,
        format!(
            r#"default_publisher = "audit"

[sources.lite]
url = "sqlite://{}"
[sources.lite.relay]
poll_interval = "20ms"

[publishers.audit]
kind = "file"
path = "{}"

[telemetry]
otlp_endpoint = "http://127.0.0.1:{port}"
protocol = "http/json"
service_name = "relay-under-test"
"#,
            db.display(),
            sink.display()
        ),
    )
    .expect("config");
    outbox_tests::migrate(BIN, &config);

    // The writer's request span, as its service stored it with the event.
    let writer_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let writer_span = "00f067aa0ba902b7";
    let event = Envelope::builder("order", "o-1", "order.placed", "audit")
        .json(&serde_json::json!({ "order": 1 }))
        .with_trace(
            TraceContext::new(format!("00-{writer_trace}-{writer_span}-01"), None).expect("trace"),
        )
        .build()
        .expect("event");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("sqlite");
    let mut tx = pool.begin().await.expect("begin");
    outbox_sqlx::sqlite::SqliteOutbox::default()
        .enqueue(&mut tx, &event)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let relay = RelayProcess::start(BIN, &config);
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&sink).unwrap_or_default();
        if let Some(l) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(l).expect("a JSON line");
        }
        assert!(
            Instant::now() < deadline,
            "the event never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // SIGTERM: the exporter sends what it still holds before the process exits.
    assert!(relay.sigterm().success());

    let deadline = Instant::now() + Duration::from_secs(10);
    let (service, send) = loop {
        let spans = exported_spans(&bodies.lock().map(|b| b.clone()).unwrap_or_default());
        if let Some(found) = spans.into_iter().find(|(_, s)| s["name"] == "send audit") {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no `send audit` span was exported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(service, "relay-under-test");
    assert_eq!(send["traceId"], writer_trace, "{send}");
    assert_eq!(send["parentSpanId"], writer_span, "{send}");
    assert_eq!(send["kind"], 4, "SPAN_KIND_PRODUCER: {send}");
    let attr = |key: &str| {
        send["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == key)
            .map(|a| a["value"]["stringValue"].clone())
    };
    assert_eq!(
        attr("messaging.message.id"),
        Some(event.id().to_string().into())
    );
    assert_eq!(attr("messaging.destination.name"), Some("audit".into()));
    let span_id = send["spanId"].as_str().expect("span id");
    assert_eq!(
        line["traceparent"],
        format!("00-{writer_trace}-{span_id}-01"),
        "the message carries the relay's span"
    );
    for f in [db, sink, config] {
        let _ = std::fs::remove_file(f);
    }
}
