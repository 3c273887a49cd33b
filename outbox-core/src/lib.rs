#![doc = include_str!("../README.md")]

pub mod codec;
pub mod duration_serde;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod event_table;
pub mod inbox;
pub mod memory;
pub mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod otel;
pub mod publisher;
pub mod relay;
pub mod retry;
pub mod schema;
pub mod secret;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

pub use envelope::{
    Envelope, EnvelopeBuilder, EnvelopeError, EnvelopeParts, EventId, Headers, TraceContext,
    ValidationLimits,
};
pub use error::{Error, ErrorKind, Result};
pub use event_table::{Checkpoint, LogRelay, LogRelayConfig, LogSource};
pub use inbox::InboxOutcome;
pub use memory::{InMemoryPublisher, InMemoryStore};
pub use metrics::{CountingMetrics, NoMetrics, RelayMetrics};
pub use publisher::{DynPublisher, PublishOutcome, Publisher};
pub use relay::{BatchReport, Relay, RelayConfig};
pub use retry::RetryPolicy;
pub use schema::{Dialect, RowStatus, TableName};
pub use secret::{Secret, redact_url};
pub use store::{
    BacklogStats, Claim, ClaimedEvent, DeadEvent, DeadLetter, DeadLetterAdmin, DeadLetterFilter,
    DeadLetterRecord, DynStore, DynWakeUp, Lease, LeaseToken, Retention, Retry, Store, StoreStats,
    UndecodableRow, WakeUp,
};
