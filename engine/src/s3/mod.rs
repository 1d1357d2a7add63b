//! The S3 front door (`dfs-engine --s3 ADDR`): the S3 REST API on a listener of its own, served
//! by the engine itself over the same path to the nodes as the native protocol.
//!
//! The `s3s` crate does the HTTP side of S3: it parses each request into an operation's input,
//! checks its SigV4 signature (headers, presigned query, aws-chunked streaming bodies) against
//! the secret that [`S3Keys`] gives for its access key, and writes each answer or error as S3's
//! XML. dfs does the rest ([`service`]): buckets and keys in the engine's metadata
//! (`meta/objects.rs`), object bodies stored as dfs files through `put::put_buffered`, read back
//! through `get::stream_range`, digests checked before anything becomes visible.
//!
//! Threads: one thread per core (`s3-N`), each with an I/O runtime of its own as the repair
//! thread has and a listener of its own on the same port (SO_REUSEPORT), accepts and serves S3
//! connections; each request's work on the cluster runs as a task on its connection's thread.

pub mod service;

use crate::state::EngineState;
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// S3 key pairs the engine accepts: access key ID to secret access key, from `--s3-keys FILE`
/// (one pair per line, `ACCESS_KEY_ID SECRET`, `#` starts a comment; mode 600). Secrets are
/// never logged or shown.
pub struct S3Keys(HashMap<String, SecretKey>);

/// Why the S3 front door cannot start: its key file, its domain, its threads.
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    #[error("cannot {what} {}: {source}", path.display())]
    File { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("--s3-keys {} is readable by others (mode {mode:o}): chmod 600 it", path.display())]
    KeysReadable { path: std::path::PathBuf, mode: u32 },
    #[error("--s3-keys {} line {line}: {why}", path.display())]
    KeysLine { path: std::path::PathBuf, line: usize, why: String },
    #[error("--s3-keys {} holds no key pair", path.display())]
    NoKeys { path: std::path::PathBuf },
    #[error("cannot draw an S3 key: {0}")]
    Random(getrandom::Error),
    #[error(
        "--s3-domain {0:?} is not a domain name (labels of letters, digits and hyphens separated by dots, no port)"
    )]
    Domain(String),
    #[error("S3 listener: {0}")]
    Listener(std::io::Error),
    #[error("cannot start an S3 thread: {0}")]
    Thread(std::io::Error),
}

/// A secret shorter than this is refused.
const MIN_SECRET_CHARS: usize = 16;

impl S3Keys {
    pub fn load(path: &Path) -> Result<S3Keys, S3SetupError> {
        use std::os::unix::fs::PermissionsExt;
        let file_err = |source| S3SetupError::File { what: "read --s3-keys", path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(file_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(S3SetupError::KeysReadable {
                path: path.to_path_buf(),
                mode: meta.permissions().mode() & 0o777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(file_err)?;
        let line_err = |n: usize, why: String| S3SetupError::KeysLine { path: path.to_path_buf(), line: n + 1, why };
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(id), Some(secret), None) = (words.next(), words.next(), words.next()) else {
                return Err(line_err(n, "expected `ACCESS_KEY_ID SECRET`".into()));
            };
            if secret.len() < MIN_SECRET_CHARS {
                return Err(line_err(n, format!("the secret of {id} is shorter than {MIN_SECRET_CHARS} characters")));
            }
            keys.insert(id.to_string(), SecretKey::from(secret.to_string()));
        }
        if keys.is_empty() {
            return Err(S3SetupError::NoKeys { path: path.to_path_buf() });
        }
        Ok(S3Keys(keys))
    }

    /// Writes a fresh random key pair to `path` (mode 600) and returns the access key ID and
    /// secret (`--local`).
    pub fn create(path: &Path) -> Result<(String, String), S3SetupError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut raw = [0u8; 30];
        getrandom::getrandom(&mut raw).map_err(S3SetupError::Random)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let id = format!("DFS{}", hex(&raw[..8]).to_uppercase());
        let secret = hex(&raw[8..]);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| S3SetupError::File { what: "create", path: path.to_path_buf(), source })?;
        let file_err = |what| move |source| S3SetupError::File { what, path: path.to_path_buf(), source };
        writeln!(f, "{id} {secret}").map_err(file_err("write"))?;
        f.sync_all().map_err(file_err("sync"))?;
        Ok((id, secret))
    }
}

#[async_trait::async_trait]
impl S3Auth for S3Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.0.get(access_key).cloned().ok_or_else(|| s3_error!(InvalidAccessKeyId))
    }
}

/// Virtual-hosted-style addressing under one domain (`--s3-domain`): a request whose Host is
/// `BUCKET.DOMAIN` (any port) names BUCKET, and every other Host is path-style, so that clients
/// reaching the engine by its address keep working. (s3s's own `SingleDomain` would take any
/// other host name, an IP address included, for a bucket.)
pub struct VirtualHosts {
    /// Lower case, without a port.
    domain: String,
}

impl VirtualHosts {
    pub fn new(domain: &str) -> Result<VirtualHosts, S3SetupError> {
        let domain = domain.to_ascii_lowercase();
        let label_ok =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-');
        if domain.len() > 253 || !domain.split('.').all(label_ok) {
            return Err(S3SetupError::Domain(domain));
        }
        Ok(VirtualHosts { domain })
    }

    /// The bucket a Host header names, if it is `BUCKET.DOMAIN[:PORT]`.
    pub fn bucket_of(&self, host: &str) -> Option<String> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() => name,
            _ => host,
        };
        let name = name.to_ascii_lowercase();
        let bucket = name.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        (!bucket.is_empty()).then(|| bucket.to_string())
    }
}

