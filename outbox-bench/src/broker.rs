//! Brokers: a destination of its own per case (a JetStream stream, a durable RabbitMQ queue,
//! a Kafka topic), the publisher config the relay gets for it, what arrived, and the
//! client's own pipelined publish loop (the raw ceiling).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::future::BoxFuture;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use outbox_amqp::AmqpPublisher;
use outbox_core::{Envelope, transport};
use outbox_nats::NatsPublisher;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};

use crate::{Res, Urls};

/// Acknowledgements the raw loops keep in flight.
const WINDOW: usize = 1000;

/// The brokers the relay publishes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Broker {
    /// NATS JetStream.
    Nats,
    /// RabbitMQ with publisher confirms.
    Rabbit,
    /// Kafka protocol (the tansu broker).
    Kafka,
}

impl Broker {
    /// Every broker, in table order.
    pub const ALL: [Broker; 3] = [Broker::Nats, Broker::Rabbit, Broker::Kafka];

    /// Short name for the table.
    pub fn label(self) -> &'static str {
        match self {
            Broker::Nats => "JetStream",
            Broker::Rabbit => "RabbitMQ",
            Broker::Kafka => "Kafka",
        }
    }
}

fn bootstrap(url: &str) -> String {
    url.trim_start_matches("kafka://").to_owned()
}

fn kafka_admin(urls: &Urls) -> Res<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap(&urls.kafka))
        .create()?)
}

/// A destination of its own on one broker.
pub struct Dest {
    /// The broker.
    pub broker: Broker,
    /// Stream, queue or topic name.
    pub name: String,
    /// What envelopes carry as `destination`.
    pub destination: String,
    urls: Urls,
}

