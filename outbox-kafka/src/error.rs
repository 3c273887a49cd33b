//! Classifying librdkafka errors into retryable and permanent.

use outbox_core::ErrorKind;
use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};

/// The core kind for a librdkafka error.
///
/// Permanent: message too large, unknown topic (with auto-create off), invalid topic,
/// authorization failures, and records the broker rejects as invalid. Everything else
/// (timeouts, lost brokers, leader changes, full queues, not enough replicas) is retried.
pub fn classify(err: &KafkaError) -> ErrorKind {
    let code = match err {
        KafkaError::MessageProduction(c) => *c,
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => {
            return ErrorKind::InvalidInput;
        }
        other => match other.rdkafka_error_code() {
            Some(c) => c,
            None => return ErrorKind::Unavailable,
        },
    };
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize => ErrorKind::TooLarge,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => {
            ErrorKind::DestinationNotFound
        }
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => ErrorKind::Unauthorized,
        C::InvalidTopic | C::InvalidRecord | C::InvalidMessage => ErrorKind::Rejected,
        C::MessageTimedOut | C::RequestTimedOut => ErrorKind::Timeout,
        C::QueueFull => ErrorKind::Throttled,
        C::AllBrokersDown | C::BrokerTransportFailure | C::NetworkException => {
            ErrorKind::Connection
        }
        _ => ErrorKind::Unavailable,
    }
}
