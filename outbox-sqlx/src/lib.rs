// The README's example runs on SQLite; without that feature the crate docs are this line.
#![cfg_attr(feature = "sqlite", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "Outbox stores and enqueue helpers on sqlx: see the crate's README."
)]
// With no database feature the crate has nothing to offer but its shared pieces.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(unused)
)]

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod any;
mod common;
pub mod error;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub mod event_table;
pub mod inbox;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod shape;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub mod store;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use any::{AnyPool, AnyStore, dialect_of};
pub use error::{classify, map_sqlx};

/// Installs rustls's `ring` crypto provider as the process default, unless one is
/// installed already (then it does nothing).
///
/// sqlx picks its TLS provider itself, except for the certificate check of
/// `sslmode=verify-ca` (PostgreSQL) and `ssl-mode=VERIFY_CA` (MySQL), which uses the
/// process default; when a program's dependencies build rustls with two providers (AWS's
/// SDK brings `aws-lc-rs`, other clients `ring`), there is none, and that check panics.
/// [`AnyPool::connect`] calls this first; a program opening its own pools with `verify-ca`
/// should call it (or install a provider of its choice) at start-up.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one in between: as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use store::{Backend, SqlxOutbox, SqlxStore};

outbox_core::adapter_error! {
    /// An error of this crate or of sqlx, for application code that calls both: `?` turns
    /// a `sqlx::Error` (classified as [`map_sqlx`] does), an `outbox_core::Error` or an
    /// envelope error into it, and it converts back into `outbox_core::Error` with its
    /// kind kept.
    pub struct Error;
    sqlx::Error => |e| map_sqlx("database call failed", e),
}
