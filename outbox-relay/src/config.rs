//! The relay's configuration: a TOML file, with `OUTBOX__...` environment overrides.
//!
//! ```toml
//! default_publisher = "stdout"
//!
//! [sources.orders]                       # any number of sources
//! url = "postgres://relay@db/app"        # postgres://, mysql://, sqlite://
//! table = "public.outbox_events"         # default outbox_events
//! retention = "7d"                       # optional: purge published rows older than this
//! [sources.orders.relay]                 # optional: core's RelayConfig
//! batch_size = 200
//!
//! [event_tables.ledger]                  # an append-only table relayed directly
//! url = "postgres://relay@db/bank"
//! [event_tables.ledger.mapping]          # outbox_sqlx::event_table::EventTableMapping
//! table = "ledger_transactions"
//! position = "id"
//! aggregate_id = "account_id"
//! event_type = "kind"
//! payload = "body"
//! destination = "ledger"
//!
//! [cdc.payments]                         # log tailing: PostgreSQL logical replication
//! url = "postgres://relay@db/pay"        # a user with the REPLICATION attribute
//! mode = "message"                       # message: outbox_sqlx::postgres::emit; table: inserts
//! dead_letter_table = "outbox_dead_letters" # message mode (table mode: `table`)
//!
//! [publishers.bus]                       # any number of named publishers
//! kind = "nats"                          # nats, amqp, kafka, sqs, stdout, file
//! url = "nats://127.0.0.1:4222"
//!
//! [[routes]]                             # first match wins; else default_publisher
//! destination_prefix = "orders."
//! publisher = "bus"
//!
//! [telemetry]                            # optional: export spans over OTLP/HTTP
//! otlp_endpoint = "http://127.0.0.1:4318" # else OTEL_EXPORTER_OTLP_ENDPOINT; off if neither
//! ```
//!
//! An environment variable `OUTBOX__SOURCES__ORDERS__URL=...` replaces
//! `sources.orders.url` (keys are lower-cased; `__` separates them), so secrets need not
//! sit in the file. Any secret-bearing key ([`SECRET_FILE_KEYS`]: `url`, `password`,
//! `token`, ...) can instead name a file holding it, `url_file = "/run/secrets/orders-db"`
//! (or `OUTBOX__SOURCES__ORDERS__URL_FILE=...`), as container orchestrators mount secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outbox_core::{RelayConfig, duration_serde, redact_url};
use serde::Deserialize;

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Sources by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Append-only event tables relayed directly (no outbox table), by name. The name is
    /// also the checkpoint's key.
    #[serde(default)]
    pub event_tables: BTreeMap<String, EventTableConfig>,
    /// Log-tailing (CDC) sources by name.
    #[cfg(feature = "cdc")]
    #[serde(default)]
    pub cdc: BTreeMap<String, CdcConfig>,
    /// Publishers by name.
    #[serde(default)]
    pub publishers: BTreeMap<String, PublisherConfig>,
    /// Routing rules, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Publisher for events no rule matches; without one such events are dead-lettered
    /// with an error naming their destination.
    #[serde(default)]
    pub default_publisher: Option<String>,
    /// The metrics and health endpoint (off unless set).
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Span export over OTLP (`outbox run`, feature `opentelemetry`; off unless an endpoint
    /// is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
}

/// Where `outbox run` exports its spans (OTLP/HTTP). Each field left out falls back to the
/// standard OpenTelemetry environment variable named in its docs.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318` (`/v1/traces` is
    /// appended); else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`; else `OTEL_EXPORTER_OTLP_PROTOCOL`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// The `service.name` resource attribute; else `OTEL_SERVICE_NAME`, else
    /// `outbox-relay`.
    #[serde(default)]
    pub service_name: Option<String>,
}

impl std::fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_deref().map(redact_url),
            )
            .field("protocol", &self.protocol)
            .field("service_name", &self.service_name)
            .finish()
    }
}

/// Where `/metrics` and `/healthz` listen.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port`, e.g. `127.0.0.1:9464`.
    pub listen: std::net::SocketAddr,
}

