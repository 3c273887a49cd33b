#![doc = include_str!("../README.md")]

mod backend;
pub mod error;
pub mod inbox;
#[cfg(feature = "async-postgres")]
pub mod pg_tls;
#[cfg(feature = "async-postgres")]
pub mod store;
#[cfg(any(feature = "postgres", feature = "async-postgres"))]
mod wal;

#[cfg(any(feature = "mysql", feature = "async-mysql"))]
pub use backend::mysql;
#[cfg(any(feature = "postgres", feature = "async-postgres"))]
pub use backend::pg;
#[cfg(feature = "sqlite")]
pub use backend::sqlite;
pub use error::{map_connection, map_diesel};
#[cfg(feature = "async-postgres")]
pub use store::DieselPgStore;

outbox_core::adapter_error! {
    /// An error of this crate or of diesel, for application code that calls both: `?`
    /// turns a `diesel::result::Error` or `diesel::ConnectionError` (classified as
    /// [`map_diesel`] and [`map_connection`] do), an `outbox_core::Error` or an envelope
    /// error into it, and it converts back into `outbox_core::Error` with its kind kept.
    pub struct Error;
    diesel::result::Error => |e| map_diesel("database call failed", e),
    diesel::ConnectionError => |e| map_connection("connecting to the database", e),
}
