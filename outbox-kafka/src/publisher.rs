//! [`KafkaPublisher`]: an idempotent producer with one outcome per event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use outbox_core::{Envelope, Error, ErrorKind, PublishOutcome, Publisher, Result, transport};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::config::KafkaConfig;
use crate::error::classify;

/// Publishes envelopes to Kafka with librdkafka's idempotent producer
/// (`enable.idempotence=true`, `acks=all`; the config refuses weaker settings).
///
/// - destination -> topic; ordering key -> message key, so a key's events share a
///   partition and keep their order; headers -> Kafka headers (the toolkit's transport
///   headers, `outbox-event-id` among them, and the user's);
/// - a batch is handed to librdkafka without waiting, then each event's delivery report is
///   awaited: one outcome per event;
/// - a full local queue waits for room (up to `message_timeout`) instead of failing.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer<LastError>,
    last_error: LastError,
    config: KafkaConfig,
}

/// The producer's context: remembers librdkafka's last client-level error (a refused TLS
/// handshake, a failed SASL authentication, an unreachable broker), which a delivery
/// report ("message timed out") does not carry, so failures can say their cause.
#[derive(Clone, Default)]
pub struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// The last client-level error librdkafka reported, if any.
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|e| e.clone())
    }
}

impl ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "librdkafka client error");
        // "all brokers are down" follows the error that brought them down: keep that one.
        let follow_up = matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown));
        if let Ok(mut last) = self.0.lock()
            && !(follow_up && last.is_some())
        {
            *last = Some(reason.to_owned());
        }
    }
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A topic name Kafka accepts: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(t: &str) -> std::result::Result<(), String> {
    if t.is_empty() || t.len() > 249 || t == "." || t == ".." {
        return Err(format!(
            "topic {t:?} must be 1 to 249 characters, not . or .."
        ));
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "topic {t:?} may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl KafkaPublisher {
    /// Creates the producer from `config` (validated first).
    pub fn new(config: KafkaConfig) -> Result<Self> {
        config.validate()?;
        let last_error = LastError::default();
        let producer: FutureProducer<LastError> = config
            .client_config()
            .create_with_context(last_error.clone())
            .map_err(|e| {
                Error::new(ErrorKind::InvalidInput, "creating the Kafka producer").with_source(e)
            })?;
        Ok(KafkaPublisher {
            producer,
            last_error,
            config,
        })
    }

    /// The underlying producer.
    pub fn producer(&self) -> &FutureProducer<LastError> {
        &self.producer
    }

    /// Waits until every message handed to librdkafka is delivered or failed.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| Error::new(classify(&e), "flushing the Kafka producer").with_source(e))
    }

    fn failed(&self, topic: &str, e: &KafkaError) -> PublishOutcome {
        let cause = match self.last_error.get() {
            Some(last) => format!(" (the client's last error: {last})"),
            None => String::new(),
        };
        PublishOutcome::Failed(Error::new(
            classify(e),
            format!("producing to Kafka topic {topic:?}: {e}{cause}"),
        ))
    }

    /// Hands one event to librdkafka, waiting for room in a full local queue.
    async fn enqueue(
        &self,
        e: &Envelope,
    ) -> std::result::Result<rdkafka::producer::DeliveryFuture, PublishOutcome> {
        let topic = e.destination();
        if let Err(why) = check_topic(topic) {
            return Err(PublishOutcome::Failed(Error::new(
                ErrorKind::InvalidInput,
                format!("destination {why}"),
            )));
        }
        let mut headers = OwnedHeaders::new();
        for (k, v) in transport::message_headers(e) {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .key(e.ordering_key())
            .payload(e.payload().as_ref())
            .headers(headers);
        let give_up = tokio::time::Instant::now() + self.config.message_timeout;
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if tokio::time::Instant::now() < give_up =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((err, _)) => return Err(self.failed(topic, &err)),
            }
        }
    }
}

impl Publisher for KafkaPublisher {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            pending.push((e.destination(), self.enqueue(e).await));
        }
        join_all(pending.into_iter().map(|(topic, p)| async move {
            match p {
                Err(outcome) => outcome,
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => PublishOutcome::Published,
                    Ok(Err((err, _))) => self.failed(topic, &err),
                    Err(_canceled) => PublishOutcome::Failed(Error::new(
                        ErrorKind::Connection,
                        format!("the Kafka producer shut down before reporting on topic {topic:?}"),
                    )),
                },
            }
        }))
        .await
    }

    /// `true`: the ordering key is the message key, so a key's events share a partition;
    /// a call hands them to librdkafka in slice order, and the idempotent producer numbers
    /// each partition's messages, so the broker refuses a message whose predecessor it has
    /// not stored. The relay hands a key's run over in one call.
    ///
    /// The exception is a message librdkafka gives up on (`message_timeout`) while it may
    /// still be in flight: it is reported failed although the broker may have stored it, and
    /// the partition's later messages go on. Its retry carries the same event id.
    fn ordered_runs(&self) -> bool {
        true
    }

    /// `kafka`.
    fn messaging_system(&self, _event: &Envelope) -> &'static str {
        "kafka"
    }
}
