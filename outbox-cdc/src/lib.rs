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
