//! Mapping SeaORM errors onto core's error kinds.

use outbox_core::{Error, ErrorKind};
use sea_orm::{DbErr, RuntimeErr};

/// Classifies a SeaORM error: the driver's error decides where there is one (lost
/// connections and deadlocks retryable, constraint violations `Rejected`, see
/// [`outbox_sqlx::map_sqlx`]); pool exhaustion is a `Timeout`; the rest is `Other`.
pub fn map_db_err(context: &str, err: DbErr) -> Error {
    let kind = match &err {
        DbErr::ConnectionAcquire(_) => ErrorKind::Timeout,
        DbErr::Conn(inner) | DbErr::Exec(inner) | DbErr::Query(inner) => match inner {
            RuntimeErr::SqlxError(e) => outbox_sqlx::classify(e),
            _ => ErrorKind::Other,
        },
        _ => ErrorKind::Other,
    };
    Error::new(kind, context.to_owned()).with_source(err)
}
