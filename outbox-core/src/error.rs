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

/// Defines an adapter crate's error type: a wrapper around [`Error`] that converts `From`
/// the crate's driver errors (classified into an [`ErrorKind`]) and from [`Error`], and
/// back `Into` [`Error`] with its kind kept. Application code that mixes the driver's calls
/// and the adapter's then uses `?` on both, with no `map_err`:
///
/// ```
/// # mod driver { #[derive(Debug)] pub struct Refused; impl std::fmt::Display for Refused {
/// #   fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("refused") } }
/// #   impl std::error::Error for Refused {} }
/// outbox_core::adapter_error! {
///     /// Errors of this adapter and of its driver.
///     pub struct Error;
///     driver::Refused => |e| outbox_core::Error::new(outbox_core::ErrorKind::Connection, "driver").with_source(e),
/// }
///
/// fn connect() -> Result<(), driver::Refused> { Err(driver::Refused) }
/// fn enqueue() -> outbox_core::Result<()> { Ok(()) }
/// fn both() -> Result<(), Error> {
///     enqueue()?;
///     connect()?;
///     Ok(())
/// }
/// let err = both().expect_err("refused");
/// assert_eq!(err.kind(), outbox_core::ErrorKind::Connection);
/// let core: outbox_core::Error = err.into();
/// assert!(core.is_retryable());
/// ```
#[macro_export]
macro_rules! adapter_error {
    (
        $(#[$meta:meta])*
        pub struct $name:ident;
        $($driver:ty => $convert:expr),* $(,)?
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name($crate::Error);

        impl $name {
            /// The kind of failure (retryable or not, and why).
            pub fn kind(&self) -> $crate::ErrorKind {
                self.0.kind()
            }

            /// The message followed by the chain of sources.
            pub fn to_report(&self) -> ::std::string::String {
                self.0.to_report()
            }

            /// The core error inside.
            pub fn into_inner(self) -> $crate::Error {
                self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl ::std::error::Error for $name {
            fn source(&self) -> ::std::option::Option<&(dyn ::std::error::Error + 'static)> {
                ::std::error::Error::source(&self.0)
            }
        }

        impl ::std::convert::From<$crate::Error> for $name {
            fn from(err: $crate::Error) -> Self {
                $name(err)
            }
        }

        impl ::std::convert::From<$name> for $crate::Error {
            fn from(err: $name) -> Self {
                err.0
            }
        }

        impl ::std::convert::From<$crate::envelope::EnvelopeError> for $name {
            fn from(err: $crate::envelope::EnvelopeError) -> Self {
                $name(err.into())
            }
        }

        $(
            impl ::std::convert::From<$driver> for $name {
                fn from(err: $driver) -> Self {
                    let convert: fn($driver) -> $crate::Error = $convert;
                    $name(convert(err))
                }
            }
        )*
    };
}

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