/// One database to relay from.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://...`, `mysql://...` or `sqlite://path`.
    pub url: String,
    /// Table, optionally `schema.table` (default `outbox_events`).
    #[serde(default)]
    pub table: Option<String>,
    /// Relay settings for this source.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Purge published rows older than this (`"7d"` is not accepted; use hours: `"168h"`).
    #[serde(default, with = "opt_duration")]
    pub retention: Option<Duration>,
    /// Most connections to this source (default 4).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

/// An existing append-only table to relay with a checkpoint instead of row marks.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTableConfig {
    /// `postgres://...`, `mysql://...` or `sqlite://path`.
    pub url: String,
    /// How the table's columns map to the envelope.
    pub mapping: outbox_sqlx::event_table::EventTableMapping,
    /// Event-table relay settings.
    #[serde(default)]
    pub relay: outbox_core::LogRelayConfig,
    /// This relay's name as the checkpoint's owner (default: the `HOSTNAME` environment
    /// variable, else `outbox-relay`). A restarted relay with the same name takes its
    /// checkpoint back at once; give relays on one host different names.
    #[serde(default)]
    pub owner: Option<String>,
    /// Most connections (default 4).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl std::fmt::Debug for EventTableConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTableConfig")
            .field("url", &redact_url(&self.url))
            .field("mapping", &self.mapping)
            .field("relay", &self.relay)
            .field("owner", &self.owner)
            .finish()
    }
}

fn default_max_connections() -> u32 {
    4
}

/// What a CDC source reads.
#[cfg(feature = "cdc")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CdcMode {
    /// Transactional logical decoding messages (`outbox_sqlx::postgres::emit`); no table.
    #[default]
    Message,
    /// The outbox table's inserts (the usual enqueue helpers).
    Table,
}

/// A log-tailing source: a PostgreSQL logical replication slot (`pgoutput`).
#[cfg(feature = "cdc")]
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// `postgres://...`; the user needs the `REPLICATION` attribute. `sslmode` and its
    /// companions apply to the replication connection too.
    pub url: String,
    /// `message` (default) or `table`.
    #[serde(default)]
    pub mode: CdcMode,
    /// Table mode: the outbox table, optionally `schema.table` (default `outbox_events`).
    #[serde(default)]
    pub table: Option<String>,
    /// Message mode: where dead events are kept (default `outbox_dead_letters`).
    #[serde(default)]
    pub dead_letter_table: Option<String>,
    /// The slot (default `outbox_<name>`).
    #[serde(default)]
    pub slot: Option<String>,
    /// The publication (default `<slot>_pub`).
    #[serde(default)]
    pub publication: Option<String>,
    /// Message mode: the prefix the application emits with (default `outbox`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Most events of one transaction handed to the relay at once (default 1 000).
    #[serde(default)]
    pub max_piece_events: Option<usize>,
    /// Relay settings: `publish_timeout`, `retry`, `max_in_flight`.
    #[serde(default)]
    pub relay: outbox_cdc::relay::CdcRelayConfig,
    /// Most connections for the ledger and the status queries (default 4).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

#[cfg(feature = "cdc")]
impl std::fmt::Debug for CdcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("table", &self.table)
            .field("dead_letter_table", &self.dead_letter_table)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("prefix", &self.prefix)
            .field("max_piece_events", &self.max_piece_events)
            .field("relay", &self.relay)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[cfg(feature = "cdc")]
impl CdcConfig {
    /// The slot and publication of the source `name`, checked; the error names the field.
    pub fn spec(&self, name: &str) -> Result<outbox_cdc::slot::SlotSpec, ConfigError> {
        let fail = |field: &str, e: &dyn std::fmt::Display| {
            ConfigError(format!("cdc.{name}.{field}: {e}"))
        };
        let slot = self
            .slot
            .clone()
            .unwrap_or_else(|| format!("outbox_{name}"));
        let table = match self.mode {
            CdcMode::Table => Some(self.outbox_table().map_err(|e| fail("table", &e))?),
            CdcMode::Message => None,
        };
        let spec = outbox_cdc::slot::SlotSpec {
            publication: self
                .publication
                .clone()
                .unwrap_or_else(|| format!("{slot}_pub")),
            slot,
            table,
        };
        spec.validate().map_err(|e| fail("slot", &e))?;
        Ok(spec)
    }

    fn outbox_table(&self) -> outbox_core::Result<outbox_core::TableName> {
        match &self.table {
            Some(t) => outbox_core::TableName::parse(t),
            None => Ok(outbox_core::TableName::default()),
        }
    }

