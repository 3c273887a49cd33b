//! [`NatsPublisher`]: JetStream publishing with pipelined acknowledgements.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{AuthError, jetstream};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use outbox_core::{Envelope, Error, ErrorKind, PublishOutcome, Publisher, Result, transport};
use tokio::sync::Mutex;

use crate::config::{NatsAuth, NatsConfig};

/// Most publishes of one call awaiting their acknowledgements at once (or `max_in_flight`
/// when lower): below the JetStream context's own limit of unacknowledged publishes, past
/// which a send waits for an acknowledgement.
const ACKS_IN_FLIGHT: usize = 1_000;
use crate::error::map_publish_error;

/// Publishes envelopes to JetStream.
///
/// Destination `d` goes to subject `d` (or `{subject_prefix}.d`), which a stream must
/// capture. The event id travels as `Nats-Msg-Id`, so a stream's duplicate window drops
/// the copies that at-least-once relaying can produce (the acknowledgement then says
/// `duplicate`, which counts as published). A batch is sent without waiting, then every
/// acknowledgement is awaited together.
///
/// **Connections.** A publisher made by [`connect`](Self::connect) owns its connection and
/// never lets the client reconnect it by itself: a connection that breaks fails everything
/// still unacknowledged on it (`Connection`, retried) and drops what the client had not yet
/// written, and the next call opens a new connection. That is what lets the relay hand it a
/// key's run in one call (see [`ordered_runs`](Publisher::ordered_runs)). A publisher made
/// by [`with_client`](Self::with_client) uses the application's client as it is, reconnecting
/// by itself, and so takes one event per key and call.
#[derive(Clone)]
pub struct NatsPublisher {
    config: NatsConfig,
    /// `true` when this publisher opened the connection and replaces it when it breaks.
    owned: bool,
    link: Arc<StdMutex<Link>>,
    /// Held while a broken link is replaced, so concurrent calls open one connection.
    reopening: Arc<Mutex<()>>,
}

