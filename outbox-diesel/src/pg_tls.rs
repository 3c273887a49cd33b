//! TLS for diesel-async's PostgreSQL connections, read from a libpq-style URL.
//!
//! diesel-async connects through tokio-postgres, which knows `sslmode` `disable`, `prefer`
//! and `require` only, and no certificate files. [`establish`] takes the URL as libpq
//! does: `sslmode` (`disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`),
//! `sslrootcert` (PEM; trusted besides the public roots), `sslcert` and `sslkey` (a client
//! certificate), and connects with rustls accordingly. As in libpq, `prefer` and `require`
//! encrypt without checking the certificate unless `sslrootcert` is given (then `require`
//! checks as `verify-ca` does); `verify-ca` checks the chain, `verify-full` the host name
//! too.

use std::path::PathBuf;
use std::sync::Arc;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How much TLS the URL asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS parameters of a URL, split off the rest (which tokio-postgres parses).
#[derive(Debug)]
struct Settings {
    mode: Mode,
    root: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn bad(why: String) -> ConnectionError {
    ConnectionError::BadConnection(why)
}

/// `url` without its TLS parameters, and those parameters.
fn split(url: &str) -> Result<(String, Settings), ConnectionError> {
    let mut settings = Settings {
        mode: Mode::Prefer,
        root: None,
        cert: None,
        key: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), settings));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                settings.mode = match v {
                    "disable" => Mode::Disable,
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(bad(format!(
                            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => settings.root = Some(PathBuf::from(v)),
            "sslcert" => settings.cert = Some(PathBuf::from(v)),
            "sslkey" => settings.key = Some(PathBuf::from(v)),
            _ => kept.push(pair),
        }
    }
    if settings.cert.is_some() != settings.key.is_some() {
        return Err(bad("sslcert and sslkey must be given together".to_owned()));
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, settings))
}

/// The server-certificate check of `prefer`/`require` without a root file (none: any
/// certificate) and of `verify-ca` (the chain, not the name). Handshake signatures are
/// always checked.
#[derive(Debug)]
struct Lenient {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The chain check, if any.
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Settings {
    /// The rustls configuration these settings ask for.
    fn client_config(&self) -> Result<rustls::ClientConfig, ConnectionError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS: {e}")))?;
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.root {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| bad(format!("sslrootcert={}: {e}", path.display())))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("sslrootcert={}: {e}", path.display())))?;
            }
        }
        let verify = match self.mode {
            Mode::VerifyFull => Some(true),
            Mode::VerifyCa => Some(false),
            Mode::Require if self.root.is_some() => Some(false),
            _ => None,
        };
        let builder = match verify {
            Some(true) => builder.with_root_certificates(roots),
            Some(false) => {
                let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| bad(format!("TLS: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient {
                        provider,
                        chain: Some(chain),
                    }))
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    provider,
                    chain: None,
                })),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("sslcert={}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| bad(format!("sslkey={}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(format!("sslcert/sslkey: {e}")))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Opens a diesel-async PostgreSQL connection on `url`, with TLS as its `sslmode`,
/// `sslrootcert`, `sslcert` and `sslkey` ask (see the module docs). What
/// [`DieselPgStore::connect`](crate::DieselPgStore::connect) pools; usable as a diesel-async
/// `ManagerConfig::custom_setup` for pools of your own.
pub async fn establish(url: &str) -> diesel::ConnectionResult<AsyncPgConnection> {
    let (rest, settings) = split(url)?;
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(format!("connection URL: {e}")))?;
    if settings.mode == Mode::Disable {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| bad(e.to_string()))?;
        return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
    }
    config.ssl_mode(if settings.mode == Mode::Prefer {
        tokio_postgres::config::SslMode::Prefer
    } else {
        tokio_postgres::config::SslMode::Require
    });
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(settings.client_config()?);
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        // tokio-postgres's Display hides the TLS cause ("error performing TLS handshake").
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        bad(text)
    })?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_tls_parameters_off() {
        let (rest, s) =
            split("postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=/ca.pem")
                .expect("split");
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.root.as_deref(), Some(std::path::Path::new("/ca.pem")));
        let (rest, s) = split("postgres://u@h/db").expect("split");
        assert_eq!((rest.as_str(), s.mode), ("postgres://u@h/db", Mode::Prefer));
        let e = split("postgres://h/db?sslmode=sometimes").expect_err("bad mode");
        assert!(e.to_string().contains("sslmode=sometimes"), "{e}");
        let e = split("postgres://h/db?sslcert=/c.pem").expect_err("half");
        assert!(e.to_string().contains("sslkey"), "{e}");
    }
}
