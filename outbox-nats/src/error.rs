//! Mapping async-nats errors onto core's error kinds.

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use outbox_core::{Error, ErrorKind};

/// Classifies a JetStream publish error.
///
/// - no stream captures the subject (`no responders`): `DestinationNotFound`, permanent;
/// - message over the server's `max_payload`: `TooLarge`, permanent;
/// - a failed expectation (wrong last sequence or id): `Rejected`, permanent;
/// - no acknowledgement in time: `Timeout`; connection gone: `Connection`; too many
///   acknowledgements pending: `Throttled`; anything else the server said: `Unavailable`.
///   These are retried.
pub fn map_publish_error(subject: &str, err: PublishError) -> Error {
    let kind = publish_error_kind(&err);
    let what = match kind {
        ErrorKind::DestinationNotFound => {
            format!("no JetStream stream captures subject {subject:?}")
        }
        _ => format!("publishing to NATS subject {subject:?}"),
    };
    Error::new(kind, what).with_source(err)
}

/// The kind of a JetStream publish error (see [`map_publish_error`] for the rules).
pub fn publish_error_kind(err: &PublishError) -> ErrorKind {
    match err.kind() {
        PublishErrorKind::StreamNotFound => ErrorKind::DestinationNotFound,
        PublishErrorKind::MaxPayloadExceeded => ErrorKind::TooLarge,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            ErrorKind::Rejected
        }
        PublishErrorKind::TimedOut => ErrorKind::Timeout,
        PublishErrorKind::BrokenPipe => ErrorKind::Connection,
        PublishErrorKind::MaxAckPending => ErrorKind::Throttled,
        _ => ErrorKind::Unavailable,
    }
}
