#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumer;
pub mod error;
pub mod publisher;

pub use config::{NatsAuth, NatsConfig, NatsTls};
pub use error::map_publish_error;
pub use publisher::NatsPublisher;
