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

outbox_core::adapter_error! {
    /// An error of this crate or of sqlx, for application code that calls both: `?` turns
    /// a `sqlx::Error` (classified as [`map_sqlx`] does), an `outbox_core::Error` or an
    /// envelope error into it, and it converts back into `outbox_core::Error` with its
    /// kind kept.
    pub struct Error;
    sqlx::Error => |e| map_sqlx("database call failed", e),
}
