//! The one error type that stores, publishers and the relay share.
//!
//! The relay never inspects a message string: whether a failure is retried or sent to the
//! dead letters is decided by [`ErrorKind`] through [`Error::is_retryable`].

use std::fmt;

/// A boxed error source, kept for `std::error::Error::source` chains.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The class of a failure. Adapters map their client's errors onto these kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection to the database or broker was refused, reset or lost. Retryable.
    Connection,
    /// An operation did not finish in time. Retryable.
    Timeout,
    /// The service answered but is temporarily unable to serve (broker not available,
    /// leader election, database shutting down, a negative acknowledgement). Retryable.
    Unavailable,
    /// The service asked us to slow down (quota, throttling). Retryable.
    Throttled,
    /// The destination (topic, subject, queue, exchange) does not exist or captures nothing.
    /// Permanent.
    DestinationNotFound,
    /// The message was rejected as too large by the broker. Permanent.
    TooLarge,
    /// Authentication or authorisation failed. Permanent.
    Unauthorized,
    /// The broker or database refused the message or row as invalid (a constraint
    /// violation, an unroutable message, a malformed attribute). Permanent.
    Rejected,
    /// Input given to the toolkit was invalid (an envelope field, a table name, a setting).
    /// Permanent.
    InvalidInput,
    /// A stored row could not be decoded into an envelope. Permanent.
    Decode,
    /// The relay's lease on a claimed row was lost: another relay may own it now.
    LeaseLost,
    /// Anything else; treated as permanent so the relay does not spin on it. The event is
    /// kept as a dead letter and can be requeued.
    Other,
}

impl ErrorKind {
    /// Whether an operation that failed with this kind may succeed if tried again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::Throttled
        )
    }

    /// A short, stable, lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Throttled => "throttled",
            ErrorKind::DestinationNotFound => "destination_not_found",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Rejected => "rejected",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Decode => "decode",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a store, a publisher or the relay: a [`ErrorKind`], a message and an
/// optional source.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the failed operation may succeed if tried again (decided by the kind).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The message followed by the chain of sources, for storing in `last_error`.
    pub fn to_report(&self) -> String {
        use std::error::Error as _;
        let mut out = self.to_string();
        let mut next = self.source();
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }
}

impl From<crate::envelope::EnvelopeError> for Error {
    fn from(err: crate::envelope::EnvelopeError) -> Self {
        Error::new(ErrorKind::InvalidInput, err.to_string()).with_source(err)
    }
}

/// `Result` with the toolkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds_are_exactly_the_transient_ones() {
        let retryable = [
            ErrorKind::Connection,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::Throttled,
        ];
        let permanent = [
            ErrorKind::DestinationNotFound,
            ErrorKind::TooLarge,
            ErrorKind::Unauthorized,
            ErrorKind::Rejected,
            ErrorKind::InvalidInput,
            ErrorKind::Decode,
            ErrorKind::LeaseLost,
            ErrorKind::Other,
        ];
        for kind in retryable {
            assert!(Error::new(kind, "x").is_retryable(), "{kind}");
        }
        for kind in permanent {
            assert!(!Error::new(kind, "x").is_retryable(), "{kind}");
        }
    }

    #[test]
    fn report_includes_the_source_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
        let err = Error::new(ErrorKind::Connection, "publishing to orders").with_source(io);
        assert_eq!(
            err.to_report(),
            "connection: publishing to orders: peer reset"
        );
    }
}
