#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumer;
pub mod error;
pub mod publisher;

pub use config::KafkaConfig;
pub use error::classify;
pub use publisher::KafkaPublisher;
