//! Mapping sqlx errors onto core's error kinds.

use outbox_core::{Error, ErrorKind};

/// Classifies a sqlx error: lost connections, pool timeouts and transient database
/// conditions (deadlock, serialisation failure, lock wait timeout, shutdown) are retryable;
/// constraint violations are rejected; decoding problems are decode errors.
pub fn map_sqlx(context: &str, err: sqlx::Error) -> Error {
    let kind = classify(&err);
    Error::new(kind, context.to_owned()).with_source(err)
}

/// The core error kind of a sqlx error, for crates that hold the error behind a reference
/// (SeaORM keeps it in an `Arc`). See [`map_sqlx`] for the rules.
pub fn classify(err: &sqlx::Error) -> ErrorKind {
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
                // MySQL/MariaDB report deadlocks as 40001 too, and a killed query as 70100.
                "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300" | "70100" => {
                    ErrorKind::Unavailable
                }
                // SQLSTATE class 08: connection exceptions (both servers).
                c if c.starts_with("08") => ErrorKind::Connection,
                // MySQL/MariaDB report a lock wait timeout under the generic state.
                "HY000" if is_mysql_transient(db.message()) => ErrorKind::Unavailable,
                // SQLite: busy / locked (extended result codes).
                "5" | "6" | "517" | "262" => ErrorKind::Unavailable,
                // Undefined table (PostgreSQL / MySQL): not migrated.
                "42P01" | "42S02" => ErrorKind::InvalidInput,
                _ => ErrorKind::Other,
            }
        }
        _ => ErrorKind::Other,
    }
}

fn is_mysql_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("deadlock")
        || m.contains("lock wait timeout")
        || m.contains("try restarting transaction")
}