    /// Where the source's ledger writes: the outbox table (table mode) or the dead-letter
    /// table (message mode).
    pub fn ledger_table(&self, name: &str) -> Result<outbox_cdc::ledger::LedgerTable, ConfigError> {
        use outbox_cdc::ledger::LedgerTable;
        Ok(match self.mode {
            CdcMode::Table => LedgerTable::Outbox(
                self.outbox_table()
                    .map_err(|e| ConfigError(format!("cdc.{name}.table: {e}")))?,
            ),
            CdcMode::Message => LedgerTable::DeadLetters {
                table: outbox_core::TableName::parse(
                    self.dead_letter_table
                        .as_deref()
                        .unwrap_or("outbox_dead_letters"),
                )
                .map_err(|e| ConfigError(format!("cdc.{name}.dead_letter_table: {e}")))?,
                prefix: self.prefix(),
            },
        })
    }

    /// The message prefix.
    pub fn prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| outbox_core::codec::MESSAGE_PREFIX.to_owned())
    }
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConfig")
            .field("url", &redact_url(&self.url))
            .field("table", &self.table)
            .field("relay", &self.relay)
            .field("retention", &self.retention)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| outbox_core::duration_serde::parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A named publisher.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Read once at start-up: the size of its variants does not matter (clippy says it does
// when only NATS is built in).
#[allow(clippy::large_enum_variant)]
pub enum PublisherConfig {
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(outbox_nats::NatsConfig),
    /// RabbitMQ.
    #[cfg(feature = "amqp")]
    Amqp(outbox_amqp::AmqpConfig),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(outbox_kafka::KafkaConfig),
    /// SQS.
    #[cfg(feature = "sqs")]
    Sqs(outbox_sqs::SqsConfig),
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File {
        /// The file.
        path: PathBuf,
    },
}

/// A routing rule: events matching every given condition go to `publisher`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination starts with this.
    #[serde(default)]
    pub destination_prefix: Option<String>,
    /// Event type equals this, or starts with the part before a trailing `*`.
    #[serde(default)]
    pub event_type: Option<String>,
    /// The publisher's name.
    pub publisher: String,
}

/// A configuration problem, naming where it is.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path` (TOML), applies `OUTBOX__...` overrides from `env`, and checks the
    /// cross-references (routes and default publisher name existing publishers).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string(), env)
    }

    /// Parses TOML `text` (from `origin`, for messages) with overrides from `env`.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError(format!("config file {origin}: {e}")))?;
        for (key, v) in env {
            if let Some(path) = key.strip_prefix("OUTBOX__") {
                let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
                set_path(&mut value, &keys, &v)
                    .map_err(|why| ConfigError(format!("environment {key}: {why}")))?;
            }
        }
        read_secret_files(&mut value, "")
            .map_err(|why| ConfigError(format!("config file {origin}: {why}")))?;
        let config: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("config file {origin}: {e}")))?;
        config.check(origin)?;
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let known = |name: &str| self.publishers.contains_key(name);
        for (i, r) in self.routes.iter().enumerate() {
            if !known(&r.publisher) {
                return Err(ConfigError(format!(
                    "config file {origin}: routes[{i}].publisher = {:?} names no [publishers.{}]",
                    r.publisher, r.publisher
                )));
            }
            if r.destination_prefix.is_none() && r.event_type.is_none() {
                return Err(ConfigError(format!(
                    "config file {origin}: routes[{i}] needs destination_prefix or event_type"
                )));
            }
        }
        if let Some(d) = &self.default_publisher
            && !known(d)
        {
            return Err(ConfigError(format!(
                "config file {origin}: default_publisher = {d:?} names no [publishers.{d}]"
            )));
        }
        for (name, s) in &self.sources {
            s.relay.validate().map_err(|e| {
                ConfigError(format!("config file {origin}: sources.{name}.relay: {e}"))
            })?;
            if let Some(t) = &s.table {
                outbox_core::TableName::parse(t).map_err(|e| {
                    ConfigError(format!("config file {origin}: sources.{name}.table: {e}"))
                })?;
            }
        }
        #[cfg(feature = "cdc")]
        for (name, c) in &self.cdc {
            let with_origin = |e: ConfigError| ConfigError(format!("config file {origin}: {e}"));
            c.spec(name).map_err(with_origin)?;
            c.ledger_table(name).map_err(with_origin)?;
            c.relay
                .validate()
                .map_err(|e| ConfigError(format!("config file {origin}: cdc.{name}.relay: {e}")))?;
            if !c.url.starts_with("postgres://") && !c.url.starts_with("postgresql://") {
                return Err(ConfigError(format!(
                    "config file {origin}: cdc.{name}.url {} must be postgres://",
                    redact_url(&c.url)
                )));
            }
            if c.max_piece_events == Some(0) {
                return Err(ConfigError(format!(
                    "config file {origin}: cdc.{name}.max_piece_events must be above zero"
                )));
            }
        }
        Ok(())
    }
}

