//! Connection and publishing settings (serde), and the destination syntax.

use std::path::PathBuf;
use std::time::Duration;

use outbox_core::{Error, ErrorKind, Result, duration_serde, redact_url};
use serde::Deserialize;

/// How the publisher connects and publishes.
///
/// ```toml
/// url = "amqps://relay:secret@rabbit.internal:5671/%2f"   # the password never shows in logs
/// confirm_timeout = "10s"
/// [tls]                                  # amqps:// only; all optional
/// ca_file = "/etc/outbox/rabbit-ca.pem"  # a private CA (PEM), besides the public roots
/// client_cert = "/etc/outbox/relay.pem"  # a client certificate (PEM), with its key
/// client_key = "/etc/outbox/relay-key.pem"
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/vhost` or `amqps://...` for TLS. The password is
    /// redacted in `Debug` and logs.
    pub url: String,
    /// How long to wait for the broker's confirm of a batch (default 10 s).
    #[serde(default = "default_confirm_timeout", with = "duration_serde")]
    pub confirm_timeout: Duration,
    /// Wait before reconnecting after the connection or channel was lost (default 500 ms).
    #[serde(default = "default_reconnect_delay", with = "duration_serde")]
    pub reconnect_delay: Duration,
    /// Connection name shown in the management UI (default `outbox-relay`).
    #[serde(default = "default_name")]
    pub connection_name: String,
    /// TLS settings for an `amqps://` URL.
    #[serde(default)]
    pub tls: AmqpTls,
}

/// TLS settings for `amqps://`: a private CA, a client certificate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpTls {
    /// Root certificates (PEM) to trust besides the public ones: the CA that signed the
    /// broker's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM; chain allowed), for brokers that verify peers.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS#8).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_delay() -> Duration {
    Duration::from_millis(500)
}
fn default_name() -> String {
    "outbox-relay".to_owned()
}

impl AmqpConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            confirm_timeout: default_confirm_timeout(),
            reconnect_delay: default_reconnect_delay(),
            connection_name: default_name(),
            tls: AmqpTls::default(),
        }
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: &str| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("AMQP config: {field} {why}"),
            ))
        };
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return bad("url", "must start with amqp:// or amqps://");
        }
        if self.confirm_timeout.is_zero() {
            return bad("confirm_timeout", "must be above zero");
        }
        let tls = &self.tls;
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return bad(
                "tls.client_cert",
                "and tls.client_key must be given together",
            );
        }
        let any_tls = tls.ca_file.is_some() || tls.client_cert.is_some();
        if any_tls && !self.url.starts_with("amqps://") {
            return bad("tls", "is set but url is amqp:// (plain); use amqps://");
        }
        Ok(())
    }
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("confirm_timeout", &self.confirm_timeout)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("connection_name", &self.connection_name)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Where a destination goes: an exchange and a routing key.
///
/// | destination | exchange | routing key |
/// |---|---|---|
/// | `orders/order.placed` | `orders` | `order.placed` |
/// | `orders` | `orders` | the event type |
/// | `/jobs` | the default exchange | `jobs` (straight to queue `jobs`) |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Exchange name (empty: the default exchange).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
}

impl Route {
    /// Parses `destination`; `event_type` is the routing key when none is given.
    pub fn parse(destination: &str, event_type: &str) -> std::result::Result<Route, String> {
        let (exchange, key) = match destination.split_once('/') {
            Some((x, k)) => (x, k),
            None => (destination, event_type),
        };
        if exchange.len() > 255
            || !exchange
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(format!(
                "destination {destination:?}: exchange {exchange:?} must be up to 255 letters, digits, '-', '_', '.' or ':'"
            ));
        }
        if key.is_empty() || key.len() > 255 {
            return Err(format!(
                "destination {destination:?}: routing key must be 1 to 255 bytes"
            ));
        }
        if exchange.is_empty() && destination.split_once('/').is_none() {
            return Err("destination is empty".to_owned());
        }
        Ok(Route {
            exchange: exchange.to_owned(),
            routing_key: key.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            Route::parse("orders/order.placed", "x").expect("valid"),
            Route {
                exchange: "orders".into(),
                routing_key: "order.placed".into()
            }
        );
        assert_eq!(
            Route::parse("orders", "order.paid")
                .expect("valid")
                .routing_key,
            "order.paid"
        );
        let to_queue = Route::parse("/jobs", "x").expect("valid");
        assert_eq!(
            (to_queue.exchange.as_str(), to_queue.routing_key.as_str()),
            ("", "jobs")
        );
        for bad in ["", "bad exchange/k", "x/", "ex$/k"] {
            let err = Route::parse(bad, "t").expect_err(bad);
            assert!(err.contains("destination"), "{err}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = AmqpConfig::new("amqp://relay:hunter2@127.0.0.1:5672/%2f");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("relay"),
            "{shown}"
        );
        assert!(AmqpConfig::new("http://x").validate().is_err());
        let err = serde_json::from_value::<AmqpConfig>(serde_json::json!({
            "url": "amqp://127.0.0.1", "confirm_timout": "1s"
        }))
        .expect_err("typo");
        assert!(err.to_string().contains("confirm_timout"), "{err}");
    }
}
