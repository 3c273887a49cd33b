//! Settings (serde), with credentials kept out of `Debug`.

use outbox_core::{Error, ErrorKind, Result, Secret};
use serde::Deserialize;

/// How the publisher reaches SQS. Anything left out comes from the standard AWS
/// environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, profiles, instance roles, ...).
///
/// ```toml
/// region = "eu-west-1"
/// endpoint_url = "http://127.0.0.1:4566"   # a local SQS-compatible server
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// AWS region.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (LocalStack, moto, ElasticMQ, a VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Static credentials; otherwise the standard provider chain.
    #[serde(default)]
    pub credentials: Option<SqsCredentials>,
    /// A CA (PEM) to trust besides the system's roots, for an `https://` `endpoint_url`
    /// whose certificate a private CA signed.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Static credentials. Secrets print as `***`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Session token, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for SqsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsConfig")
            .field("region", &self.region)
            .field(
                "endpoint_url",
                &self.endpoint_url.as_deref().map(outbox_core::redact_url),
            )
            .field("credentials", &self.credentials)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl SqsConfig {
    /// Checks the settings, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "SQS config: endpoint_url {:?} must start with http:// or https://",
                    outbox_core::redact_url(url)
                ),
            ));
        }
        if let Some(c) = &self.credentials
            && c.access_key_id.trim().is_empty()
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "SQS config: credentials.access_key_id is empty",
            ));
        }
        Ok(())
    }
}
