#![doc = include_str!("../README.md")]

mod backend;
pub mod error;
pub mod inbox;
#[cfg(feature = "async")]
pub mod store;

#[cfg(any(feature = "mysql", feature = "async"))]
pub use backend::mysql;
#[cfg(any(feature = "postgres", feature = "async"))]
pub use backend::pg;
#[cfg(feature = "sqlite")]
pub use backend::sqlite;
pub use error::{map_connection, map_diesel};
#[cfg(feature = "async")]
pub use store::DieselPgStore;