/// One connection and its JetStream context.
#[derive(Clone)]
struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Link {
    fn new(client: async_nats::Client, config: &NatsConfig) -> Link {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .ack_timeout(config.ack_timeout)
            .max_ack_inflight(config.max_in_flight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Link { client, js }
    }

    fn is_up(&self) -> bool {
        self.client.connection_state() == State::Connected
    }
}

impl std::fmt::Debug for NatsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPublisher")
            .field("config", &self.config)
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

impl NatsPublisher {
    /// Connects with `config` (validated first), so a wrong URL or credential fails here.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        config.validate()?;
        let client = open(&config).await?;
        let link = Link::new(client, &config);
        Ok(NatsPublisher {
            config,
            owned: true,
            link: Arc::new(StdMutex::new(link)),
            reopening: Arc::new(Mutex::new(())),
        })
    }

    /// Uses a client the application already has; `config` supplies the publishing
    /// settings (its connection fields are not used). The client reconnects by itself, as
    /// it was built to, so this publisher takes one event per ordering key and call.
    pub fn with_client(client: async_nats::Client, config: NatsConfig) -> Self {
        let link = Link::new(client, &config);
        NatsPublisher {
            config,
            owned: false,
            link: Arc::new(StdMutex::new(link)),
            reopening: Arc::new(Mutex::new(())),
        }
    }

    /// The JetStream context of the current connection (to create streams, say).
    pub fn jetstream(&self) -> jetstream::Context {
        self.current().js
    }

    fn current(&self) -> Link {
        self.link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The link to publish on: the current one, or a new connection if an owned one broke.
    async fn link(&self) -> Result<Link> {
        let current = self.current();
        if !self.owned || current.is_up() {
            return Ok(current);
        }
        let _one_at_a_time = self.reopening.lock().await;
        let current = self.current();
        if current.is_up() {
            return Ok(current);
        }
        tracing::warn!("NATS connection lost; opening a new one");
        let fresh = Link::new(open(&self.config).await?, &self.config);
        *self
            .link
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
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

/// Opens one connection that is never reconnected by the client.
///
/// async-nats reconnects by itself and then writes what it had buffered on the new
/// connection, while what went out on the broken one may be lost: a key's run would reach
/// the stream with a gap. Its only ways to end a connection for good are a refused
/// authentication or running out of attempts, so the credentials are handed over by a
/// callback that refuses every connection after the first, and one attempt is allowed: the
/// client's task then ends, failing what it holds, and the publisher opens a new connection.
async fn open(config: &NatsConfig) -> Result<async_nats::Client> {
    let credentials = Credentials::load(config).await?;
    let opened = Arc::new(AtomicBool::new(false));
    let refuse_after_first = Arc::clone(&opened);
    let mut opts = async_nats::ConnectOptions::with_auth_callback(move |nonce| {
        let refuse = refuse_after_first.load(Ordering::SeqCst);
        let auth = if refuse {
            Err(AuthError::new(
                "outbox-nats opens a new connection instead of reconnecting",
            ))
        } else {
            credentials.auth(&nonce)
        };
        async move { auth }
    })
    .name(&config.name)
    .connection_timeout(config.connect_timeout)
    .require_tls(config.tls.required)
    .max_reconnects(1)
    .reconnect_delay_callback(|_| Duration::ZERO)
    .event_callback(|event| async move {
        tracing::info!(%event, "NATS connection event");
    });
    // async-nats's TLS (asked for here, or by the server) takes rustls's process default
    // provider, which does not exist when the program's dependencies build rustls with two
    // (AWS's SDK brings `aws-lc-rs`, async-nats `ring`): install `ring` unless one is.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if let Some(ca) = &config.tls.ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let shown = outbox_core::redact_url(&config.url);
    // The credentials go through the callback above; the client gets the servers without
    // them, since it logs the addresses it dials (password included) at debug level.
    let servers = without_credentials(&config.url);
    let client = opts.connect(servers.as_str()).await.map_err(|e| {
        let kind = match e.kind() {
            async_nats::ConnectErrorKind::Authentication
            | async_nats::ConnectErrorKind::AuthorizationViolation => ErrorKind::Unauthorized,
            async_nats::ConnectErrorKind::ServerParse => ErrorKind::InvalidInput,
            async_nats::ConnectErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Connection,
        };
        Error::new(kind, format!("connecting to NATS at {shown}")).with_source(e)
    })?;
    opened.store(true, Ordering::SeqCst);
    Ok(client)
}

/// `url` (one server URL or several, comma-separated) without the `user:password@` or
/// `token@` of each.
fn without_credentials(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, server),
            };
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            match scheme {
                Some(scheme) => format!("{scheme}://{host}{tail}"),
                None => format!("{host}{tail}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What the connection authenticates with, read once per connection.
enum Credentials {
    None,
    UserPassword(String, String),
    Token(String),
    /// A user JWT and the NKey that signs the server's nonce.
    Jwt(String, Arc<nkeys::KeyPair>),
}

impl Credentials {
    async fn load(config: &NatsConfig) -> Result<Credentials> {
        Ok(match &config.auth {
            NatsAuth::None => Self::from_url(&config.url),
            NatsAuth::UserPassword { user, password } => {
                Credentials::UserPassword(user.clone(), password.expose().to_owned())
            }
            NatsAuth::Token { token } => Credentials::Token(token.expose().to_owned()),
            NatsAuth::CredentialsFile { path } => {
                let bad = |why: String| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("NATS config: auth.path {}: {why}", path.display()),
                    )
                };
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| bad("cannot read".to_owned()).with_source(e))?;
                let (jwt, seed) = parse_creds(&text).map_err(bad)?;
                let key = nkeys::KeyPair::from_seed(&seed)
                    .map_err(|e| bad(format!("the NKey seed is not valid: {e}")))?;
                Credentials::Jwt(jwt, Arc::new(key))
            }
        })
    }

    /// Credentials written into the (first) server URL: `user:password@` or `token@`.
    fn from_url(url: &str) -> Credentials {
        let first = url.split(',').next().unwrap_or_default().trim();
        let Ok(addr) = first.parse::<async_nats::ServerAddr>() else {
            return Credentials::None;
        };
        match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => {
                Credentials::UserPassword(user.to_owned(), password.to_owned())
            }
            (Some(token), None) => Credentials::Token(token.to_owned()),
            _ => Credentials::None,
        }
    }

    fn auth(&self, nonce: &[u8]) -> std::result::Result<async_nats::Auth, AuthError> {
        let mut auth = async_nats::Auth::new();
        match self {
            Credentials::None => {}
            Credentials::UserPassword(user, password) => {
                auth.username = Some(user.clone());
                auth.password = Some(password.clone());
            }
            Credentials::Token(token) => auth.token = Some(token.clone()),
            Credentials::Jwt(jwt, key) => {
                let signature = key
                    .sign(nonce)
                    .map_err(|e| AuthError::new(format!("signing the server's nonce: {e}")))?;
                auth.jwt = Some(jwt.clone());
                auth.signature = Some(signature);
            }
        }
        Ok(auth)
    }
}

