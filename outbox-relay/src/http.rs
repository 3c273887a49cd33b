//! The relay's HTTP endpoint: Prometheus metrics at `/metrics`, readiness at `/healthz`
//! (200 only when every source answers and every broker endpoint accepts a connection).
//! A deliberately small HTTP/1.1 responder: two GET routes, no keep-alive.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use outbox_core::CountingMetrics;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Asks a source's database whether it answers; the error says why not.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// One relayed source: an outbox table (`[sources.*]`) or an event table
/// (`[event_tables.*]`). Both report under the same metric names, labelled by `name`.
pub struct WatchedSource {
    /// The source's name in the config file.
    pub name: String,
    /// The readiness check.
    pub probe: Probe,
    /// The counters its relay reports to.
    pub metrics: Arc<CountingMetrics>,
}

/// What the endpoint reports on.
pub struct HttpState {
    /// Sources with their relay's counters.
    pub sources: Vec<WatchedSource>,
    /// Publishers and the `host:port` they talk to, where there is one to probe.
    pub brokers: Vec<(String, Option<String>)>,
}

/// Binds `addr`, then serves until `stop` turns true.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<HttpState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics and health endpoint listening");
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut conn, _)) = accepted else { continue };
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        // Read until the end of the headers (a request may arrive in pieces).
                        let mut buf = Vec::with_capacity(1024);
                        let read_head = async {
                            let mut chunk = [0u8; 1024];
                            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                                match conn.read(&mut chunk).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                        };
                        if tokio::time::timeout(Duration::from_secs(5), read_head).await.is_err() {
                            return;
                        }
                        let request = String::from_utf8_lossy(&buf);
                        let path = request.split_whitespace().nth(1).unwrap_or("/");
                        let (status, ctype, body) = match path {
                            "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(&state)),
                            "/healthz" => {
                                let (ok, body) = health(&state).await;
                                (if ok { "200 OK" } else { "503 Service Unavailable" }, "application/json", body)
                            }
                            _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(reply.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    });
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }))
}

/// Label values escaped for the Prometheus text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A counter's name, help text and reading.
type Counter = (
    &'static str,
    &'static str,
    fn(&outbox_core::metrics::MetricsSnapshot) -> f64,
);

fn metrics(state: &HttpState) -> String {
    let mut out = String::new();
    let counters: [Counter; 9] = [
        ("outbox_published_total", "Events published.", |s| {
            s.published as f64
        }),
        ("outbox_claimed_rows_total", "Rows claimed.", |s| {
            s.claimed_rows as f64
        }),
        ("outbox_claims_total", "Claims made.", |s| s.claims as f64),
        ("outbox_retried_total", "Events scheduled for retry.", |s| {
            s.retried as f64
        }),
        ("outbox_dead_lettered_total", "Events dead-lettered.", |s| {
            s.dead_lettered as f64
        }),
        ("outbox_fenced_total", "Marks refused by fencing.", |s| {
            s.fenced as f64
        }),
        (
            "outbox_out_of_order_total",
            "Events the broker acknowledged ahead of an earlier event of their key that failed.",
            |s| s.out_of_order as f64,
        ),
        ("outbox_store_errors_total", "Store errors.", |s| {
            s.store_errors as f64
        }),
        (
            "outbox_publish_seconds_total",
            "Time spent in publish calls.",
            |s| s.publish_micros as f64 / 1e6,
        ),
    ];
    let snaps: Vec<(String, outbox_core::metrics::MetricsSnapshot)> = state
        .sources
        .iter()
        .map(|w| (label(&w.name), w.metrics.snapshot()))
        .collect();
    for (name, help, get) in counters {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for (source, s) in &snaps {
            out.push_str(&format!("{name}{{source=\"{source}\"}} {}\n", get(s)));
        }
    }
    out.push_str("# HELP outbox_backlog_pending Pending rows at the latest sample.\n# TYPE outbox_backlog_pending gauge\n");
    for (source, s) in &snaps {
        out.push_str(&format!(
            "outbox_backlog_pending{{source=\"{source}\"}} {}\n",
            s.backlog_pending
        ));
    }
    out
}

async fn health(state: &HttpState) -> (bool, String) {
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    for w in &state.sources {
        let r = tokio::time::timeout(Duration::from_secs(2), (w.probe)()).await;
        let v = match r {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_owned(),
        };
        ok &= v == "ok";
        checks.insert(format!("source {}", w.name), v.into());
    }
    for (name, endpoint) in &state.brokers {
        let Some(ep) = endpoint else { continue };
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(ep.as_str()),
        )
        .await;
        let v = match r {
            Ok(Ok(_)) => "ok".to_owned(),
            Ok(Err(e)) => format!("{ep}: {e}"),
            Err(_) => format!("{ep}: timed out"),
        };
        ok &= v == "ok";
        checks.insert(format!("publisher {name}"), v.into());
    }
    (ok, serde_json::Value::Object(checks).to_string())
}

/// `host:port` of a URL or a `host:port[,host:port]` list (its first entry).
pub fn endpoint(url: &str) -> Option<String> {
    let first = url.split(',').next()?.trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hostport.rsplit_once(':').map(|_| hostport.to_owned())
}
