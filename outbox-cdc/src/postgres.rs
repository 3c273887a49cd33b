//! The PostgreSQL [`ChangeStream`]: a `pgoutput` logical replication slot streamed with
//! `pgwire-replication`, turned into [`CommittedTx`]s, in commit order.
//!
//! - **Message mode** (`table: None` in the [`SlotSpec`]): transactional logical decoding
//!   messages whose prefix is the source's (every message of the database reaches every
//!   slot: the prefix is what keeps applications sharing a database apart) ([`outbox_core::codec::MESSAGE_PREFIX`] unless
//!   set), decoded with [`outbox_core::codec`]; `outbox_sqlx::postgres::emit` writes them.
//! - **Table mode**: inserts into the outbox table, in binary format, decoded by
//!   [`crate::pgoutput`]; messages are ignored.
//! - **Position.** [`ChangeStream::confirm`] reports the transaction's end as applied and
//!   flushed; the slot's `confirmed_flush_lsn` follows within the status interval. While
//!   nothing is outstanding, a keepalive's WAL end is confirmed too, so an idle relay does
//!   not hold WAL that other databases' traffic writes.
//! - **Long transactions.** `pgoutput` sends a transaction only once it committed, so its
//!   events may be published before its end is read: they are handed out in pieces of
//!   [`PgStreamConfig::max_piece_events`], and memory stays bounded by the relay's window
//!   however large the transaction (a crash mid-way replays it whole, with the same ids).
//! - **TLS.** The URL's `sslmode` (`disable`, `prefer` the default, `require`, `verify-ca`,
//!   `verify-full`), `sslrootcert`, `sslcert` and `sslkey` parameters are honoured as
//!   libpq does, with one difference: `verify-ca` also checks the host name against the
//!   certificate (pgwire-replication 0.5 forgives only the older form of rustls's name
//!   error), so name the host as the certificate does and use `verify-full`.

use outbox_core::{Error, ErrorKind, Result, ValidationLimits};
use pgwire_replication::{
    Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};

use crate::pgoutput::{Change, Relations, decode, outbox_row};
use crate::relay::{ChangeStream, CommittedTx, LogEvent};
use crate::slot::SlotSpec;

/// How a stream reaches its slot.
#[derive(Clone)]
pub struct PgStreamConfig {
    /// `postgres://user:password@host:port/database`; the user needs the `REPLICATION`
    /// attribute (or to be a superuser). Never logged: errors show it without its password.
    pub url: String,
    /// The slot and publication (created by [`SlotSpec::ensure`]).
    pub spec: SlotSpec,
    /// The prefix of message mode's messages.
    pub prefix: String,
    /// Limits decoded envelopes are checked against.
    pub limits: ValidationLimits,
    /// Most events of one transaction handed out at once; a longer transaction comes in
    /// several pieces (default 1 000).
    pub max_piece_events: usize,
    /// Most often the confirmed position is reported to the server (default 100 ms): the
    /// window a crash replays is what was settled since the last report.
    pub status_interval: std::time::Duration,
}

impl PgStreamConfig {
    /// A stream of `spec` through `url`, with the default prefix, limits and piece size.
    pub fn new(url: impl Into<String>, spec: SlotSpec) -> PgStreamConfig {
        PgStreamConfig {
            url: url.into(),
            spec,
            prefix: outbox_core::codec::MESSAGE_PREFIX.to_owned(),
            limits: ValidationLimits::default(),
            max_piece_events: 1_000,
            status_interval: std::time::Duration::from_millis(100),
        }
    }
}

impl std::fmt::Debug for PgStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStreamConfig")
            .field("url", &outbox_core::redact_url(&self.url))
            .field("spec", &self.spec)
            .field("prefix", &self.prefix)
            .field("max_piece_events", &self.max_piece_events)
            .field("status_interval", &self.status_interval)
            .finish()
    }
}

