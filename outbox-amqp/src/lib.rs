#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumer;
pub mod error;
pub mod publisher;

pub use config::{AmqpConfig, AmqpTls, Route};
pub use publisher::AmqpPublisher;

outbox_core::adapter_error! {
    /// An error of this crate or of lapin, for application code that calls both: `?`
    /// turns a `lapin::Error` (classified as [`error::map_lapin`] does), an
    /// `outbox_core::Error` or an envelope error into it, and it converts back into
    /// `outbox_core::Error` with its kind kept.
    pub struct Error;
    lapin::Error => |e| error::map_lapin("RabbitMQ call failed", e),
}
