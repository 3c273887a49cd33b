//! [`SqsPublisher`]: `SendMessageBatch` in groups of 10 within the 256 KiB batch limit.

use std::collections::HashMap;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use futures::future::join_all;
use outbox_core::{Envelope, Error, ErrorKind, PublishOutcome, Publisher, Result};
use tokio::sync::RwLock;

use crate::config::SqsConfig;
use crate::error::{kind_of_code, map_sdk};
use crate::message::{Outgoing, encode};

/// SQS's limits: entries per batch, bytes per message and per batch.
const MAX_ENTRIES: usize = 10;
const MAX_BYTES: usize = 262_144;

/// Publishes envelopes to SQS.
///
/// - Destination: a queue name (resolved once with `GetQueueUrl`, then cached) or a full
///   queue URL. A queue that does not exist is a permanent `DestinationNotFound`.
/// - FIFO queues (`.fifo`): `MessageGroupId` = ordering key, `MessageDeduplicationId` =
///   event id, so a republished event is dropped within SQS's 5-minute dedupe window.
/// - Events go in `SendMessageBatch` calls of up to 10 entries and 256 KiB; batches are
///   sent concurrently. Each entry gets its own outcome from the response's partial
///   failures: sender faults are permanent, service faults and throttling are retried.
/// - A message over 256 KiB is a permanent `TooLarge` before anything is sent.
#[derive(Clone)]
pub struct SqsPublisher {
    client: Client,
    urls: std::sync::Arc<RwLock<HashMap<String, String>>>,
}

impl std::fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsPublisher").finish_non_exhaustive()
    }
}

struct Pending<'a> {
    index: usize,
    envelope: &'a Envelope,
    message: Outgoing,
}

/// An HTTPS client (rustls, aws-lc) that trusts the CA in `ca_file` besides the system's
/// roots.
fn https_client_trusting(
    ca_file: &std::path::Path,
) -> Result<aws_sdk_sqs::config::SharedHttpClient> {
    use aws_smithy_http_client::tls;
    let bad = |why: String| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("SQS config: ca_file = {}: {why}", ca_file.display()),
        )
    };
    let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

impl SqsPublisher {
    /// Builds a client from `config` and the standard AWS environment.
    pub async fn connect(config: &SqsConfig) -> Result<Self> {
        config.validate()?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &config.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(ca) = &config.ca_file {
            loader = loader.http_client(https_client_trusting(ca)?);
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.expose().to_owned(),
                c.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "outbox-sqs config",
            ));
        }
        Ok(Self::with_client(Client::new(&loader.load().await)))
    }

    /// Uses a client the application already has.
    pub fn with_client(client: Client) -> Self {
        SqsPublisher {
            client,
            urls: std::sync::Arc::default(),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue URL for `destination` (a URL, or a name looked up once).
    async fn queue_url(&self, destination: &str) -> Result<String> {
        if destination.starts_with("https://") || destination.starts_with("http://") {
            return Ok(destination.to_owned());
        }
        if let Some(url) = self.urls.read().await.get(destination) {
            return Ok(url.clone());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(destination)
            .send()
            .await
            .map_err(|e| map_sdk(destination, e))?;
        let url = out.queue_url().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                format!("SQS returned no URL for queue {destination:?}"),
            )
        })?;
        self.urls
            .write()
            .await
            .insert(destination.to_owned(), url.to_owned());
        Ok(url.to_owned())
    }

    fn entry(
        p: &Pending<'_>,
        fifo: bool,
    ) -> std::result::Result<SendMessageBatchRequestEntry, String> {
        let mut b = SendMessageBatchRequestEntry::builder()
            .id(p.index.to_string())
            .message_body(p.message.body.clone());
        for (k, v) in &p.message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v.clone())
                .build()
                .map_err(|e| e.to_string())?;
            b = b.message_attributes(k.clone(), value);
        }
        if fifo {
            b = b
                .message_group_id(p.envelope.ordering_key())
                .message_deduplication_id(p.envelope.id().to_string());
        }
        b.build().map_err(|e| e.to_string())
    }

    /// Sends one batch; returns the outcome of each of its events by index.
    async fn send_batch(
        &self,
        queue: &str,
        url: &str,
        batch: Vec<Pending<'_>>,
    ) -> Vec<(usize, PublishOutcome)> {
        let fifo = url.ends_with(".fifo");
        let mut entries = Vec::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len());
        for p in &batch {
            match Self::entry(p, fifo) {
                Ok(e) => entries.push(e),
                Err(why) => out.push((
                    p.index,
                    PublishOutcome::Failed(Error::new(
                        ErrorKind::InvalidInput,
                        format!("event {} for SQS queue {queue:?}: {why}", p.envelope.id()),
                    )),
                )),
            }
        }
        if entries.is_empty() {
            return out;
        }
        let sent = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match sent {
            Err(e) => {
                let err = map_sdk(queue, e);
                for p in &batch {
                    if !out.iter().any(|(i, _)| *i == p.index) {
                        out.push((
                            p.index,
                            PublishOutcome::Failed(Error::new(err.kind(), err.to_string())),
                        ));
                    }
                }
            }
            Ok(resp) => {
                for ok in resp.successful() {
                    if let Ok(i) = ok.id().parse::<usize>() {
                        out.push((i, PublishOutcome::Published));
                    }
                }
                for f in resp.failed() {
                    if let Ok(i) = f.id().parse::<usize>() {
                        let kind = kind_of_code(f.code(), Some(f.sender_fault()));
                        out.push((
                            i,
                            PublishOutcome::Failed(Error::new(
                                kind,
                                format!(
                                    "SQS queue {queue:?} refused the entry: {}: {}",
                                    f.code(),
                                    f.message().unwrap_or("")
                                ),
                            )),
                        ));
                    }
                }
            }
        }
        out
    }
}

