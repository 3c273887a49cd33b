#![doc = include_str!("../README.md")]

mod any;
mod common;
pub mod error;
pub mod event_table;
pub mod inbox;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod shape;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use any::{AnyPool, AnyStore, dialect_of};
pub use error::{classify, map_sqlx};
