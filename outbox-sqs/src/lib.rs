#![doc = include_str!("../README.md")]

pub mod config;
pub mod consumer;
pub mod error;
pub mod message;
pub mod publisher;

pub use config::{SqsConfig, SqsCredentials};
pub use message::{Decoded, decode_attributes};
pub use publisher::SqsPublisher;

outbox_core::adapter_error! {
    /// An error of this crate or of the AWS SDK's SQS client, for application code that
    /// calls both: `?` turns an `SdkError` (classified by [`error::classify_sdk`]), an
    /// `outbox_core::Error` or an envelope error into it, and it converts back into
    /// `outbox_core::Error` with its kind kept.
    pub struct Error;
}

impl<E, R> From<aws_sdk_sqs::error::SdkError<E, R>> for Error
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn from(err: aws_sdk_sqs::error::SdkError<E, R>) -> Self {
        let (kind, detail) = error::classify_sdk(&err);
        outbox_core::Error::new(kind, format!("SQS request: {detail}"))
            .with_source(err)
            .into()
    }
}
