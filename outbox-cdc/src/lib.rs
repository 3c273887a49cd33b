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

#[cfg(feature = "postgres")]
outbox_core::adapter_error! {
    /// An error of this crate or of sqlx, for application code that calls them together:
    /// `?` turns a `sqlx::Error`, an `outbox_core::Error` or an envelope error into it, and
    /// it converts back into `outbox_core::Error` with its kind kept.
    pub struct Error;
    sqlx::Error => |e| outbox_sqlx::map_sqlx("database call failed", e),
}

#[cfg(not(feature = "postgres"))]
outbox_core::adapter_error! {
    /// An error of this crate: `?` turns an `outbox_core::Error` or an envelope error into
    /// it, and it converts back into `outbox_core::Error` with its kind kept.
    pub struct Error;
}
