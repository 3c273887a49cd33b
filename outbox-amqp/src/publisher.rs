//! [`AmqpPublisher`]: publisher confirms, mandatory routing, reconnection.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use outbox_core::{Envelope, Error, ErrorKind, PublishOutcome, Publisher, Result, transport};
use tokio::sync::Mutex;

use crate::config::{AmqpConfig, Route};
use crate::error::map_lapin;

/// Publishes envelopes to RabbitMQ (or any AMQP 0-9-1 broker with publisher confirms).
///
/// - Publisher confirms are always on: an event counts as published only when the broker
///   confirmed it. A nack is retried.
/// - Messages are persistent (`delivery_mode` 2) and `mandatory`: a message no queue is
///   bound for comes back, and is reported as a permanent `DestinationNotFound` instead of
///   vanishing.
/// - The event id is the AMQP `message_id`; the event type is `type`; headers are the
///   toolkit's transport headers plus the user's.
/// - Exchanges are checked once (passive declare) before first use, so a missing exchange
///   is a permanent error for its events only, and never closes the channel under the rest
///   of the batch.
/// - A lost connection or channel fails the events in flight as `Connection` (retried);
///   the next publish reconnects.
pub struct AmqpPublisher {
    config: AmqpConfig,
    link: Mutex<Option<Link>>,
    known_exchanges: Mutex<HashSet<String>>,
    /// One call at a time publishes on the channel (see `publish`).
    calls: Mutex<()>,
}

struct Link {
    connection: std::sync::Arc<Connection>,
    channel: Channel,
}

impl std::fmt::Debug for AmqpPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What happened to one event before its confirm is awaited.
enum Sent {
    Failed(Error),
    Waiting(Route, lapin::PublisherConfirm),
}

