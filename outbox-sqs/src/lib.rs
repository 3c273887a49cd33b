#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumer;
pub mod error;
pub mod message;
pub mod publisher;

pub use config::{SqsConfig, SqsCredentials};
pub use message::{Decoded, decode_attributes};
pub use publisher::SqsPublisher;
