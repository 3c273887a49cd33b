//! Connection and publishing settings (serde), with credentials kept out of `Debug`.

use std::path::PathBuf;
use std::time::Duration;

use outbox_core::{Error, ErrorKind, Result, Secret, duration_serde, redact_url};
use serde::Deserialize;

/// How the publisher connects and publishes.
///
/// ```toml
/// url = "nats://127.0.0.1:4222"
/// subject_prefix = "prod"        # destination "orders" -> subject "prod.orders"
/// ack_timeout = "10s"
/// [auth]
/// kind = "user_password"
/// user = "relay"
/// password = "..."
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://host:4222`, `tls://host:4222`.
    pub url: String,
    /// Credentials.
    #[serde(default)]
    pub auth: NatsAuth,
    /// TLS settings.
    #[serde(default)]
    pub tls: NatsTls,
    /// Put before every destination, joined by a dot.
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// How long to wait for JetStream's acknowledgement of one message (default 10 s).
    #[serde(default = "default_ack_timeout", with = "duration_serde")]
    pub ack_timeout: Duration,
    /// How long to wait for a connection (default 5 s).
    #[serde(default = "default_connect_timeout", with = "duration_serde")]
    pub connect_timeout: Duration,
    /// Most acknowledgements awaited at once (default 4096).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Client name shown by the server (default `outbox-relay`).
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_in_flight() -> usize {
    4096
}
fn default_name() -> String {
    "outbox-relay".to_owned()
}

impl NatsConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            subject_prefix: None,
            ack_timeout: default_ack_timeout(),
            connect_timeout: default_connect_timeout(),
            max_in_flight: default_max_in_flight(),
            name: default_name(),
        }
    }

    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("NATS config: {field} {why}"),
            ))
        };
        if self.url.trim().is_empty() {
            return bad("url", "is empty".to_owned());
        }
        if let Some(p) = &self.subject_prefix
            && let Err(why) = check_subject(p)
        {
            return bad("subject_prefix", why);
        }
        if self.ack_timeout.is_zero() {
            return bad("ack_timeout", "must be above zero".to_owned());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1".to_owned());
        }
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return bad(
                "tls.client_cert / tls.client_key",
                "must be given together".to_owned(),
            );
        }
        Ok(())
    }

    /// The subject for `destination`.
    pub fn subject(&self, destination: &str) -> std::result::Result<String, String> {
        check_subject(destination)?;
        Ok(match &self.subject_prefix {
            Some(p) => format!("{p}.{destination}"),
            None => destination.to_owned(),
        })
    }
}

/// A publish subject: dot-separated non-empty tokens, no wildcards or whitespace.
pub(crate) fn check_subject(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if s.chars().any(|c| c.is_whitespace() || c == '*' || c == '>') {
        return Err(format!(
            "{s:?} is not a publish subject (no whitespace, '*' or '>')"
        ));
    }
    if s.split('.').any(str::is_empty) {
        return Err(format!(
            "{s:?} has an empty token (leading, trailing or double dot)"
        ));
    }
    Ok(())
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("subject_prefix", &self.subject_prefix)
            .field("ack_timeout", &self.ack_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("name", &self.name)
            .finish()
    }
}

/// Credentials. Secrets print as `***`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NatsAuth {
    /// No credentials (or credentials in the URL).
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// A token.
    Token {
        /// The token.
        token: Secret,
    },
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes it.
    CredentialsFile {
        /// Path of the file.
        path: PathBuf,
    },
}

/// TLS settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    /// Refuse to talk without TLS.
    #[serde(default)]
    pub required: bool,
    /// Extra root certificates (PEM).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM), with `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let mut c = NatsConfig::new("nats://tok3n@127.0.0.1:4222");
        c.auth = NatsAuth::UserPassword {
            user: "relay".to_owned(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert!(shown.contains("relay"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let mut c = NatsConfig::new("nats://127.0.0.1:4222");
        c.subject_prefix = Some("a..b".to_owned());
        let err = c.validate().expect_err("double dot");
        assert!(err.to_string().contains("subject_prefix"), "{err}");
        let mut c = NatsConfig::new("nats://127.0.0.1:4222");
        c.max_in_flight = 0;
        assert!(
            c.validate()
                .expect_err("zero")
                .to_string()
                .contains("max_in_flight")
        );
        assert!(c.subject("orders.*").is_err());
        assert!(NatsConfig::new(" ").validate().is_err());
    }

    #[test]
    fn parses_from_json() {
        let c: NatsConfig = serde_json::from_value(serde_json::json!({
            "url": "nats://127.0.0.1:4222",
            "auth": {"kind": "token", "token": "s3cr3t"},
            "ack_timeout": "2s",
            "subject_prefix": "prod"
        }))
        .expect("valid config");
        assert_eq!(c.ack_timeout, Duration::from_secs(2));
        assert_eq!(c.subject("orders").expect("subject"), "prod.orders");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let err = serde_json::from_value::<NatsConfig>(serde_json::json!({
            "url": "nats://x:4222", "ack_timout": "2s"
        }))
        .expect_err("typo");
        assert!(err.to_string().contains("ack_timout"), "{err}");
    }
}