/// A slot being streamed. See the module docs.
pub struct PgChangeStream {
    client: ReplicationClient,
    relations: Relations,
    config: PgStreamConfig,
    /// Events of the transaction being read (between Begin and Commit), not handed out.
    open: Vec<LogEvent>,
    /// Between a Begin and its Commit.
    in_tx: bool,
    /// Pieces of the open transaction were handed out.
    open_handed_out: bool,
    /// The end of a transaction handed out and not confirmed yet.
    outstanding: Option<u64>,
}

fn connection_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Connection, what.to_owned()).with_source(e)
}

/// Where and how to connect, from a `postgres://` URL.
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    tls: TlsConfig,
}

/// The [`Target`] of a `postgres://` URL, percent-decoded; `sslmode` and its companions
/// read as libpq reads them.
fn parts(url: &str) -> Result<Target> {
    let invalid = |why: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("CDC `url` {}: {why}", outbox_core::redact_url(url)),
        )
    };
    let u = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        return Err(invalid("must start with postgres://"));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| invalid("is not UTF-8 once percent-decoded"))
    };
    let host = u
        .host_str()
        .ok_or_else(|| invalid("names no host"))?
        .to_owned();
    let database = decode(u.path().trim_start_matches('/'))?;
    if database.is_empty() {
        return Err(invalid("names no database"));
    }
    let mut tls = TlsConfig {
        mode: SslMode::Prefer,
        ..TlsConfig::default()
    };
    for (name, value) in u.query_pairs() {
        match &*name {
            "sslmode" => {
                tls.mode = match &*value {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(invalid(&format!(
                            "`sslmode` {other:?} is not one of disable, allow, prefer, \
                             require, verify-ca, verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => tls.ca_pem_path = Some(value.into_owned().into()),
            "sslcert" => tls.client_cert_pem_path = Some(value.into_owned().into()),
            "sslkey" => tls.client_key_pem_path = Some(value.into_owned().into()),
            _ => {}
        }
    }
    if tls.client_cert_pem_path.is_some() != tls.client_key_pem_path.is_some() {
        return Err(invalid("`sslcert` and `sslkey` go together"));
    }
    Ok(Target {
        host,
        port: u.port().unwrap_or(5432),
        user: decode(u.username())?,
        password: decode(u.password().unwrap_or_default())?,
        database,
        tls,
    })
}

impl PgChangeStream {
    /// Connects to the slot and starts streaming from its confirmed position.
    pub async fn connect(config: PgStreamConfig) -> Result<PgChangeStream> {
        config.spec.validate()?;
        if config.max_piece_events == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "CDC setting `max_piece_events` must be above zero",
            ));
        }
        let target = parts(&config.url)?;
        let replication = ReplicationConfig::new(
            target.host,
            target.user,
            target.password,
            target.database,
            config.spec.slot.clone(),
            config.spec.publication.clone(),
        )
        .with_port(target.port)
        .with_tls(target.tls)
        .with_start_lsn(Lsn::from_u64(0))
        .with_binary(true)
        .with_status_interval(config.status_interval);
        // Replication starts in the background: wait until the server accepted it, so a
        // bad slot or publication is an error here. A slot still held by a session that
        // just ended (a relay restarted at once) is released within moments: wait for it
        // up to 10 s.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let client = loop {
            let started = async {
                let mut client = ReplicationClient::connect(replication.clone()).await?;
                client.wait_started().await?;
                Ok::<_, pgwire_replication::PgWireError>(client)
            };
            match started.await {
                Ok(client) => break client,
                Err(e)
                    if e.to_string().contains("is active for PID")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(connection_error("starting logical replication", e)),
            }
        };
        Ok(PgChangeStream {
            client,
            relations: Relations::default(),
            config,
            open: Vec::new(),
            in_tx: false,
            open_handed_out: false,
            outstanding: None,
        })
    }

    /// A table-mode insert as an event (or an undecodable one).
    fn insert(&self, relation: u32, tuple: &[crate::pgoutput::Datum], at: u64) -> Option<LogEvent> {
        let rel = match self.relations.get(relation) {
            Ok(r) => r,
            Err(e) => {
                return Some(LogEvent::Undecodable {
                    id: None,
                    position: at,
                    raw: Vec::new(),
                    error: e.to_string(),
                });
            }
        };
        let table = self.config.spec.table.as_ref()?;
        if table.schema().unwrap_or("public") != rel.namespace || table.table() != rel.name {
            return None;
        }
        // Dead letters the relay itself writes into the table are no events to publish.
        if crate::pgoutput::row_status(rel, tuple).is_some_and(|status| status != 0) {
            return None;
        }
        Some(match outbox_row(rel, tuple) {
            Ok(row) => match row.into_claimed(&self.config.limits) {
                Ok(claimed) => LogEvent::Event(Box::new(claimed.envelope)),
                Err(u) => LogEvent::Undecodable {
                    id: Some(u.id),
                    position: at,
                    raw: Vec::new(),
                    error: u.error.to_string(),
                },
            },
            Err(e) => LogEvent::Undecodable {
                id: None,
                position: at,
                raw: Vec::new(),
                error: e.to_string(),
            },
        })
    }
}

