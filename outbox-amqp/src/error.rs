//! Mapping lapin errors onto core's error kinds.

use outbox_core::{Error, ErrorKind};

/// AMQP reply code 404: no such exchange or queue.
pub const NOT_FOUND: u16 = 404;
/// AMQP reply code 403: access refused.
pub const ACCESS_REFUSED: u16 = 403;

/// Classifies a lapin error: lost connections and channels are retryable; `NOT_FOUND`
/// (a missing exchange) is `DestinationNotFound` and `ACCESS_REFUSED` is `Unauthorized`,
/// both permanent; other broker errors are `Unavailable` (retried).
pub fn map_lapin(context: &str, err: lapin::Error) -> Error {
    let kind = match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => match e.get_id() {
            NOT_FOUND => ErrorKind::DestinationNotFound,
            ACCESS_REFUSED => ErrorKind::Unauthorized,
            _ => ErrorKind::Unavailable,
        },
        lapin::ErrorKind::AuthProviderError(_) => ErrorKind::Unauthorized,
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::InvalidChannelState(..)
        | lapin::ErrorKind::InvalidConnectionState(_)
        | lapin::ErrorKind::InvalidChannel(_) => ErrorKind::Connection,
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, context.to_owned()).with_source(err)
}
