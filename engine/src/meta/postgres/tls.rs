//! TLS to PostgreSQL, chosen by the URL's `sslmode` (and `sslrootcert`), as libpq reads them:
//!
//! - absent or `disable`: no TLS (a database on loopback or a local socket);
//! - `prefer`: TLS when the server offers it, its certificate not checked;
//! - `require`: TLS or no connection; the certificate is checked against `sslrootcert` (chain
//!   and name) when one is given, else not checked (encrypted, not authenticated: a warning says
//!   so);
//! - `verify-full`: TLS, the certificate checked against `sslrootcert` (required), chain and
//!   host name;
//! - `verify-ca` is refused: use `verify-full`.
//!
//! The connector is rustls (`tokio-postgres-rustls`). The two parameters are taken out of the
//! URL before tokio-postgres reads it (it knows neither `verify-full` nor `sslrootcert`).

use super::MetaError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::config::SslMode;

/// How the engine's connections to PostgreSQL are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    Off,
    /// Encrypted; the server's certificate is not checked.
    Unverified {
        required: bool,
    },
    /// Encrypted; the certificate is checked against the roots in this file, and its name.
    Verified {
        root_cert: PathBuf,
    },
}

impl PgTls {
    /// The mode tokio-postgres is given.
    pub fn ssl_mode(&self) -> SslMode {
        match self {
            PgTls::Off => SslMode::Disable,
            PgTls::Unverified { required: false } => SslMode::Prefer,
            PgTls::Unverified { required: true } | PgTls::Verified { .. } => SslMode::Require,
        }
    }

    /// For the log line that names the database.
    pub fn describe(&self) -> String {
        match self {
            PgTls::Off => "no TLS".into(),
            PgTls::Unverified { required: false } => "TLS if offered, certificate not checked".into(),
            PgTls::Unverified { required: true } => "TLS, certificate not checked".into(),
            PgTls::Verified { root_cert } => format!("TLS, certificate checked against {}", root_cert.display()),
        }
    }
}

/// `url` without its `sslmode` and `sslrootcert`, and what they ask for. A string that is not a
/// URL (libpq's `key=value` form) is returned as it is, its TLS left to tokio-postgres's own
/// reading (`disable`, `prefer` or `require`, none of them checking certificates).
pub fn split_url(url: &str) -> Result<(String, Option<PgTls>), MetaError> {
    let bad = |why: String| MetaError::Config(format!("--meta: {why}"));
    let Ok(mut parsed) = url::Url::parse(url) else { return Ok((url.to_string(), None)) };
    let (mut mode, mut root) = (None, None);
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| match &*k {
            "sslmode" => {
                mode = Some(v.into_owned());
                None
            }
            "sslrootcert" => {
                root = Some(PathBuf::from(v.into_owned()));
                None
            }
            _ => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let tls = match (mode.as_deref(), root) {
        (None | Some("disable"), None) => PgTls::Off,
        (None | Some("disable"), Some(_)) => {
            return Err(bad("sslrootcert is given but TLS is not: add sslmode=verify-full".into()))
        }
        (Some("prefer" | "allow"), _) => PgTls::Unverified { required: false },
        (Some("require"), None) => PgTls::Unverified { required: true },
        (Some("require" | "verify-full"), Some(root_cert)) => PgTls::Verified { root_cert },
        (Some("verify-full"), None) => {
            return Err(bad(
                "sslmode=verify-full needs sslrootcert=FILE (the CA that signed the server's certificate)".into()
            ))
        }
        (Some("verify-ca"), _) => {
            return Err(bad(
                "sslmode=verify-ca is not supported: use sslmode=verify-full (which also checks the server's name)"
                    .into(),
            ))
        }
        (Some(other), _) => return Err(bad(format!("unknown sslmode {other:?}: use disable, require or verify-full"))),
    };
    Ok((parsed.to_string(), Some(tls)))
}

/// The rustls connector for `tls` (never used with [`PgTls::Off`]).
pub fn connector(tls: &PgTls) -> Result<tokio_postgres_rustls::MakeRustlsConnect, MetaError> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| MetaError::Config(format!("TLS to PostgreSQL: {e}")))?;
    let config = match tls {
        PgTls::Verified { root_cert } => builder.with_root_certificates(roots(root_cert)?).with_no_client_auth(),
        PgTls::Off | PgTls::Unverified { .. } => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Unchecked(provider))).with_no_client_auth()
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The CA certificates in PEM file `path`.
fn roots(path: &Path) -> Result<RootCertStore, MetaError> {
    let bad = |why: String| MetaError::Config(format!("--meta: sslrootcert {}: {why}", path.display()));
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        store
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(store)
}

/// Accepts any certificate (sslmode=prefer or require without sslrootcert, as libpq does),
/// while still checking that the server holds the key of the certificate it sent.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_and_taken_out_of_the_url() {
        let (url, tls) =
            split_url("postgres://dfs@h:5432/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5")
                .expect("a TLS URL");
        assert_eq!(url, "postgres://dfs@h:5432/db?connect_timeout=5");
        assert_eq!(tls, Some(PgTls::Verified { root_cert: "/etc/ca.pem".into() }));
        let (url, tls) = split_url("postgres://dfs@h/db?sslmode=require").expect("require");
        assert_eq!((url.as_str(), tls), ("postgres://dfs@h/db", Some(PgTls::Unverified { required: true })));
        assert_eq!(split_url("postgres://dfs@h/db").expect("plain").1, Some(PgTls::Off));
        for (url, why) in [
            ("postgres://h/db?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://h/db?sslmode=verify-ca", "verify-ca is not supported"),
            ("postgres://h/db?sslmode=sometimes", "unknown sslmode"),
            ("postgres://h/db?sslrootcert=/ca.pem", "TLS is not"),
        ] {
            let err = split_url(url).expect_err(url).to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
        assert_eq!(split_url("host=h sslmode=require").expect("key=value").1, None);
    }
}