impl ChangeStream for PgChangeStream {
    async fn next(&mut self) -> Result<Option<CommittedTx>> {
        loop {
            if self.open.len() >= self.config.max_piece_events {
                // A committed transaction's first events: publishable before its end.
                self.open_handed_out = true;
                return Ok(Some(CommittedTx {
                    end: None,
                    events: std::mem::take(&mut self.open),
                }));
            }
            let event = self
                .client
                .recv()
                .await
                .map_err(|e| connection_error("reading the replication stream", e))?;
            let Some(event) = event else { return Ok(None) };
            match event {
                ReplicationEvent::Begin { .. } => {
                    self.open.clear();
                    self.in_tx = true;
                    self.open_handed_out = false;
                }
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => match decode(&data) {
                    Ok(Change::Relation(r)) => self.relations.learn(r),
                    Ok(Change::Insert { relation, tuple }) => {
                        if let Some(e) = self.insert(relation, &tuple, wal_start.as_u64()) {
                            self.open.push(e);
                        }
                    }
                    // Messages arrive as `ReplicationEvent::Message` (below).
                    Ok(Change::Message { .. } | Change::Other(_)) => {}
                    Err(e) => self.open.push(LogEvent::Undecodable {
                        id: None,
                        position: wal_start.as_u64(),
                        raw: data.to_vec(),
                        error: e.to_string(),
                    }),
                },
                ReplicationEvent::Message {
                    transactional: true,
                    lsn,
                    prefix,
                    content,
                } if self.config.spec.table.is_none() && prefix == self.config.prefix => {
                    self.open.push(
                        match outbox_core::codec::decode(&content, &self.config.limits) {
                            Ok(e) => LogEvent::Event(Box::new(e)),
                            Err(e) => LogEvent::Undecodable {
                                id: None,
                                position: lsn.as_u64(),
                                raw: content.to_vec(),
                                error: e.to_string(),
                            },
                        },
                    );
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    self.in_tx = false;
                    let events = std::mem::take(&mut self.open);
                    let handed_out = std::mem::take(&mut self.open_handed_out);
                    if events.is_empty() && !handed_out && self.outstanding.is_none() {
                        // Nothing of ours: confirm it at once.
                        self.client.update_applied_lsn(end_lsn);
                        continue;
                    }
                    self.outstanding = Some(end_lsn.as_u64());
                    return Ok(Some(CommittedTx {
                        end: Some(end_lsn.as_u64()),
                        events,
                    }));
                }
                // Idle: nothing handed out is unconfirmed, so the server's WAL end is ours.
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if self.outstanding.is_none() && !self.in_tx =>
                {
                    self.client.update_applied_lsn(wal_end);
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(None),
                // Non-transactional or foreign messages.
                _ => {}
            }
        }
    }

    async fn confirm(&mut self, position: u64) -> Result<()> {
        self.client.update_applied_lsn(Lsn::from_u64(position));
        if self.outstanding == Some(position) {
            self.outstanding = None;
        }
        Ok(())
    }
}
