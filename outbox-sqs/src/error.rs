//! Mapping SQS errors onto core's error kinds.

use outbox_core::{Error, ErrorKind};

/// The kind for an SQS error code, as the service reports it per request or per batch
/// entry. `sender_fault` is the per-entry flag (`None` for whole-request errors).
pub fn kind_of_code(code: &str, sender_fault: Option<bool>) -> ErrorKind {
    match code {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue" => {
            ErrorKind::DestinationNotFound
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "KmsAccessDenied" => ErrorKind::Unauthorized,
        "RequestThrottled"
        | "ThrottlingException"
        | "Throttling"
        | "KmsThrottled"
        | "OverLimit" => ErrorKind::Throttled,
        "BatchRequestTooLong" | "MessageTooLong" => ErrorKind::TooLarge,
        "ServiceUnavailable" | "InternalError" | "InternalFailure" | "KmsUnavailable" => {
            ErrorKind::Unavailable
        }
        _ => match sender_fault {
            // The service says the entry itself is wrong: retrying will not help.
            Some(true) => ErrorKind::Rejected,
            Some(false) => ErrorKind::Unavailable,
            None => ErrorKind::Unavailable,
        },
    }
}

/// Classifies an SDK error for a whole request on `queue`.
pub fn map_sdk<E, R>(queue: &str, err: aws_sdk_sqs::error::SdkError<E, R>) -> Error
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (kind, detail) = classify_sdk(&err);
    Error::new(kind, format!("SQS queue {queue:?}: {detail}")).with_source(err)
}

/// The kind of an SDK error for a whole request, and what it says (the service's code and
/// message, or the SDK's own description).
pub fn classify_sdk<E, R>(err: &aws_sdk_sqs::error::SdkError<E, R>) -> (ErrorKind, String)
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_sqs::error::SdkError;
    let kind = match err {
        SdkError::TimeoutError(_) => ErrorKind::Timeout,
        SdkError::DispatchFailure(_) => ErrorKind::Connection,
        SdkError::ResponseError(_) => ErrorKind::Unavailable,
        SdkError::ConstructionFailure(_) => ErrorKind::InvalidInput,
        SdkError::ServiceError(e) => kind_of_code(e.err().code().unwrap_or_default(), None),
        _ => ErrorKind::Other,
    };
    let detail = match err {
        SdkError::ServiceError(e) => format!(
            "{}: {}",
            e.err().code().unwrap_or("unknown"),
            e.err().message().unwrap_or("")
        ),
        // "dispatch failure" alone says nothing: the context has the cause (a refused
        // certificate, a connection refused, ...).
        other => aws_sdk_sqs::error::DisplayErrorContext(other).to_string(),
    };
    (kind, detail)
}
