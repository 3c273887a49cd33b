#![doc = include_str!("../README.md")]

#[cfg(feature = "postgres")]
pub mod ledger;
#[cfg(feature = "postgres")]
pub mod pgoutput;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod relay;
#[cfg(feature = "postgres")]
pub mod slot;

outbox_core::adapter_error! {
    /// An error of this crate, of sqlx or of the replication client, for application code
    /// that calls them together: `?` turns a `sqlx::Error`, an `outbox_core::Error` or an
    /// envelope error into it, and it converts back into `outbox_core::Error` with its
    /// kind kept.
    pub struct Error;
    sqlx::Error => |e| outbox_sqlx::map_sqlx("database call failed", e),
}