/// Sets `keys` in `table` to `raw`, read as a TOML value when it parses as one (numbers,
/// booleans), else as a string.
fn set_path(table: &mut toml::Table, keys: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut t = table;
    for k in parents {
        let entry = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("{k} is not a table in the config"))?;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut v| v.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    t.insert(last.clone(), value);
    Ok(())
}

/// The keys whose value may instead come from a file: `<key>_file = "/run/secrets/..."`
/// (how container orchestrators mount secrets).
pub const SECRET_FILE_KEYS: [&str; 7] = [
    "url",
    "password",
    "token",
    "secret_access_key",
    "session_token",
    "sasl_password",
    "sasl.password",
];

/// Replaces every `<key>_file` of [`SECRET_FILE_KEYS`], at any depth, by `<key>` = the
/// file's contents (one trailing newline dropped). Errors name the key and the file, never
/// its contents.
fn read_secret_files(table: &mut toml::Table, at: &str) -> Result<(), String> {
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let here = if at.is_empty() {
            name.clone()
        } else {
            format!("{at}.{name}")
        };
        if let Some(toml::Value::Table(inner)) = table.get_mut(&name) {
            read_secret_files(inner, &here)?;
            continue;
        }
        let Some(key) = name
            .strip_suffix("_file")
            .filter(|k| SECRET_FILE_KEYS.contains(k))
        else {
            continue;
        };
        if table.contains_key(key) {
            return Err(format!("{here} and {key} are both set; give one"));
        }
        let Some(toml::Value::String(path)) = table.remove(&name) else {
            return Err(format!("{here} must be a file path (a string)"));
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{here} = {path:?}: cannot read the file: {e}"))?;
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if text.is_empty() {
            return Err(format!("{here} = {path:?}: the file is empty"));
        }
        table.insert(key.to_owned(), toml::Value::String(text.to_owned()));
    }
    Ok(())
}

