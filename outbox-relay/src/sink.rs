//! The built-in JSON-lines sink: one JSON object per event, on standard output or appended
//! to a file. The demo's broker, and handy for debugging routes.

use std::path::Path;

use outbox_core::{Envelope, Error, ErrorKind, PublishOutcome, Publisher, Result};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Mutex;

/// Where the lines go.
enum Out {
    Stdout(tokio::io::Stdout),
    File(tokio::fs::File),
}

/// Publishes each event as a JSON line, flushed before it counts as published.
pub struct JsonLines {
    out: Mutex<Out>,
    label: String,
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLines")
            .field("to", &self.label)
            .finish()
    }
}

impl JsonLines {
    /// Lines on standard output.
    pub fn stdout() -> Self {
        JsonLines {
            out: Mutex::new(Out::Stdout(tokio::io::stdout())),
            label: "stdout".to_owned(),
        }
    }

    /// Lines appended to `path` (created if missing).
    pub async fn file(path: &Path) -> Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("opening sink file {}", path.display()),
                )
                .with_source(e)
            })?;
        Ok(JsonLines {
            out: Mutex::new(Out::File(file)),
            label: path.display().to_string(),
        })
    }
}

/// The JSON line for `e`: a JSON payload is embedded as JSON, anything else as text or, if
/// not UTF-8, as `payload_base64`.
pub fn line(e: &Envelope) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": e.id().to_string(),
        "event_type": e.event_type(),
        "aggregate_type": e.aggregate_type(),
        "aggregate_id": e.aggregate_id(),
        "ordering_key": e.ordering_key(),
        "destination": e.destination(),
        "created_at": e.created_at().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "content_type": e.content_type(),
        "headers": e.headers(),
    });
    let payload = if e.content_type().contains("json") {
        serde_json::from_slice::<serde_json::Value>(e.payload()).ok()
    } else {
        None
    };
    let (key, value) = match payload {
        Some(json) => ("payload", json),
        None => match std::str::from_utf8(e.payload()) {
            Ok(text) => ("payload_text", serde_json::Value::String(text.to_owned())),
            Err(_) => (
                "payload_bytes",
                serde_json::Value::from(e.payload().to_vec()),
            ),
        },
    };
    if let Some(o) = v.as_object_mut() {
        o.insert(key.to_owned(), value);
        if let Some(t) = e.trace() {
            o.insert("traceparent".to_owned(), t.traceparent().into());
            if let Some(state) = t.tracestate() {
                o.insert("tracestate".to_owned(), state.into());
            }
        }
    }
    v
}

impl Publisher for JsonLines {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        let mut text = String::new();
        for e in events {
            text.push_str(&line(e).to_string());
            text.push('\n');
        }
        let mut out = self.out.lock().await;
        let written = match &mut *out {
            Out::Stdout(s) => {
                async {
                    s.write_all(text.as_bytes()).await?;
                    s.flush().await
                }
                .await
            }
            Out::File(f) => {
                async {
                    f.write_all(text.as_bytes()).await?;
                    f.flush().await?;
                    f.sync_data().await
                }
                .await
            }
        };
        match written {
            Ok(()) => events.iter().map(|_| PublishOutcome::Published).collect(),
            Err(e) => events
                .iter()
                .map(|_| {
                    PublishOutcome::Failed(Error::new(
                        ErrorKind::Unavailable,
                        format!("writing to {}: {e}", self.label),
                    ))
                })
                .collect(),
        }
    }

    /// `true`: a call is written as one block, in slice order; a failed write fails every
    /// event of the call.
    fn ordered_runs(&self) -> bool {
        true
    }
}