/// The user JWT and NKey seed of a `.creds` file: the first line of content after the
/// `BEGIN ... JWT` marker and after the `BEGIN ... SEED` marker.
fn parse_creds(text: &str) -> std::result::Result<(String, String), String> {
    let after = |marker: &str| {
        let mut lines = text.lines().map(str::trim);
        lines.find(|l| l.starts_with("---") && l.contains("BEGIN") && l.contains(marker))?;
        lines
            .find(|l| !l.is_empty())
            .filter(|l| !l.starts_with("---"))
            .map(str::to_owned)
    };
    let jwt = after("JWT").ok_or("has no user JWT (a -----BEGIN NATS USER JWT----- block)")?;
    let seed = after("SEED").ok_or("has no NKey seed (a -----BEGIN USER NKEY SEED----- block)")?;
    Ok((jwt, seed))
}

impl Publisher for NatsPublisher {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        let link = match self.link().await {
            Ok(l) => l,
            Err(e) => {
                let why = e.to_string();
                return events
                    .iter()
                    .map(|_| PublishOutcome::Failed(Error::new(e.kind(), why.clone())))
                    .collect();
            }
        };
        // A sliding window: at most `window` publishes await their acknowledgements; the
        // oldest is awaited before one more is sent (each send only queues the message with
        // the client). The JetStream context admits only so many unacknowledged publishes
        // (`max_in_flight`), and a send past that limit would wait for acknowledgements
        // nobody awaits; runs sent and then awaited together would leave the connection
        // idle at every run's end.
        let window = ACKS_IN_FLIGHT.min(self.config.max_in_flight).max(1);
        let mut outcomes = Vec::with_capacity(events.len());
        let mut in_flight = FuturesOrdered::new();
        for e in events {
            if in_flight.len() >= window {
                outcomes.extend(in_flight.next().await);
            }
            let sent = match self.config.subject(e.destination()) {
                Err(why) => Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!("destination {why}"),
                )),
                Ok(subject) => match link
                    .js
                    .send_publish(subject.clone(), Self::message(e))
                    .await
                {
                    Ok(ack) => Ok((subject, ack)),
                    Err(err) => Err(map_publish_error(&subject, err)),
                },
            };
            in_flight.push_back(async move {
                match sent {
                    Err(e) => PublishOutcome::Failed(e),
                    Ok((subject, ack)) => match ack.await {
                        Ok(_) => PublishOutcome::Published,
                        Err(err) => PublishOutcome::Failed(map_publish_error(&subject, err)),
                    },
                }
            });
        }
        while let Some(outcome) = in_flight.next().await {
            outcomes.push(outcome);
        }
        outcomes
    }

    /// `true` for a publisher made by [`connect`](NatsPublisher::connect), `false` for one
    /// made by [`with_client`](NatsPublisher::with_client).
    ///
    /// A stream stores what one connection publishes in arrival order, and a call publishes
    /// on one connection in slice order. The client alone would break that: it reconnects
    /// by itself and writes what it buffered on the new connection, while what went out on
    /// the broken one may be lost, so a key's run would reach the stream with a gap (the
    /// conformance test that cuts the connection under a running relay caught exactly
    /// that). A connection this publisher opened is never reconnected: when it breaks,
    /// everything unacknowledged on it fails and nothing buffered is sent later.
    ///
    /// JetStream can refuse one message and store the next one of the same key only when
    /// the refusal is about that message (a permanent error, such as a payload over the
    /// limit, which does not hold its key back).
    fn ordered_runs(&self) -> bool {
        self.owned
    }

    /// `nats`.
    fn messaging_system(&self, _event: &Envelope) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds_file(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }

    /// The chaos run found async-nats logging the dialled URL, password and all, at
    /// debug level: the client is given the servers without credentials.
    #[test]
    fn the_client_dials_servers_without_their_credentials() {
        assert_eq!(
            without_credentials("nats://user:s3cret@127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            without_credentials("tls://tok3n@a.example:4222/x, nats://b.example:4223"),
            "tls://a.example:4222/x,nats://b.example:4223"
        );
        assert_eq!(without_credentials("u:p@localhost"), "localhost");
        assert_eq!(
            without_credentials("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        // The credentials still authenticate, through the callback.
        assert!(matches!(
            Credentials::from_url("nats://user:s3cret@127.0.0.1:4222"),
            Credentials::UserPassword(u, p) if u == "user" && p == "s3cret"
        ));
    }

    #[test]
    fn a_creds_file_gives_its_jwt_and_a_key_that_signs_the_nonce() {
        let key = nkeys::KeyPair::new_user();
        let seed = key.seed().expect("seed");
        let (jwt, read_seed) = parse_creds(&creds_file("eyJhbGciOi.payload.sig", &seed))
            .expect("a well-formed file parses");
        assert_eq!(jwt, "eyJhbGciOi.payload.sig");
        assert_eq!(read_seed, seed);

        let signer = nkeys::KeyPair::from_seed(&read_seed).expect("seed");
        let creds = Credentials::Jwt(jwt, Arc::new(signer));
        let auth = creds.auth(b"server-nonce").expect("auth");
        assert_eq!(auth.jwt.as_deref(), Some("eyJhbGciOi.payload.sig"));
        let signature = auth.signature.expect("signed");
        key.verify(b"server-nonce", &signature)
            .expect("the signature is the seed's over the nonce");
    }

    #[test]
    fn a_creds_file_without_a_block_names_what_is_missing() {
        let only_jwt = "-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n";
        let err = parse_creds(only_jwt).expect_err("no seed");
        assert!(err.contains("NKey seed"), "{err}");
        let err = parse_creds("").expect_err("empty");
        assert!(err.contains("JWT"), "{err}");
        let empty_block = "-----BEGIN NATS USER JWT-----\n------END NATS USER JWT------\n";
        assert!(
            parse_creds(empty_block).is_err(),
            "an empty block has no JWT"
        );
    }

    #[test]
    fn credentials_in_the_url_are_used_without_an_auth_section() {
        match Credentials::from_url("nats://relay:s3cret@127.0.0.1:4222") {
            Credentials::UserPassword(u, p) => {
                assert_eq!((u.as_str(), p.as_str()), ("relay", "s3cret"))
            }
            _ => panic!("user and password expected"),
        }
        match Credentials::from_url("nats://t0ken@127.0.0.1:4222,nats://127.0.0.1:4223") {
            Credentials::Token(t) => assert_eq!(t, "t0ken"),
            _ => panic!("token expected"),
        }
        assert!(matches!(
            Credentials::from_url("nats://127.0.0.1:4222"),
            Credentials::None
        ));
    }
}