impl Dest {
    /// Creates the stream (file storage), durable queue or 3-partition topic.
    pub async fn create(broker: Broker, urls: &Urls, tag: &str) -> Res<Dest> {
        let name = format!(
            "outbox_bench_{tag}_{}_{}",
            std::process::id(),
            fastrand::u32(..)
        );
        let destination = match broker {
            Broker::Nats => {
                let js = nats(urls).await?;
                js.create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{name}.>")],
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating JetStream stream {name}: {e}"))?;
                format!("{name}.events")
            }
            Broker::Rabbit => {
                let conn = amqp(urls).await?;
                let ch = conn.create_channel().await?;
                ch.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
                let _ = conn.close(200, "bye".into()).await;
                format!("/{name}")
            }
            Broker::Kafka => {
                let admin = kafka_admin(urls)?;
                for r in admin
                    .create_topics(
                        &[NewTopic::new(&name, 3, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                    )
                    .await?
                {
                    r.map_err(|(t, e)| format!("creating Kafka topic {t}: {e}"))?;
                }
                name.clone()
            }
        };
        Ok(Dest {
            broker,
            name,
            destination,
            urls: urls.clone(),
        })
    }

    /// The `[publishers.<name>]` body `outbox run` would be given for this broker.
    pub fn publisher_toml(&self) -> String {
        match self.broker {
            Broker::Nats => format!("kind = \"nats\"\nurl = \"{}\"\n", self.urls.nats),
            Broker::Rabbit => format!("kind = \"amqp\"\nurl = \"{}\"\n", self.urls.amqp),
            Broker::Kafka => format!(
                "kind = \"kafka\"\nbootstrap_servers = \"{}\"\n",
                bootstrap(&self.urls.kafka)
            ),
        }
    }

    /// The service addresses.
    pub fn urls(&self) -> &Urls {
        &self.urls
    }

    /// Messages the broker holds for this destination (on Kafka: read back, stopping at
    /// `expect`).
    pub async fn count(&self, expect: u64) -> Res<u64> {
        match self.broker {
            Broker::Nats => {
                let js = nats(&self.urls).await?;
                let mut s = js.get_stream(&self.name).await?;
                Ok(s.info().await?.state.messages)
            }
            Broker::Rabbit => {
                let conn = amqp(&self.urls).await?;
                let ch = conn.create_channel().await?;
                let q = ch
                    .queue_declare(
                        self.name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                let _ = conn.close(200, "bye".into()).await;
                Ok(u64::from(q.message_count()))
            }
            Broker::Kafka => {
                // Read back rather than trust watermarks: tansu's offsets are not one per
                // record. Stops at `expect` messages, or after 3 s without one (15 s before
                // the first, while the consumer joins its group).
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", bootstrap(&self.urls.kafka))
                    .set(
                        "group.id",
                        format!("{}_count_{}", self.name, fastrand::u32(..)),
                    )
                    .set("auto.offset.reset", "earliest")
                    .set("enable.auto.commit", "false")
                    .create()?;
                consumer.subscribe(&[self.name.as_str()])?;
                tokio::task::spawn_blocking(move || {
                    let mut seen = 0u64;
                    let mut quiet_since = Instant::now();
                    let quiet = |seen: u64| Duration::from_secs(if seen == 0 { 15 } else { 3 });
                    while seen < expect && quiet_since.elapsed() < quiet(seen) {
                        match consumer.poll(Duration::from_millis(100)) {
                            Some(Ok(_)) => {
                                seen += 1;
                                quiet_since = Instant::now();
                            }
                            Some(Err(e)) => return Err(e),
                            None => {}
                        }
                    }
                    Ok::<u64, rdkafka::error::KafkaError>(seen)
                })
                .await?
                .map_err(Into::into)
            }
        }
    }

    /// Removes the stream, queue or topic.
    pub async fn delete(self) -> Res<()> {
        match self.broker {
            Broker::Nats => {
                nats(&self.urls).await?.delete_stream(&self.name).await?;
            }
            Broker::Rabbit => {
                let conn = amqp(&self.urls).await?;
                let ch = conn.create_channel().await?;
                ch.queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
                    .await?;
                let _ = conn.close(200, "bye".into()).await;
            }
            Broker::Kafka => {
                let admin = kafka_admin(&self.urls)?;
                let _ = admin
                    .delete_topics(&[self.name.as_str()], &AdminOptions::new())
                    .await?;
            }
        }
        Ok(())
    }

    /// The raw ceiling: the broker client's own publish loop, `WINDOW` acknowledgements in
    /// flight, byte for byte the messages the adapter sends (built by the adapter's own
    /// message functions before the clock starts, which favours this loop). Events per
    /// second.
    pub async fn raw_publish(&self, events: &[Envelope]) -> Res<f64> {
        let mut acks = Window::default();
        match self.broker {
            Broker::Nats => {
                let js = nats(&self.urls).await?;
                let msgs: Vec<_> = events.iter().map(NatsPublisher::message).collect();
                let start = Instant::now();
                for m in msgs {
                    let ack = js
                        .send_publish(self.destination.clone(), m)
                        .await
                        .map_err(|e| format!("JetStream publish: {e}"))?;
                    acks.push(Box::pin(async move {
                        ack.await.map_err(|e| format!("JetStream ack: {e}"))?;
                        Ok(())
                    }))
                    .await?;
                }
                acks.finish().await?;
                Ok(events.len() as f64 / start.elapsed().as_secs_f64())
            }
            Broker::Rabbit => {
                let conn = amqp(&self.urls).await?;
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                let props: Vec<BasicProperties> =
                    events.iter().map(AmqpPublisher::properties).collect();
                let start = Instant::now();
                for (p, e) in props.into_iter().zip(events) {
                    let confirm = ch
                        .basic_publish(
                            "".into(),
                            self.name.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            e.payload(),
                            p,
                        )
                        .await?;
                    acks.push(Box::pin(async move {
                        match confirm.await? {
                            Confirmation::Ack(None) => Ok(()),
                            other => {
                                Err(format!("RabbitMQ did not take a message: {other:?}").into())
                            }
                        }
                    }))
                    .await?;
                }
                acks.finish().await?;
                let rate = events.len() as f64 / start.elapsed().as_secs_f64();
                let _ = conn.close(200, "bye".into()).await;
                Ok(rate)
            }
            Broker::Kafka => {
                // The adapter's own producer, so the settings (idempotence, acks=all, linger)
                // are exactly the relay's.
                let publisher = outbox_kafka::KafkaPublisher::new(outbox_kafka::KafkaConfig::new(
                    bootstrap(&self.urls.kafka),
                ))?;
                let producer = publisher.producer().clone();
                // Topic metadata before the clock starts, as a running relay has it.
                let (warm, topic) = (producer.clone(), self.name.clone());
                tokio::task::spawn_blocking(move || {
                    warm.client()
                        .fetch_metadata(Some(&topic), Duration::from_secs(10))
                        .map(|_| ())
                })
                .await??;
                let msgs: Vec<(OwnedHeaders, &Envelope)> = events
                    .iter()
                    .map(|e| {
                        let mut h = OwnedHeaders::new();
                        for (k, v) in transport::message_headers(e) {
                            h = h.insert(Header {
                                key: k,
                                value: Some(v.as_bytes()),
                            });
                        }
                        (h, e)
                    })
                    .collect();
                let start = Instant::now();
                for (h, e) in msgs {
                    let mut record = FutureRecord::to(&self.name)
                        .key(e.ordering_key())
                        .payload(e.payload().as_ref())
                        .headers(h);
                    let delivery = loop {
                        match producer.send_result(record) {
                            Ok(d) => break d,
                            Err((_, r)) => {
                                // Local queue full: let deliveries drain.
                                record = r;
                                if !acks.wait_oldest().await? {
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                            }
                        }
                    };
                    acks.push(Box::pin(async move {
                        match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(format!("Kafka delivery: {e}").into()),
                            Err(_) => Err("Kafka producer dropped a delivery".into()),
                        }
                    }))
                    .await?;
                }
                acks.finish().await?;
                Ok(events.len() as f64 / start.elapsed().as_secs_f64())
            }
        }
    }
}

/// Acknowledgements in flight, at most [`WINDOW`]: the oldest is awaited when it is full.
#[derive(Default)]
struct Window {
    acks: VecDeque<BoxFuture<'static, Res<()>>>,
}

impl Window {
    async fn push(&mut self, ack: BoxFuture<'static, Res<()>>) -> Res<()> {
        self.acks.push_back(ack);
        if self.acks.len() >= WINDOW {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    /// Awaits the oldest acknowledgement; false when none is in flight.
    async fn wait_oldest(&mut self) -> Res<bool> {
        match self.acks.pop_front() {
            Some(a) => a.await.map(|()| true),
            None => Ok(false),
        }
    }

    async fn finish(mut self) -> Res<()> {
        while self.wait_oldest().await? {}
        Ok(())
    }
}

/// A JetStream context on `urls.nats`.
pub async fn nats(urls: &Urls) -> Res<jetstream::Context> {
    let client = async_nats::connect(&urls.nats)
        .await
        .map_err(|e| format!("NATS at {}: {e}", urls.nats))?;
    Ok(jetstream::new(client))
}

async fn amqp(urls: &Urls) -> Res<Connection> {
    Connection::connect(&urls.amqp, ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ at {}: {e}", outbox_core::redact_url(&urls.amqp)).into())
}
