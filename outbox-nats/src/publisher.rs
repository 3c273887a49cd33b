//! [`NatsPublisher`]: JetStream publishing with pipelined acknowledgements.

use async_nats::jetstream;
use bytes::Bytes;
use futures::future::join_all;
use outbox_core::{Envelope, Error, ErrorKind, PublishOutcome, Publisher, Result, transport};

use crate::config::{NatsAuth, NatsConfig};
use crate::error::map_publish_error;

/// Publishes envelopes to JetStream.
///
/// Destination `d` goes to subject `d` (or `{subject_prefix}.d`), which a stream must
/// capture. The event id travels as `Nats-Msg-Id`, so a stream's duplicate window drops
/// the copies that at-least-once relaying can produce (the acknowledgement then says
/// `duplicate`, which counts as published). A batch is sent without waiting, then every
/// acknowledgement is awaited together.
///
/// The client reconnects by itself; while it is away, publishes wait in its buffer and time
/// out (`Timeout`, retried) if it does not come back within `ack_timeout`.
#[derive(Clone)]
pub struct NatsPublisher {
    js: jetstream::Context,
    config: NatsConfig,
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    /// Connects with `config` (validated first).
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let mut opts = async_nats::ConnectOptions::new()
            .name(&config.name)
            .connection_timeout(config.connect_timeout)
            .require_tls(config.tls.required)
            .event_callback(|event| async move {
                tracing::info!(%event, "NATS connection event");
            });
        if let Some(ca) = &config.tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        opts = match &config.auth {
            NatsAuth::None => opts,
            NatsAuth::UserPassword { user, password } => {
                opts.user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsAuth::Token { token } => opts.token(token.expose().to_owned()),
            NatsAuth::CredentialsFile { path } => {
                opts.credentials_file(path).await.map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("NATS config: auth.path {}: cannot read", path.display()),
                    )
                    .with_source(e)
                })?
            }
        };
        let shown = outbox_core::redact_url(&config.url);
        let client = opts.connect(config.url.as_str()).await.map_err(|e| {
            let kind = match e.kind() {
                async_nats::ConnectErrorKind::Authentication
                | async_nats::ConnectErrorKind::AuthorizationViolation => ErrorKind::Unauthorized,
                async_nats::ConnectErrorKind::ServerParse => ErrorKind::InvalidInput,
                async_nats::ConnectErrorKind::TimedOut => ErrorKind::Timeout,
                _ => ErrorKind::Connection,
            };
            Error::new(kind, format!("connecting to NATS at {shown}")).with_source(e)
        })?;
        Ok(Self::with_client(client, config))
    }

    /// Uses a client the application already has; `config` supplies the publishing
    /// settings (its connection fields are not used).
    pub fn with_client(client: async_nats::Client, config: NatsConfig) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .ack_timeout(config.ack_timeout)
            .max_ack_inflight(config.max_in_flight)
            .backpressure_on_inflight(true)
            .build(client);
        NatsPublisher { js, config }
    }

    /// The JetStream context (to create streams, say).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The JetStream message this publisher sends for `envelope`: its payload, the
    /// transport headers and `Nats-Msg-Id` = event id. For tools that must publish the very
    /// same message themselves (the benchmark's raw loop, a replay).
    pub fn message(envelope: &Envelope) -> jetstream::message::PublishMessage {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in transport::message_headers(envelope) {
            headers.insert(name, value);
        }
        jetstream::message::PublishMessage::build()
            .payload(Bytes::clone(envelope.payload()))
            .headers(headers)
            .message_id(envelope.id().to_string())
    }
}

impl Publisher for NatsPublisher {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        // Send everything first; each send only queues the message with the client.
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let subject = match self.config.subject(e.destination()) {
                Ok(s) => s,
                Err(why) => {
                    pending.push(Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("destination {why}"),
                    )));
                    continue;
                }
            };
            match self
                .js
                .send_publish(subject.clone(), Self::message(e))
                .await
            {
                Ok(ack) => pending.push(Ok((subject, ack))),
                Err(err) => pending.push(Err(map_publish_error(&subject, err))),
            }
        }
        // Then await every acknowledgement together.
        let acks = pending.into_iter().map(|p| async move {
            match p {
                Err(e) => PublishOutcome::Failed(e),
                Ok((subject, ack)) => match ack.await {
                    Ok(_) => PublishOutcome::Published,
                    Err(err) => PublishOutcome::Failed(map_publish_error(&subject, err)),
                },
            }
        });
        join_all(acks).await
    }

    /// `false`: the relay hands this publisher one event per ordering key and call.
    ///
    /// A stream stores what one connection publishes in arrival order, but the client
    /// reconnects by itself and sends what it buffered on the new connection, while messages
    /// written to the old one just before it broke are lost. A key's run in one call would
    /// then reach the stream with a gap: the conformance test that cuts the connection
    /// under a running relay saw a key's events stored out of order when runs went out in
    /// one call.
    fn ordered_runs(&self) -> bool {
        false
    }
}
