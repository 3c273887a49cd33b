#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumer;
pub mod error;
pub mod publisher;

pub use config::{NatsAuth, NatsConfig, NatsTls};
pub use error::map_publish_error;
pub use publisher::NatsPublisher;

outbox_core::adapter_error! {
    /// An error of this crate or of async-nats, for application code that calls both: `?`
    /// turns an async-nats connect error (`Connection`, retried) or JetStream publish error
    /// (classified as [`map_publish_error`] does), an `outbox_core::Error` or an envelope
    /// error into it, and it converts back into `outbox_core::Error` with its kind kept.
    pub struct Error;
    async_nats::jetstream::context::PublishError => |e| {
        outbox_core::Error::new(error::publish_error_kind(&e), "JetStream publish failed").with_source(e)
    },
    async_nats::ConnectError => |e| outbox_core::Error::new(outbox_core::ErrorKind::Connection, "connecting to NATS").with_source(e),
}