impl s3s::host::S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<s3s::host::VirtualHost<'a>> {
        let vh = s3s::host::VirtualHost::new(self.domain.as_str());
        Ok(match self.bucket_of(host) {
            Some(bucket) => vh.with_bucket(bucket),
            None => vh,
        })
    }
}

/// How often abandoned multipart uploads are looked for.
const COLLECT_UPLOADS_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Serves S3 on `listeners` (one per thread, each a thread of its own sharing the port) until
/// the process ends, path-style, and virtual-hosted-style too with `hosts`; multipart uploads begun more than `upload_max_age` ago are aborted (looked
/// for at start and every hour, by the first thread).
pub fn start(
    state: Arc<EngineState>,
    listeners: Vec<std::net::TcpListener>,
    keys: S3Keys,
    hosts: Option<VirtualHosts>,
    upload_max_age: std::time::Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), S3SetupError> {
    let mut builder = s3s::service::S3ServiceBuilder::new(service::DfsS3 { state: state.clone() });
    builder.set_auth(keys);
    if let Some(hosts) = hosts {
        builder.set_host(hosts);
    }
    let s3 = builder.build();
    for (n, listener) in listeners.into_iter().enumerate() {
        listener.set_nonblocking(true).map_err(S3SetupError::Listener)?;
        let (state, s3, tls) = (state.clone(), s3.clone(), tls.clone());
        std::thread::Builder::new()
            .name(format!("s3-{n}"))
            .spawn(move || serve(state, listener, s3, tls, (n == 0).then_some(upload_max_age)))
            .map_err(S3SetupError::Thread)?;
    }
    Ok(())
}

/// One S3 thread: its runtime, its listener, and (on the first) the collection of abandoned
/// multipart uploads.
fn serve(
    state: Arc<EngineState>,
    listener: std::net::TcpListener,
    s3: s3s::service::S3Service,
    tls: Option<Arc<rustls::ServerConfig>>,
    collect_after: Option<std::time::Duration>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let handshake_timeout = state.config.client_idle_timeout;
    dfs_runtime::backend::start(async move {
        if let Err(e) = state.meta.create_bucket(crate::meta::objects::UPLOADS_BUCKET).await {
            tracing::error!("S3: cannot make the namespace of multipart uploads: {e}");
        }
        if let Some(upload_max_age) = collect_after {
            let collector = state.clone();
            dfs_runtime::backend::spawn(async move {
                loop {
                    match service::collect_abandoned_uploads(&collector, upload_max_age).await {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!("S3: aborted {n} multipart upload(s) older than {upload_max_age:?}")
                        }
                        Err(e) => tracing::warn!("S3: cannot collect abandoned multipart uploads: {e}"),
                    }
                    tokio::time::sleep(COLLECT_UPLOADS_EVERY).await;
                }
            });
        }
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("S3 listener: {e}");
                return;
            }
        };
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("S3: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let s3 = s3.clone();
            // Every answer is counted by its status, those s3s gives before an
            // operation runs (a bad signature) too.
            let counted = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let s3 = s3.clone();
                async move {
                    let resp = s3.call(req.map(s3s::Body::from)).await;
                    let status = match &resp {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 500,
                    };
                    crate::metrics::S3_RESPONSES.with_label_values(&[&status.to_string()]).inc();
                    resp
                }
            });
            let acceptor = acceptor.clone();
            dfs_runtime::backend::spawn(async move {
                let Some(acceptor) = acceptor else { return serve_http(stream, counted, peer).await };
                match tokio::time::timeout(handshake_timeout, https(&acceptor, stream)).await {
                    Ok(Ok(Some(tls))) => serve_http(tls, counted, peer).await,
                    Ok(Ok(None)) => tracing::debug!(%peer, "S3: a plain HTTP request on the HTTPS port, answered 400"),
                    Ok(Err(e)) => tracing::debug!(%peer, "S3: TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "S3: no TLS handshake within {handshake_timeout:?}"),
                }
            });
        }
    })
}

/// Serves S3 requests on one connection, plain or TLS, until it ends.
async fn serve_http<I, S>(io: I, service: S, peer: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, "S3 connection ended: {e}");
    }
}

/// The TLS side of an HTTPS connection. None: the client spoke plain HTTP to this port, and was
/// answered 400 with one line saying to use https:// (rather than a failed handshake it would
/// report as a reset or a garbled answer).
async fn https(
    acceptor: &tokio_rustls::TlsAcceptor,
    mut stream: tokio::net::TcpStream,
) -> std::io::Result<Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = [0u8; 1];
    // 0x16: the first byte of a TLS handshake record.
    if stream.peek(&mut first).await? == 1 && first[0] != 0x16 {
        let body = "this S3 endpoint speaks HTTPS: use an https:// endpoint URL\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, so that closing does not reset the answer away.
        let mut sink = [0u8; 4096];
        let drain = async { while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::VirtualHosts;

    #[test]
    fn only_a_subdomain_of_the_configured_domain_names_a_bucket() {
        let vh = VirtualHosts::new("S3.Example.com").expect("a domain");
        assert_eq!(vh.bucket_of("data-set.s3.example.com:7705").as_deref(), Some("data-set"));
        assert_eq!(vh.bucket_of("Data.S3.example.COM").as_deref(), Some("data"));
        assert_eq!(vh.bucket_of("a.b.s3.example.com").as_deref(), Some("a.b"));
        for path_style in [
            "s3.example.com",
            "s3.example.com:80",
            "127.0.0.1:7705",
            "[::1]:7705",
            "xs3.example.com",
            ".s3.example.com",
        ] {
            assert_eq!(vh.bucket_of(path_style), None, "{path_style}");
        }
        for bad in ["", "s3.example.com:7705", "s3..example", "-s3.example", "s3 example"] {
            assert!(VirtualHosts::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
