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

use outbox_core::{Error, ErrorKind, Result, ValidationLimits};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

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
}

impl std::fmt::Debug for PgStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStreamConfig")
            .field("url", &outbox_core::redact_url(&self.url))
            .field("spec", &self.spec)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A slot being streamed. See the module docs.
pub struct PgChangeStream {
    client: ReplicationClient,
    relations: Relations,
    config: PgStreamConfig,
    /// Events of the transaction being read (between Begin and Commit).
    open: Vec<LogEvent>,
    /// The end of a transaction handed out and not confirmed yet.
    outstanding: Option<u64>,
}

fn connection_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Connection, what.to_owned()).with_source(e)
}

/// `(host, port, user, password, database)` of a `postgres://` URL, percent-decoded.
fn parts(url: &str) -> Result<(String, u16, String, String, String)> {
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
    Ok((
        host,
        u.port().unwrap_or(5432),
        decode(u.username())?,
        decode(u.password().unwrap_or_default())?,
        database,
    ))
}

impl PgChangeStream {
    /// Connects to the slot and starts streaming from its confirmed position.
    pub async fn connect(config: PgStreamConfig) -> Result<PgChangeStream> {
        config.spec.validate()?;
        let (host, port, user, password, database) = parts(&config.url)?;
        let replication = ReplicationConfig::new(
            host,
            user,
            password,
            database,
            config.spec.slot.clone(),
            config.spec.publication.clone(),
        )
        .with_port(port)
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn::from_u64(0))
        .with_binary(true)
        .with_status_interval(std::time::Duration::from_secs(1));
        let client = ReplicationClient::connect(replication)
            .await
            .map_err(|e| connection_error("starting logical replication", e))?;
        Ok(PgChangeStream {
            client,
            relations: Relations::default(),
            config,
            open: Vec::new(),
            outstanding: None,
        })
    }

    /// A table-mode insert as an event (or an undecodable one).
    fn insert(&self, relation: u32, tuple: &[crate::pgoutput::Datum], at: u64) -> Option<LogEvent> {
        let rel = match self.relations.get(relation) {
            Ok(r) => r,
            Err(e) => {
                return Some(LogEvent::Undecodable {
                    position: at,
                    error: e.to_string(),
                });
            }
        };
        let table = self.config.spec.table.as_ref()?;
        if table.schema().unwrap_or("public") != rel.namespace || table.table() != rel.name {
            return None;
        }
        Some(
            match outbox_row(rel, tuple)
                .and_then(|row| row.into_claimed(&self.config.limits).map_err(|u| u.error))
            {
                Ok(claimed) => LogEvent::Event(Box::new(claimed.envelope)),
                Err(e) => LogEvent::Undecodable {
                    position: at,
                    error: e.to_string(),
                },
            },
        )
    }
}

impl ChangeStream for PgChangeStream {
    async fn next(&mut self) -> Result<Option<CommittedTx>> {
        loop {
            let event = self
                .client
                .recv()
                .await
                .map_err(|e| connection_error("reading the replication stream", e))?;
            let Some(event) = event else { return Ok(None) };
            match event {
                ReplicationEvent::Begin { .. } => self.open.clear(),
                ReplicationEvent::XLogData {
                    wal_start, data, ..
                } => match decode(&data) {
                    Ok(Change::Relation(r)) => self.relations.learn(r),
                    Ok(Change::Insert { relation, tuple }) => {
                        if let Some(e) = self.insert(relation, &tuple, wal_start.as_u64()) {
                            self.open.push(e);
                        }
                    }
                    Ok(Change::Other(_)) => {}
                    Err(e) => self.open.push(LogEvent::Undecodable {
                        position: wal_start.as_u64(),
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
                                position: lsn.as_u64(),
                                error: e.to_string(),
                            },
                        },
                    );
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let events = std::mem::take(&mut self.open);
                    if events.is_empty() && self.outstanding.is_none() {
                        // Nothing of ours: confirm it at once.
                        self.client.update_applied_lsn(end_lsn);
                        continue;
                    }
                    self.outstanding = Some(end_lsn.as_u64());
                    return Ok(Some(CommittedTx {
                        end: end_lsn.as_u64(),
                        events,
                    }));
                }
                // Idle: nothing handed out is unconfirmed, so the server's WAL end is ours.
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if self.outstanding.is_none() && self.open.is_empty() =>
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
