//! Producer settings (serde), with secrets kept out of `Debug`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use outbox_core::{Error, ErrorKind, Result, Secret, duration_serde};
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
    /// TLS to the brokers (`security.protocol` `SSL`, or `SASL_SSL` with [`sasl`](Self::sasl)).
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication (`SASL_SSL` with [`tls`](Self::tls), else `SASL_PLAINTEXT`).
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
}

/// TLS settings: a private CA and a client certificate, all optional (an empty `[tls]`
/// means TLS with the system's roots).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// The CA (PEM) that signed the brokers' certificates (`ssl.ca.location`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM), with `client_key` (`ssl.certificate.location`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM) (`ssl.key.location`).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The key's password, if it is encrypted (`ssl.key.password`).
    #[serde(default)]
    pub client_key_password: Option<Secret>,
}

/// SASL credentials. Shown as `***` in `Debug`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (`sasl.mechanisms`).
    pub mechanism: String,
    /// The user (`sasl.username`).
    pub username: String,
    /// The password (`sasl.password`).
    pub password: Secret,
}

/// The SASL mechanisms the typed settings accept.
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

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
            tls: None,
            sasl: None,
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
        if let Some(tls) = &self.tls
            && tls.client_cert.is_some() != tls.client_key.is_some()
        {
            return bad(
                "tls.client_cert",
                "and tls.client_key must be given together".to_owned(),
            );
        }
        if let Some(sasl) = &self.sasl {
            if !MECHANISMS.contains(&sasl.mechanism.as_str()) {
                return bad(
                    "sasl.mechanism",
                    format!(
                        "{:?} is not one of {}",
                        sasl.mechanism,
                        MECHANISMS.join(", ")
                    ),
                );
            }
            if sasl.username.trim().is_empty() {
                return bad("sasl.username", "is empty".to_owned());
            }
        }
        if self.tls.is_some() || self.sasl.is_some() {
            let typed = |k: &str| {
                k == "security.protocol" || k.starts_with("ssl.") || k.starts_with("sasl.")
            };
            if let Some(k) = self.properties.keys().find(|k| typed(k)) {
                return bad(
                    &format!("properties.{k}"),
                    "is set by [tls] / [sasl] already; give it in one place".to_owned(),
                );
            }
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
        let protocol = match (self.tls.is_some(), self.sasl.is_some()) {
            (true, true) => Some("SASL_SSL"),
            (true, false) => Some("SSL"),
            (false, true) => Some("SASL_PLAINTEXT"),
            (false, false) => None,
        };
        if let Some(p) = protocol {
            c.set("security.protocol", p);
        }
        if let Some(tls) = &self.tls {
            let path = |p: &PathBuf| p.display().to_string();
            for (key, value) in [
                ("ssl.ca.location", tls.ca_file.as_ref().map(path)),
                (
                    "ssl.certificate.location",
                    tls.client_cert.as_ref().map(path),
                ),
                ("ssl.key.location", tls.client_key.as_ref().map(path)),
                (
                    "ssl.key.password",
                    tls.client_key_password
                        .as_ref()
                        .map(|s| s.expose().to_owned()),
                ),
            ] {
                if let Some(v) = value {
                    c.set(key, v);
                }
            }
        }
        if let Some(sasl) = &self.sasl {
            c.set("sasl.mechanisms", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose());
        }
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
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_tls_and_sasl_map_to_librdkafka_and_hide_the_password() {
        let mut c = KafkaConfig::new("k:9093");
        c.tls = Some(KafkaTls {
            ca_file: Some("/etc/ca.pem".into()),
            client_cert: Some("/etc/c.pem".into()),
            client_key: Some("/etc/k.pem".into()),
            client_key_password: Some(Secret::new("keypw-1")),
        });
        c.sasl = Some(KafkaSasl {
            mechanism: "SCRAM-SHA-512".to_owned(),
            username: "relay".to_owned(),
            password: Secret::new("saslpw-2"),
        });
        c.validate().expect("valid");
        let rd = c.client_config();
        assert_eq!(rd.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(rd.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(rd.get("ssl.key.password"), Some("keypw-1"));
        assert_eq!(rd.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(rd.get("sasl.password"), Some("saslpw-2"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("keypw") && !shown.contains("saslpw"),
            "{shown}"
        );
        c.tls = None;
        assert_eq!(
            c.client_config().get("security.protocol"),
            Some("SASL_PLAINTEXT")
        );
        // Bad values name their field.
        let mut bad = c.clone();
        if let Some(s) = bad.sasl.as_mut() {
            s.mechanism = "GSSAPI".to_owned();
        }
        let e = bad.validate().expect_err("mechanism").to_string();
        assert!(e.contains("sasl.mechanism") && e.contains("GSSAPI"), "{e}");
        let twice = c.clone().with_property("sasl.password", "x");
        let e = twice.validate().expect_err("twice").to_string();
        assert!(e.contains("properties.sasl.password"), "{e}");
        let mut half = KafkaConfig::new("k:9093");
        half.tls = Some(KafkaTls {
            client_cert: Some("/etc/c.pem".into()),
            ..KafkaTls::default()
        });
        let e = half.validate().expect_err("half").to_string();
        assert!(e.contains("tls.client_cert"), "{e}");
    }

    #[test]
    fn librdkafka_is_built_with_tls_and_sasl() {
        let mut c = KafkaConfig::new("127.0.0.1:1");
        c.tls = Some(KafkaTls::default());
        c.sasl = Some(KafkaSasl {
            mechanism: "SCRAM-SHA-256".to_owned(),
            username: "relay".to_owned(),
            password: Secret::new("pw"),
        });
        if let Err(e) = crate::KafkaPublisher::new(c) {
            panic!("a SASL_SSL producer: {}", e.to_report());
        }
    }

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