impl Publisher for SqsPublisher {
    async fn publish(&self, events: &[Envelope]) -> Vec<PublishOutcome> {
        let mut outcomes: Vec<Option<PublishOutcome>> = events.iter().map(|_| None).collect();
        // Group by destination, keeping event order within each group.
        let mut groups: Vec<(&str, Vec<Pending<'_>>)> = Vec::new();
        for (index, envelope) in events.iter().enumerate() {
            let message = encode(envelope);
            if message.size() > MAX_BYTES {
                outcomes[index] = Some(PublishOutcome::Failed(Error::new(
                    ErrorKind::TooLarge,
                    format!(
                        "event {} is {} bytes as an SQS message; the limit is {MAX_BYTES}",
                        envelope.id(),
                        message.size()
                    ),
                )));
                continue;
            }
            let p = Pending {
                index,
                envelope,
                message,
            };
            match groups
                .iter_mut()
                .find(|(d, _)| *d == envelope.destination())
            {
                Some((_, g)) => g.push(p),
                None => groups.push((envelope.destination(), vec![p])),
            }
        }
        // Split each group into batches within SQS's limits, then send them all at once.
        let mut sends = Vec::new();
        for (dest, pending) in groups {
            let url = match self.queue_url(dest).await {
                Ok(u) => u,
                Err(e) => {
                    for p in pending {
                        outcomes[p.index] =
                            Some(PublishOutcome::Failed(Error::new(e.kind(), e.to_string())));
                    }
                    continue;
                }
            };
            let mut batch: Vec<Pending<'_>> = Vec::new();
            let mut bytes = 0;
            for p in pending {
                if batch.len() == MAX_ENTRIES || bytes + p.message.size() > MAX_BYTES {
                    sends.push((dest, url.clone(), std::mem::take(&mut batch)));
                    bytes = 0;
                }
                bytes += p.message.size();
                batch.push(p);
            }
            if !batch.is_empty() {
                sends.push((dest, url, batch));
            }
        }
        let results = join_all(
            sends
                .into_iter()
                .map(|(dest, url, batch)| async move { self.send_batch(dest, &url, batch).await }),
        )
        .await;
        for (i, o) in results.into_iter().flatten() {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(o);
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    PublishOutcome::Failed(Error::new(
                        ErrorKind::Unavailable,
                        "SQS reported no result for the entry",
                    ))
                })
            })
            .collect()
    }

    /// `aws_sqs`.
    fn messaging_system(&self, _event: &Envelope) -> &'static str {
        "aws_sqs"
    }
}
