#![doc = include_str!("../README.md")]

pub mod enqueue;
pub mod entity;
pub mod error;
pub mod inbox;
pub mod migration;
pub mod store;

pub use enqueue::{enqueue, enqueue_all};
pub use error::map_db_err;
pub use migration::{CreateOutboxTable, OutboxMigrator};
pub use store::{SeaOrmStore, store, store_for_table};
