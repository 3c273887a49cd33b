//! Mapping diesel errors onto core's error kinds.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use outbox_core::{Error, ErrorKind};

/// Classifies a diesel error: constraint violations are `Rejected`; serialisation failures,
/// deadlocks, lock timeouts and busy databases are `Unavailable` (retried); a closed
/// connection is `Connection`; the rest is `Other`.
pub fn map_diesel(context: &str, err: DieselError) -> Error {
    let kind = match &err {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation => ErrorKind::Rejected,
            DatabaseErrorKind::SerializationFailure => ErrorKind::Unavailable,
            DatabaseErrorKind::ClosedConnection => ErrorKind::Connection,
            _ => {
                let m = info.message().to_ascii_lowercase();
                if m.contains("deadlock")
                    || m.contains("lock wait timeout")
                    || m.contains("database is locked")
                    || m.contains("could not obtain lock")
                {
                    ErrorKind::Unavailable
                } else if m.contains("does not exist")
                    || m.contains("doesn't exist")
                    || m.contains("no such table")
                {
                    ErrorKind::InvalidInput
                } else {
                    ErrorKind::Other
                }
            }
        },
        DieselError::BrokenTransactionManager => ErrorKind::Connection,
        DieselError::DeserializationError(_) => ErrorKind::Decode,
        _ => ErrorKind::Other,
    };
    Error::new(kind, context.to_owned()).with_source(err)
}

/// Classifies a connection failure.
pub fn map_connection(context: &str, err: diesel::ConnectionError) -> Error {
    let kind = match &err {
        diesel::ConnectionError::InvalidConnectionUrl(_) => ErrorKind::InvalidInput,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, context.to_owned()).with_source(err)
}