/// How long `duration_serde` understands, re-exported for the CLI's flags.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    duration_serde::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Debug` of a configuration with a password in every URL and credential field shows
    /// none of them.
    #[test]
    fn debug_shows_no_secret() {
        let text = r#"
[http]
listen = "127.0.0.1:9464"
[sources.pg]
url = "postgres://relay:pw-src-1@db/app?sslmode=verify-full"
[event_tables.ledger]
url = "mysql://relay:pw-evt-2@db/bank"
[event_tables.ledger.mapping]
table = "ledger"
position = "id"
aggregate_id = "account"
event_type = "kind"
payload = "body"
destination = "ledger"
[cdc.pay]
url = "postgres://relay:pw-cdc-3@db/pay"
mode = "message"
[publishers.nats]
kind = "nats"
url = "nats://relay:pw-nats-4@bus:4222"
[publishers.nats_auth]
kind = "nats"
url = "nats://bus:4222"
[publishers.nats_auth.auth]
kind = "user_password"
user = "relay"
password = "pw-nats-5"
[publishers.token]
kind = "nats"
url = "nats://bus:4222"
[publishers.token.auth]
kind = "token"
token = "pw-token-6"
[publishers.rabbit]
kind = "amqp"
url = "amqps://relay:pw-amqp-7@rabbit:5671/%2f"
[publishers.kafka]
kind = "kafka"
bootstrap_servers = "k:9093"
[publishers.kafka.properties]
"sasl.password" = "pw-kafka-8"
[publishers.sqs]
kind = "sqs"
region = "eu-west-1"
[publishers.sqs.credentials]
access_key_id = "AKIDEXAMPLE"
secret_access_key = "pw-sqs-9"
session_token = "pw-sqs-10"
[telemetry]
otlp_endpoint = "http://otel:pw-otel-11@collector:4318"
"#;
        let config = Config::parse(text, "t.toml", []).expect("config");
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("pw-"), "{shown}");
        assert!(shown.contains("db/app"), "the rest still shows: {shown}");
    }

    #[test]
    fn secrets_come_from_files_and_errors_do_not_show_them() {
        let dir = std::env::temp_dir().join(format!("outbox-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let url = dir.join("url");
        std::fs::write(&url, "sqlite:///tmp/s3cr3t.db\n").expect("write");
        let text = format!(
            "[sources.a]\nurl_file = {:?}\n[publishers.out]\nkind = \"stdout\"\n",
            url.display().to_string()
        );
        let c = Config::parse(&text, "t.toml", []).expect("config");
        assert_eq!(c.sources["a"].url, "sqlite:///tmp/s3cr3t.db");
        // From the environment too.
        let c = Config::parse(
            "[publishers.out]\nkind = \"stdout\"\n",
            "t.toml",
            [(
                "OUTBOX__SOURCES__B__URL_FILE".to_owned(),
                url.display().to_string(),
            )],
        )
        .expect("config");
        assert_eq!(c.sources["b"].url, "sqlite:///tmp/s3cr3t.db");
        // Both given, a missing file: errors name the key, never the secret.
        let both = format!(
            "[sources.a]\nurl = \"x\"\nurl_file = {:?}\n",
            url.display().to_string()
        );
        let e = Config::parse(&both, "t.toml", []).expect_err("both").0;
        assert!(
            e.contains("sources.a.url_file") && !e.contains("s3cr3t"),
            "{e}"
        );
        let e = Config::parse("[sources.a]\nurl_file = \"/nonexistent/x\"\n", "t.toml", [])
            .expect_err("missing")
            .0;
        assert!(
            e.contains("sources.a.url_file") && e.contains("/nonexistent/x"),
            "{e}"
        );
        // A path field that merely ends in `_file` is left alone.
        let nats = "[publishers.n]\nkind = \"nats\"\nurl = \"nats://127.0.0.1\"\n[publishers.n.tls]\nca_file = \"/ca.pem\"\n";
        let mut t: toml::Table = toml::from_str(nats).expect("toml");
        read_secret_files(&mut t, "").expect("untouched");
        assert!(t.to_string().contains("ca_file"));
        let _ = std::fs::remove_dir_all(dir);
    }

    const SAMPLE: &str = r#"
default_publisher = "out"

[sources.orders]
url = "sqlite:///tmp/x.db"
retention = "24h"
[sources.orders.relay]
batch_size = 50

[publishers.out]
kind = "stdout"

[[routes]]
event_type = "order.*"
publisher = "out"
"#;

    #[test]
    fn parses_and_overrides() {
        let c = Config::parse(
            SAMPLE,
            "sample.toml",
            [(
                "OUTBOX__SOURCES__ORDERS__URL".to_owned(),
                "postgres://u:secret@h/db".to_owned(),
            )],
        )
        .expect("valid");
        let s = &c.sources["orders"];
        assert_eq!(s.url, "postgres://u:secret@h/db");
        assert_eq!(s.relay.batch_size, 50);
        assert_eq!(s.retention, Some(Duration::from_secs(86_400)));
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn errors_name_file_and_key() {
        let typo = SAMPLE.replace("batch_size", "batch_sise");
        let err = Config::parse(&typo, "relay.toml", []).expect_err("typo");
        assert!(
            err.0.contains("relay.toml") && err.0.contains("batch_sise"),
            "{err}"
        );
        let bad_route = SAMPLE.replace("publisher = \"out\"", "publisher = \"nope\"");
        let err = Config::parse(&bad_route, "relay.toml", []).expect_err("bad route");
        assert!(err.0.contains("routes[0].publisher"), "{err}");
        let bad_table = SAMPLE.replace("retention", "table = \"a;b\"\nretention");
        let err = Config::parse(&bad_table, "relay.toml", []).expect_err("bad table");
        assert!(err.0.contains("sources.orders.table"), "{err}");
    }
}