impl AmqpPublisher {
    /// Connects with `config` (validated first), so a wrong URL or password fails here.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        config.validate()?;
        let publisher = AmqpPublisher {
            config,
            link: Mutex::new(None),
            known_exchanges: Mutex::new(HashSet::new()),
            calls: Mutex::new(()),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    /// The confirm-mode channel, reconnecting if the connection or channel was lost.
    async fn channel(&self) -> Result<Channel> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref() {
            if l.channel.status().connected() && l.connection.status().connected() {
                return Ok(l.channel.clone());
            }
            tracing::warn!("AMQP channel lost; reconnecting");
            *link = None;
            tokio::time::sleep(self.config.reconnect_delay).await;
        }
        let shown = outbox_core::redact_url(&self.config.url);
        let props = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name.clone().into());
        let tls = tls_config(&self.config.tls)?;
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| map_lapin("starting the AMQP client's runtime", e))?;
        let connection = Connection::connect_with_config(&self.config.url, props, tls, runtime)
            .await
            .map_err(|e| map_lapin(&format!("connecting to AMQP broker at {shown}"), e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| map_lapin("opening an AMQP channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| map_lapin("enabling publisher confirms", e))?;
        *link = Some(Link {
            connection: std::sync::Arc::new(connection),
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Forgets the link so the next call reconnects.
    async fn drop_link(&self) {
        if let Some(l) = self.link.lock().await.take() {
            let _ = l.connection.close(200, "reconnecting".into()).await;
        }
    }

    /// Checks that `exchange` exists (passive declare on a throwaway channel), once.
    async fn check_exchange(&self, exchange: &str) -> Result<()> {
        if exchange.is_empty() || self.known_exchanges.lock().await.contains(exchange) {
            return Ok(());
        }
        let connection = {
            self.channel().await?;
            let link = self.link.lock().await;
            match link.as_ref() {
                Some(l) => std::sync::Arc::clone(&l.connection),
                None => {
                    return Err(Error::new(ErrorKind::Connection, "AMQP connection lost"));
                }
            }
        };
        let probe = connection
            .create_channel()
            .await
            .map_err(|e| map_lapin("opening an AMQP channel", e))?;
        let declared = probe
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {
                let _ = probe.close(200, "checked".into()).await;
                self.known_exchanges
                    .lock()
                    .await
                    .insert(exchange.to_owned());
                Ok(())
            }
            // The broker closed the probe channel with the error; nothing else is affected.
            Err(e) => Err(map_lapin(&format!("AMQP exchange {exchange:?}"), e)),
        }
    }

    /// The AMQP properties this publisher sends with `envelope`: `message_id` = event id,
    /// type, content type, persistent delivery, timestamp and the transport headers. For
    /// tools that must publish the very same message themselves (the benchmark's raw loop,
    /// a replay).
    pub fn properties(e: &Envelope) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in transport::message_headers(e) {
            headers.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
        BasicProperties::default()
            .with_message_id(e.id().to_string().into())
            .with_type(e.event_type().into())
            .with_content_type(e.content_type().into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(e.created_at().timestamp()).unwrap_or(0))
            .with_headers(headers)
    }

    async fn send(&self, channel: &Channel, e: &Envelope, route: Route) -> Sent {
        let published = channel
            .basic_publish(
                route.exchange.as_str().into(),
                route.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                e.payload(),
                Self::properties(e),
            )
            .await;
        match published {
            Ok(confirm) => Sent::Waiting(route, confirm),
            Err(err) => Sent::Failed(map_lapin("publishing to AMQP", err)),
        }
    }

    /// Awaits one publisher confirm. A message the broker returned comes back beside the
    /// outcome: lapin hands a return to whichever confirm it resolves next (of several a
    /// multiple-ack covers, any), so `publish` matches it to its event by message id.
    async fn confirm(&self, sent: Sent, timeout: Duration) -> (PublishOutcome, Option<Returned>) {
        let (route, confirm) = match sent {
            Sent::Failed(e) => return (PublishOutcome::Failed(e), None),
            Sent::Waiting(r, c) => (r, c),
        };
        let at = format!(
            "exchange {:?}, routing key {:?}",
            route.exchange, route.routing_key
        );
        let returned = |r: lapin::message::BasicReturnMessage| Returned {
            message_id: r
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            reason: format!("broker returned {} {}", r.reply_code, r.reply_text),
        };
        let outcome = match tokio::time::timeout(timeout, confirm).await {
            Err(_) => PublishOutcome::Failed(Error::new(
                ErrorKind::Timeout,
                format!("no publisher confirm within {timeout:?} ({at})"),
            )),
            Ok(Ok(Confirmation::Ack(None))) => PublishOutcome::Published,
            Ok(Ok(Confirmation::Ack(Some(r)))) => {
                return (PublishOutcome::Published, Some(returned(r)));
            }
            Ok(Ok(Confirmation::Nack(r))) => {
                let outcome = PublishOutcome::Failed(Error::new(
                    ErrorKind::Unavailable,
                    format!("the broker nacked the message ({at})"),
                ));
                return (outcome, r.map(returned));
            }
            Ok(Ok(Confirmation::NotRequested)) => PublishOutcome::Failed(Error::new(
                ErrorKind::Unavailable,
                "publisher confirms were not on for the channel",
            )),
            Ok(Err(err)) => {
                let mapped = map_lapin(&format!("publishing to AMQP ({at})"), err);
                if mapped.kind() == ErrorKind::DestinationNotFound {
                    // The exchange vanished after its check and took the channel, and every
                    // event in flight on it, down with it: retry them; the check runs again
                    // and fails only the events of the missing exchange.
                    self.known_exchanges.lock().await.remove(&route.exchange);
                    PublishOutcome::Failed(Error::new(
                        ErrorKind::Unavailable,
                        format!("channel closed by the broker ({at}): {mapped}"),
                    ))
                } else {
                    PublishOutcome::Failed(mapped)
                }
            }
        };
        (outcome, None)
    }
}

/// A message the broker returned as unroutable: its message id (the event id) and why.
struct Returned {
    message_id: Option<String>,
    reason: String,
}

impl Publisher for AmqpPublisher {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        // One call at a time on the channel: a returned message is then attached to one
        // of this call's confirms, and matched to its event below.
        let _call = self.calls.lock().await;
        let channel = match self.channel().await {
            Ok(c) => c,
            Err(e) => {
                return events
                    .iter()
                    .map(|_| PublishOutcome::Failed(Error::new(e.kind(), e.to_string())))
                    .collect();
            }
        };
        let mut sent = Vec::with_capacity(events.len());
        for e in events {
            let route = match Route::parse(e.destination(), e.event_type()) {
                Ok(r) => r,
                Err(why) => {
                    sent.push(Sent::Failed(Error::new(ErrorKind::InvalidInput, why)));
                    continue;
                }
            };
            if let Err(err) = self.check_exchange(&route.exchange).await {
                sent.push(Sent::Failed(err));
                continue;
            }
            sent.push(self.send(&channel, e, route).await);
        }
        let timeout = self.config.confirm_timeout;
        let confirmed = join_all(sent.into_iter().map(|s| self.confirm(s, timeout))).await;
        // Each returned message fails the event whose id it carries, whichever confirm
        // lapin attached it to (the channel serves this call alone, so it is one of ours).
        let mut returned: HashMap<String, String> = HashMap::new();
        let mut outcomes = Vec::with_capacity(confirmed.len());
        for (outcome, r) in confirmed {
            if let Some(r) = r {
                match r.message_id {
                    Some(id) => {
                        returned.insert(id, r.reason);
                    }
                    None => {
                        tracing::warn!(reason = %r.reason, "RabbitMQ returned a message without a message id")
                    }
                }
            }
            outcomes.push(outcome);
        }
        if !returned.is_empty() {
            for (e, outcome) in events.iter().zip(outcomes.iter_mut()) {
                if let Some(reason) = returned.remove(&e.id().to_string()) {
                    let at = Route::parse(e.destination(), e.event_type()).map_or_else(
                        |_| format!("destination {:?}", e.destination()),
                        |r| format!("exchange {:?}, routing key {:?}", r.exchange, r.routing_key),
                    );
                    *outcome = PublishOutcome::Failed(Error::new(
                        ErrorKind::DestinationNotFound,
                        format!("unroutable: no queue bound for {at} ({reason})"),
                    ));
                }
            }
        }
        let lost = outcomes.iter().any(|o| {
            matches!(o, PublishOutcome::Failed(e)
                if matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Unavailable))
        });
        if lost && !(channel.status().connected()) {
            self.drop_link().await;
        }
        outcomes
    }

    /// `true`: a call publishes on one channel in slice order, and RabbitMQ routes and
    /// enqueues what one channel publishes in that order, so the relay hands a key's run
    /// over in one call. A channel that closes fails every message still unconfirmed on it.
    ///
    /// RabbitMQ can nack one message and confirm the next one of the same channel only on
    /// an internal error of the queue (the AMQP specification leaves a nack no other cause);
    /// an unroutable message is a permanent failure, which does not hold its key back.
    fn ordered_runs(&self) -> bool {
        true
    }

    /// `rabbitmq`.
    fn messaging_system(&self, _event: &Envelope) -> &'static str {
        "rabbitmq"
    }
}

/// lapin's TLS settings from ours: the CA and the client identity, read from their files
/// (an error names the setting and the file).
/// The files are small and read once per connection, so they are read in place.
fn tls_config(tls: &crate::AmqpTls) -> Result<lapin::tcp::OwnedTLSConfig> {
    fn read(field: &str, path: &std::path::Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("AMQP config: tls.{field} = {}: {e}", path.display()),
            )
        })
    }
    let cert_chain = match &tls.ca_file {
        Some(path) => Some(String::from_utf8(read("ca_file", path)?).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "AMQP config: tls.ca_file = {} is not PEM text",
                    path.display()
                ),
            )
        })?),
        None => None,
    };
    let identity = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("client_cert", cert)?,
            key: read("client_key", key)?,
        }),
        _ => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}
