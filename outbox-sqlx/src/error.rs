//! Mapping sqlx errors onto core's error kinds.

use outbox_core::{Error, ErrorKind};

/// Classifies a sqlx error: lost connections, pool timeouts and transient database
/// conditions (deadlock, serialisation failure, lock wait timeout, shutdown) are retryable;
/// constraint violations are rejected; decoding problems are decode errors.
pub fn map_sqlx(context: &str, err: sqlx::Error) -> Error {
    let kind = classify(&err);
    Error::new(kind, context.to_owned()).with_source(err)
}

fn classify(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed => ErrorKind::Connection,
        sqlx::Error::WorkerCrashed => ErrorKind::Connection,
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        sqlx::Error::Configuration(_) => ErrorKind::InvalidInput,
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => ErrorKind::Decode,
        sqlx::Error::Database(db) => {
            use sqlx::error::ErrorKind as K;
            match db.kind() {
                K::UniqueViolation
                | K::ForeignKeyViolation
                | K::NotNullViolation
                | K::CheckViolation => {
                    return ErrorKind::Rejected;
                }
                _ => {}
            }
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                // PostgreSQL: serialization failure, deadlock, lock not available, admin
                // shutdown, crash shutdown, cannot connect now, too many connections.
                "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300" => {
                    ErrorKind::Unavailable
                }
                // MySQL/MariaDB: lock wait timeout, deadlock, too many connections, server shutdown.
                "1205" | "1213" | "1040" | "1053" => ErrorKind::Unavailable,
                // A generic MySQL state whose message names a deadlock or lock wait.
                "HY000" if is_mysql_transient(db.message()) => ErrorKind::Unavailable,
                // SQLite: busy / locked.
                "5" | "6" | "517" | "262" => ErrorKind::Unavailable,
                // PostgreSQL undefined table / MySQL no such table / SQLite: not migrated.
                "42P01" | "1146" => ErrorKind::InvalidInput,
                _ => ErrorKind::Other,
            }
        }
        _ => ErrorKind::Other,
    }
}

fn is_mysql_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("deadlock") || m.contains("lock wait timeout")
}
