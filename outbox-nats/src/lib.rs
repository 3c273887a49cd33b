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
    /// turns any async-nats error (connect, publish, stream management: `Connection` when
    /// connecting, else `Unavailable`, retried; a JetStream publish error as
    /// [`map_publish_error`] classifies it), an `outbox_core::Error` or an envelope error
    /// into it, and it converts back into `outbox_core::Error` with its kind kept.
    pub struct Error;
    async_nats::jetstream::context::PublishError => |e| map_publish_error("(application)", e),
    async_nats::ConnectError => |e| outbox_core::Error::new(outbox_core::ErrorKind::Connection, "connecting to NATS").with_source(e),
}
