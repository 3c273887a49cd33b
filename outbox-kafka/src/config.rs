//! Producer settings (serde), with secrets kept out of `Debug`.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_core::{Error, ErrorKind, Result, duration_serde};
use serde::Deserialize;

/// How the publisher produces.
///
/// ```toml
/// bootstrap_servers = "kafka-1:9092,kafka-2:9092"
/// message_timeout = "9s"
/// [properties]              # any librdkafka setting, e.g. security
/// "security.protocol" = "SASL_SSL"
/// "sasl.password" = "..."   # shown as *** in Debug and logs
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port` list.
    pub bootstrap_servers: String,
    /// Client id (default `outbox-relay`).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// How long librdkafka keeps trying one message before reporting it failed (default
    /// 9 s). Keep it under the relay's `publish_timeout`, so every event gets a definite
    /// outcome within the call.
    #[serde(default = "default_message_timeout", with = "duration_serde")]
    pub message_timeout: Duration,
    /// How long to wait to batch messages (default 5 ms).
    #[serde(default = "default_linger", with = "duration_serde")]
    pub linger: Duration,
    /// Most messages per batch (default 10,000).
    #[serde(default = "default_batch_messages")]
    pub batch_messages: u32,
    /// Compression: `none`, `gzip` (default `none`).
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Further librdkafka settings, applied last. `enable.idempotence` and `acks` cannot be
    /// weakened here: the outbox's ordering and dedupe depend on them.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_client_id() -> String {
    "outbox-relay".to_owned()
}
fn default_message_timeout() -> Duration {
    Duration::from_secs(9)
}
fn default_linger() -> Duration {
    Duration::from_millis(5)
}
fn default_batch_messages() -> u32 {
    10_000
}
fn default_compression() -> String {
    "none".to_owned()
}

/// Settings the publisher always sets, and their values.
pub(crate) const FIXED: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

impl KafkaConfig {
    /// Defaults for `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: default_client_id(),
            message_timeout: default_message_timeout(),
            linger: default_linger(),
            batch_messages: default_batch_messages(),
            compression: default_compression(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets one librdkafka property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("Kafka config: {field} {why}"),
            ))
        };
        if self.bootstrap_servers.trim().is_empty() {
            return bad("bootstrap_servers", "is empty".to_owned());
        }
        if self.message_timeout.is_zero() {
            return bad("message_timeout", "must be above zero".to_owned());
        }
        if !matches!(self.compression.as_str(), "none" | "gzip") {
            return bad(
                "compression",
                format!("{:?} is not one of none, gzip", self.compression),
            );
        }
        for (key, want) in FIXED {
            if let Some(v) = self.properties.get(*key)
                && v != want
            {
                return bad(
                    &format!("properties.{key}"),
                    format!(
                        "= {v:?} would break the outbox's ordering and dedupe; it must be {want:?}"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The librdkafka settings this config produces.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("batch.num.messages", self.batch_messages.to_string())
            .set("compression.codec", &self.compression);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, v) in FIXED {
            c.set(*k, *v);
        }
        c
    }
}

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".key") || k.contains("token")
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("client_id", &self.client_id)
            .field("message_timeout", &self.message_timeout)
            .field("linger", &self.linger)
            .field("batch_messages", &self.batch_messages)
            .field("compression", &self.compression)
            .field("properties", &props)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hidden_and_guarantees_kept() {
        let c = KafkaConfig::new("k:9092").with_property("sasl.password", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        let weak = KafkaConfig::new("k:9092").with_property("acks", "1");
        let err = weak.validate().expect_err("acks=1 refused");
        assert!(err.to_string().contains("properties.acks"), "{err}");
        let err = serde_json::from_value::<KafkaConfig>(serde_json::json!({
            "bootstrap_servers": "k:9092", "linger_ms": 5
        }))
        .expect_err("unknown field");
        assert!(err.to_string().contains("linger_ms"), "{err}");
    }
}
