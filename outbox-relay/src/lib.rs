#![doc = include_str!("../README.md")]

#[cfg(feature = "cdc")]
pub mod cdc;
pub mod commands;
pub mod config;
#[cfg(feature = "sqlite")]
pub mod demo;
pub mod http;
pub mod router;
pub mod sink;
#[cfg(feature = "opentelemetry")]
pub mod telemetry;

pub use config::{Config, ConfigError};
pub use router::Router;
pub use sink::JsonLines;

#[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
compile_error!("outbox-relay needs at least one database feature: postgres, mysql or sqlite");
