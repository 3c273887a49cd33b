#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumer;
pub mod error;
pub mod publisher;

pub use config::{KafkaConfig, KafkaSasl, KafkaTls};
pub use error::classify;
pub use publisher::{KafkaPublisher, LastError};

outbox_core::adapter_error! {
    /// An error of this crate or of rdkafka, for application code that calls both: `?`
    /// turns a `KafkaError` (classified as [`classify`] does), an `outbox_core::Error` or an
    /// envelope error into it, and it converts back into `outbox_core::Error` with its kind
    /// kept.
    pub struct Error;
    rdkafka::error::KafkaError => |e| outbox_core::Error::new(classify(&e), "Kafka call failed").with_source(e),
}
