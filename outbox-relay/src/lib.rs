#![doc = include_str!("../README.md")]

pub mod commands;
pub mod config;
pub mod demo;
pub mod http;
pub mod router;
pub mod sink;

pub use config::{Config, ConfigError};
pub use router::Router;
pub use sink::JsonLines;
