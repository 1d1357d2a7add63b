//! The engine's TLS server side (today the S3 listener's HTTPS): a certificate and key from
//! files (`--tls-cert`, `--tls-key`), read again whenever either file changes, so a renewed
//! certificate is served to the next connection without a restart. A renewal that cannot be
//! read (a half-written file, a key that does not match) is logged and the certificate in use
//! is kept.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {}: {why}", path.display())]
    Cert { path: PathBuf, why: String },
    #[error("--tls-key {}: {why}", path.display())]
    Key { path: PathBuf, why: String },
    #[error("--tls-cert {} and --tls-key {} do not go together: {why}", cert.display(), key.display())]
    Mismatch { cert: PathBuf, key: PathBuf, why: String },
    #[error("TLS: {0}")]
    Config(String),
}

/// The ring provider (deprecated in rustls 0.23.48 for its lack of post-quantum key exchange):
/// it keeps the build free of aws-lc's C library.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What identifies a file's version: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// The certificate and key in two PEM files, as served.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The versions of the two files last read, and what was read from them.
    current: Mutex<(Stamp, Stamp, Arc<CertifiedKey>)>,
}

impl CertFiles {
    /// Reads both files; Err names the file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<CertFiles, TlsError> {
        let provider = provider();
        let (cs, ks) = (stamp(cert), stamp(key));
        let loaded = read(cert, key, &provider)?;
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: Mutex::new((cs, ks, Arc::new(loaded))),
        })
    }

    /// The certificate to serve now: read again if either file changed since.
    fn now(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let (cs, ks) = (stamp(&self.cert), stamp(&self.key));
        if (cs, ks) != (current.0, current.1) {
            match read(&self.cert, &self.key, &self.provider) {
                Ok(loaded) => {
                    tracing::info!("TLS: {} changed: serving the new certificate", self.cert.display());
                    *current = (cs, ks, Arc::new(loaded));
                }
                Err(e) => {
                    // Keep what is served; try again at the next connection (the stamps stay old).
                    tracing::warn!("TLS: keeping the certificate in use: {e}");
                }
            }
        }
        current.2.clone()
    }

    /// A server configuration serving these files, speaking `alpn` (e.g. `http/1.1`).
    pub fn server_config(self: Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.now())
    }
}

fn read(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_err = |why: String| TlsError::Cert { path: cert.to_path_buf(), why };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("holds no certificate".into()));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_path_buf(), why: e.to_string() })?;
    let loaded = CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok(loaded)
}
