//! `s3-load`: one S3 client for every S3 server the benchmarks compare (dfs's S3 API and
//! SeaweedFS's S3 gateway), so that the client's own cost is the same on both sides of a figure.
//! Each request is signed with SigV4 by `aws-sigv4` (header auth, `x-amz-content-sha256:
//! UNSIGNED-PAYLOAD`, so no body is hashed) and sent path-style (`http://host:port/bucket/key`)
//! over hyper's pooled keep-alive connections.
//!
//! - `small`: many objects of one size at a concurrency. A put sends bytes derived from a seed and
//!   the key, so a later get with the same prefix and seed checks every byte without a stored
//!   copy. Prints ops/s, MB/s and the latency's p50 and p99.
//! - `large`: one object. A put streams a file as one request (or, with `--parts`, as a
//!   multipart upload with that many parts in flight); a get streams the object into a file or
//!   discards it after its crc32, and can compare it with the source file.
//!
//! The server and keys come from the environment, as `run.sh s3` sets them for SeaweedFS:
//! `S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_DEFAULT_REGION`
//! (default us-east-1).
//!
//! `s3-load small --op put --size 4096 --count 20000 --concurrency 32 --prefix run1`
//! `s3-load large --op put --file 1g --key 1g-run1` then `large --op get --key 1g-run1 --check 1g`

use anyhow::{anyhow, bail, ensure, Context, Result};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use dfs_proto::units::parse_bytes;
use hdrhistogram::Histogram;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// A request's body: a whole object in memory, or a file streamed block by block.
type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Bytes per read of a file streamed into a PUT.
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks read ahead of the socket by a PUT, or received ahead of the disk by a GET into a file:
/// what bounds a streamed transfer's memory.
const BLOCKS_IN_FLIGHT: usize = 4;
/// Bytes of an error response's body quoted in the error.
const ERROR_BODY_BYTES: usize = 300;
/// S3's limit on the parts of one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Highest latency the histograms hold (one hour), in microseconds; a slower request is counted
/// as this.
const LATENCY_US_MAX: u64 = 3_600_000_000;

#[derive(Parser, Debug)]
#[command(
    about = "Load an S3 server (S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) with small or large objects"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Many objects of one size at a concurrency: put them, or get and check those of an earlier put
    Small(SmallArgs),
    /// One object: put a file (one streamed PUT, or multipart with --parts), or get it
    Large(LargeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

#[derive(Args, Debug)]
struct SmallArgs {
    /// Put the objects, or get and check them.
    #[arg(long, value_enum)]
    op: Op,
    /// Bytes per object.
    #[arg(long, default_value = "4096", value_parser = parse_bytes)]
    size: u64,
    /// Objects. A get reads the keys 0..count of its prefix, so at most as many as the put wrote.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Requests in flight at once, each on a keep-alive connection of its own.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// The bucket; a put creates it if it is missing.
    #[arg(long, default_value = "bench")]
    bucket: String,
    /// The keys are PREFIX/00000000, PREFIX/00000001, …; a get names the prefix of its put.
    #[arg(long)]
    prefix: String,
    /// Seed of the objects' bytes (with the key); a get names the seed of its put.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest one request may take, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(Args, Debug)]
struct LargeArgs {
    /// Put the file, or get the object.
    #[arg(long, value_enum)]
    op: Op,
    /// The object's key.
    #[arg(long)]
    key: String,
    /// The bucket; a put creates it if it is missing.
    #[arg(long, default_value = "bench")]
    bucket: String,
    /// Put: the file to upload, read by 1 MiB blocks as it is sent.
    #[arg(long, value_name = "PATH", required_if_eq("op", "put"))]
    file: Option<PathBuf>,
    /// Put: upload in parts (CreateMultipartUpload, UploadPart, CompleteMultipartUpload), this
    /// many parts in flight at once; 0 sends the file as one PUT.
    #[arg(long, default_value_t = 0)]
    parts: u64,
    /// Put with --parts: bytes per part (the last one may be shorter).
    #[arg(long, default_value = "8MiB", value_parser = parse_bytes)]
    part_size: u64,
    /// Get: write the object to this file (not synced); without it the bytes are discarded once
    /// their crc32 is computed.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Get: compare the object's length and crc32 with this file's (read after the timing).
    #[arg(long, value_name = "PATH")]
    check: Option<PathBuf>,
    /// Longest the whole transfer may take, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

/// An S3 server, the keys to sign for, and a pool of keep-alive connections to it.
struct S3 {
    http: Client<HttpConnector, Body>,
    /// `host:port`: the URIs' authority and the signed Host header.
    authority: String,
    identity: Identity,
    region: String,
}

fn env(name: &str) -> Result<String> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set (s3-load reads the server and its keys from the environment)"))
}

impl S3 {
    /// The server and keys of the environment, with up to `max_idle_connections` kept open.
    fn from_env(max_idle_connections: usize) -> Result<S3> {
        let endpoint = env("S3_ENDPOINT")?;
        let uri: http::Uri = endpoint.parse().with_context(|| format!("S3_ENDPOINT {endpoint:?} is not a URL"))?;
        ensure!(uri.scheme_str() == Some("http"), "S3_ENDPOINT {endpoint:?}: s3-load speaks plain http:// only");
        ensure!(
            uri.path() == "/" && uri.query().is_none(),
            "S3_ENDPOINT {endpoint:?}: give the server's root (the bucket goes in the path of each request)"
        );
        let authority = uri.authority().with_context(|| format!("S3_ENDPOINT {endpoint:?} has no host"))?.to_string();
        let credentials = Credentials::new(env("AWS_ACCESS_KEY_ID")?, env("AWS_SECRET_ACCESS_KEY")?, None, None, "env");
        let region = std::env::var("AWS_DEFAULT_REGION").ok().filter(|r| !r.is_empty());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(max_idle_connections).build(connector);
        Ok(S3 { http, authority, identity: credentials.into(), region: region.unwrap_or_else(|| "us-east-1".into()) })
    }

    /// Signs and sends `method /path?query`, and returns the response whatever its status.
    async fn send_any(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        content_length: Option<u64>,
        body: Body,
    ) -> Result<Response<Incoming>> {
        let uri = match query {
            "" => format!("http://{}{path}", self.authority),
            _ => format!("http://{}{path}?{query}", self.authority),
        };
        let mut builder = Request::builder().method(method).uri(&uri).header(header::HOST, &self.authority);
        if let Some(n_bytes) = content_length {
            builder = builder.header(header::CONTENT_LENGTH, n_bytes);
        }
        let mut request = builder.body(body).with_context(|| format!("cannot build the request {method} {uri}"))?;
        self.sign(&mut request).with_context(|| format!("cannot sign {method} {uri}"))?;
        self.http.request(request).await.with_context(|| format!("{method} {uri}"))
    }

    /// As [`S3::send_any`], but a status other than 2xx is an error with the start of the body.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        content_length: Option<u64>,
        body: Body,
    ) -> Result<Response<Incoming>> {
        let response = self.send_any(method, path, query, content_length, body).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let target = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
        bail!("{method} {target}: {status}: {}", body_start(response.into_body()).await)
    }

    /// Adds the SigV4 headers (Authorization, X-Amz-Date, X-Amz-Content-Sha256) to `request`.
    fn sign(&self, request: &mut Request<Body>) -> Result<()> {
        let mut settings = SigningSettings::default();
        // As the AWS SDK signs for S3: the path is encoded once, as sent, and never normalized.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()?
            .into();
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| Ok((name.as_str(), value.to_str()?)))
            .collect::<Result<Vec<_>>>()?;
        let uri = request.uri().to_string();
        let signable =
            SignableRequest::new(request.method().as_str(), &uri, headers.into_iter(), SignableBody::UnsignedPayload)?;
        let (instructions, _signature) = sign(signable, &params)?.into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }

    /// CreateBucket, at ease with a bucket that already exists (409: BucketAlreadyOwnedByYou).
    async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let path = format!("/{}", encode(bucket, false));
        let response = self.send_any(&Method::PUT, &path, "", None, empty()).await?;
        let status = response.status();
        if status.is_success() || status == StatusCode::CONFLICT {
            drain(response.into_body()).await.with_context(|| format!("PUT {path}"))?;
            return Ok(());
        }
        bail!("cannot create the bucket {bucket}: {status}: {}", body_start(response.into_body()).await)
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// The first [`ERROR_BODY_BYTES`] bytes of an error response's body, on one line.
async fn body_start(mut body: Incoming) -> String {
    let mut start = Vec::new();
    while start.len() < ERROR_BODY_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => start.extend_from_slice(frame.data_ref().map_or(&[][..], |data| &data[..])),
            Some(Err(e)) => {
                start.extend_from_slice(format!(" (the rest of the body failed: {e})").as_bytes());
                break;
            }
            None => break,
        }
    }
    start.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&start).replace(['\n', '\r'], " ")
}

/// Reads a body to its end (so that its connection can carry the next request); its length.
async fn drain(mut body: Incoming) -> Result<u64> {
    let mut n_bytes = 0;
    while let Some(frame) = body.frame().await {
        n_bytes += frame?.data_ref().map_or(0, |data| data.len() as u64);
    }
    Ok(n_bytes)
}

/// A small response body (an XML document) as text.
async fn body_text(body: Incoming) -> Result<String> {
    let bytes = body.collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `s` percent-encoded except for the characters S3 leaves as they are (and `/` if `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut encoded = String::with_capacity(s.len());
    for byte in s.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => encoded.push(byte as char),
            b'/' if keep_slash => encoded.push('/'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// The path-style path of an object: `/bucket/key`.
fn object_path(bucket: &str, key: &str) -> String {
    format!("/{}/{}", encode(bucket, false), encode(key, true))
}

/// The text of the first `<name>…</name>` element of a small XML document.
fn xml_value<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The bytes of object `key` under `seed`: a splitmix64 stream seeded from both, so that every
/// object differs and a get checks a body without a stored copy.
fn object_bytes(seed: u64, key: &str, size_bytes: usize) -> Vec<u8> {
    let mut state = seed;
    for byte in key.bytes() {
        state = splitmix64(&mut state) ^ u64::from(byte);
    }
    let mut bytes = Vec::with_capacity(size_bytes + 8);
    while bytes.len() < size_bytes {
        bytes.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    bytes.truncate(size_bytes);
    bytes
}

fn small_key(prefix: &str, object_idx: u64) -> String {
    format!("{prefix}/{object_idx:08}")
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).context("cannot make a latency histogram")
}

async fn small(args: SmallArgs) -> Result<()> {
    ensure!(args.count >= 1 && args.concurrency >= 1, "--count and --concurrency must be at least 1");
    ensure!(!args.prefix.is_empty(), "--prefix must not be empty");
    let size_bytes = usize::try_from(args.size).context("--size does not fit in memory")?;
    let n_workers = args.concurrency.min(args.count);
    let s3 = Arc::new(S3::from_env(n_workers as usize)?);
    if args.op == Op::Put {
        s3.create_bucket(&args.bucket).await?;
    }
    let args = Arc::new(args);
    let next_idx = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..n_workers {
        let (s3, args, next_idx) = (s3.clone(), args.clone(), next_idx.clone());
        workers.spawn(async move {
            let mut latency_us = new_histogram()?;
            let timeout = Duration::from_secs(args.timeout_secs);
            loop {
                let object_idx = next_idx.fetch_add(1, Ordering::Relaxed);
                if object_idx >= args.count {
                    return Ok::<_, anyhow::Error>(latency_us);
                }
                let key = small_key(&args.prefix, object_idx);
                let path = object_path(&args.bucket, &key);
                let expected = object_bytes(args.seed, &key, size_bytes);
                let t = Instant::now();
                let request = async {
                    match args.op {
                        Op::Put => put_small(&s3, &path, expected).await,
                        Op::Get => get_small(&s3, &path, &expected).await,
                    }
                };
                tokio::time::timeout(timeout, request)
                    .await
                    .map_err(|_| anyhow!("{} {path}: no answer within {} s", args.op.name(), args.timeout_secs))??;
                latency_us.saturating_record(t.elapsed().as_micros() as u64);
            }
        });
    }
    let mut latency_us = new_histogram()?;
    // The first error ends the run: dropping the set aborts the other workers.
    while let Some(joined) = workers.join_next().await {
        let worker_latency_us = joined.context("a worker panicked")??;
        latency_us.add(&worker_latency_us).context("cannot merge the latency histograms")?;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let n_ops = args.count as f64;
    println!(
        "s3-load {} {} B x {} c{}: {:.0} ops/s, {:.1} MB/s, p50 {:.2} ms, p99 {:.2} ms",
        args.op.name(),
        args.size,
        args.count,
        args.concurrency,
        n_ops / elapsed_s,
        n_ops * args.size as f64 / 1e6 / elapsed_s,
        latency_us.value_at_quantile(0.5) as f64 / 1e3,
        latency_us.value_at_quantile(0.99) as f64 / 1e3
    );
    Ok(())
}

async fn put_small(s3: &S3, path: &str, bytes: Vec<u8>) -> Result<()> {
    let n_bytes = bytes.len() as u64;
    let response = s3.send(&Method::PUT, path, "", Some(n_bytes), full(bytes.into())).await?;
    drain(response.into_body()).await.with_context(|| format!("PUT {path}"))?;
    Ok(())
}

/// GETs `path` and compares its body, as it arrives, with `expected`.
async fn get_small(s3: &S3, path: &str, expected: &[u8]) -> Result<()> {
    let mut body = s3.send(&Method::GET, path, "", None, empty()).await?.into_body();
    let mut n_bytes = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("GET {path}: the body failed"))?;
        let Some(data) = frame.data_ref() else { continue };
        let end = n_bytes + data.len();
        ensure!(end <= expected.len(), "GET {path}: more than the {} bytes put", expected.len());
        ensure!(data[..] == expected[n_bytes..end], "GET {path}: the bytes at {n_bytes}..{end} differ from those put");
        n_bytes = end;
    }
    ensure!(n_bytes == expected.len(), "GET {path}: {n_bytes} bytes, {} were put", expected.len());
    Ok(())
}

async fn large(args: LargeArgs) -> Result<()> {
    let s3 = Arc::new(S3::from_env(args.parts.max(1) as usize)?);
    let timeout = Duration::from_secs(args.timeout_secs);
    let path = object_path(&args.bucket, &args.key);
    match args.op {
        Op::Put => {
            ensure!(args.out.is_none() && args.check.is_none(), "--out and --check are for --op get");
            let file = args.file.as_deref().context("--op put needs --file")?;
            let size_bytes = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
            s3.create_bucket(&args.bucket).await?;
            let started = Instant::now();
            let how = if args.parts == 0 {
                tokio::time::timeout(timeout, put_streamed(&s3, &path, file, size_bytes))
                    .await
                    .map_err(|_| anyhow!("PUT {path}: not done within {} s", args.timeout_secs))??;
                String::new()
            } else {
                let n_parts = tokio::time::timeout(
                    timeout,
                    put_multipart(&s3, &path, file, size_bytes, args.parts, args.part_size),
                )
                .await
                .map_err(|_| anyhow!("multipart upload of {path}: not done within {} s", args.timeout_secs))??;
                format!(" in {n_parts} parts of {} B, {} at once", args.part_size, args.parts)
            };
            let elapsed_s = started.elapsed().as_secs_f64();
            println!("s3-load large put {size_bytes} B{how}: {:.0} MB/s", size_bytes as f64 / 1e6 / elapsed_s);
        }
        Op::Get => {
            ensure!(args.file.is_none() && args.parts == 0, "--file and --parts are for --op put");
            let started = Instant::now();
            let (size_bytes, crc32) = tokio::time::timeout(timeout, get_streamed(&s3, &path, args.out.as_deref()))
                .await
                .map_err(|_| anyhow!("GET {path}: not done within {} s", args.timeout_secs))??;
            let elapsed_s = started.elapsed().as_secs_f64();
            if let Some(source) = &args.check {
                let (source_bytes, source_crc32) = file_crc32(source)?;
                ensure!(
                    (size_bytes, crc32) == (source_bytes, source_crc32),
                    "GET {path}: {size_bytes} bytes with crc32 {crc32:08x}, but {} has {source_bytes} bytes with crc32 {source_crc32:08x}",
                    source.display()
                );
            }
            println!("s3-load large get {size_bytes} B: {:.0} MB/s", size_bytes as f64 / 1e6 / elapsed_s);
        }
    }
    Ok(())
}

/// The file as a body of [`BLOCK_BYTES`] blocks, read on the blocking pool at most
/// [`BLOCKS_IN_FLIGHT`] blocks ahead of the socket. A read error fails the body, and so the request.
fn file_body(path: &Path) -> Result<Body> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (blocks_tx, blocks_rx) = mpsc::channel::<io::Result<Bytes>>(BLOCKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || loop {
        let mut block = Vec::with_capacity(BLOCK_BYTES);
        let block = match (&mut file).take(BLOCK_BYTES as u64).read_to_end(&mut block) {
            Ok(0) => return,
            Ok(_) => Ok(Bytes::from(block)),
            Err(e) => Err(e),
        };
        let failed = block.is_err();
        // A send fails when the request is gone: nothing is left to read for.
        if blocks_tx.blocking_send(block).is_err() || failed {
            return;
        }
    });
    let frames = futures_util::stream::unfold(blocks_rx, |mut blocks_rx| async move {
        let block = blocks_rx.recv().await?;
        Some((block.map(Frame::data), blocks_rx))
    });
    Ok(StreamBody::new(frames).boxed_unsync())
}

/// One PUT of the whole file, with its Content-Length, streamed from the file.
async fn put_streamed(s3: &S3, path: &str, file: &Path, size_bytes: u64) -> Result<()> {
    let response = s3.send(&Method::PUT, path, "", Some(size_bytes), file_body(file)?).await?;
    drain(response.into_body()).await.with_context(|| format!("PUT {path}"))?;
    Ok(())
}

/// A multipart upload of the file with `parts_at_once` parts in flight, each read whole into
/// memory before it is sent; aborted if a part fails. Returns the number of parts.
async fn put_multipart(
    s3: &Arc<S3>,
    path: &str,
    file: &Path,
    size_bytes: u64,
    parts_at_once: u64,
    part_size_bytes: u64,
) -> Result<u64> {
    ensure!(part_size_bytes >= 1, "--part-size must be at least 1 byte");
    let n_parts = size_bytes.div_ceil(part_size_bytes).max(1);
    ensure!(
        n_parts <= MAX_PARTS,
        "{n_parts} parts of {part_size_bytes} B: S3 allows {MAX_PARTS}, give a larger --part-size"
    );
    let created = s3.send(&Method::POST, path, "uploads", None, empty()).await?;
    let xml = body_text(created.into_body()).await.with_context(|| format!("POST {path}?uploads"))?;
    let upload_id = xml_value(&xml, "UploadId").with_context(|| {
        format!("POST {path}?uploads: no UploadId in {:?}", &xml[..xml.len().min(ERROR_BODY_BYTES)])
    })?;
    let upload_query = format!("uploadId={}", encode(upload_id, false));
    let file = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let upload = Arc::new(Upload {
        path: path.to_string(),
        query: upload_query.clone(),
        file,
        size_bytes,
        part_size_bytes,
        n_parts,
    });
    match upload_parts(s3, upload, parts_at_once).await {
        Ok(etags) => {
            let mut xml = String::from("<CompleteMultipartUpload>");
            for (part_idx, etag) in etags.iter().enumerate() {
                xml +=
                    &format!("<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>", part_idx + 1, xml_escape(etag));
            }
            xml += "</CompleteMultipartUpload>";
            let n_bytes = xml.len() as u64;
            let completed = s3.send(&Method::POST, path, &upload_query, Some(n_bytes), full(xml.into())).await?;
            // S3 may answer 200 and still fail, with an <Error> document in the body.
            let answer =
                body_text(completed.into_body()).await.with_context(|| format!("POST {path}?{upload_query}"))?;
            ensure!(
                !answer.contains("<Error>"),
                "POST {path}?{upload_query}: {}",
                &answer[..answer.len().min(ERROR_BODY_BYTES)]
            );
            Ok(n_parts)
        }
        Err(e) => {
            // Best effort: the error that matters is the part's.
            if let Ok(response) = s3.send_any(&Method::DELETE, path, &upload_query, None, empty()).await {
                let _ = drain(response.into_body()).await;
            }
            Err(e)
        }
    }
}

/// One multipart upload under way: what all its parts share.
struct Upload {
    path: String,
    /// `uploadId=…`, encoded.
    query: String,
    file: File,
    size_bytes: u64,
    part_size_bytes: u64,
    n_parts: u64,
}

/// Uploads the parts with `parts_at_once` in flight; their ETags in part order.
async fn upload_parts(s3: &Arc<S3>, upload: Arc<Upload>, parts_at_once: u64) -> Result<Vec<String>> {
    let next_idx = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..parts_at_once.min(upload.n_parts) {
        let (s3, upload, next_idx) = (s3.clone(), upload.clone(), next_idx.clone());
        workers.spawn(async move {
            let mut etags = Vec::new();
            loop {
                let part_idx = next_idx.fetch_add(1, Ordering::Relaxed);
                if part_idx >= upload.n_parts {
                    return Ok::<_, anyhow::Error>(etags);
                }
                let offset = part_idx * upload.part_size_bytes;
                let len = upload.part_size_bytes.min(upload.size_bytes - offset);
                let reading = upload.clone();
                let bytes = tokio::task::spawn_blocking(move || {
                    let mut bytes = vec![0; len as usize];
                    reading.file.read_exact_at(&mut bytes, offset).map(|()| bytes)
                })
                .await
                .context("a file reader panicked")?
                .with_context(|| format!("cannot read part {} of the file", part_idx + 1))?;
                let (path, query) = (&upload.path, format!("partNumber={}&{}", part_idx + 1, upload.query));
                let response = s3.send(&Method::PUT, path, &query, Some(len), full(bytes.into())).await?;
                let etag = response
                    .headers()
                    .get(header::ETAG)
                    .and_then(|etag| etag.to_str().ok())
                    .with_context(|| format!("PUT {path}?{query}: no ETag in the answer"))?
                    .to_string();
                drain(response.into_body()).await.with_context(|| format!("PUT {path}?{query}"))?;
                etags.push((part_idx, etag));
            }
        });
    }
    let mut etags = vec![String::new(); upload.n_parts as usize];
    // The first error ends the upload: dropping the set aborts the other workers.
    while let Some(joined) = workers.join_next().await {
        for (part_idx, etag) in joined.context("a part uploader panicked")?? {
            etags[part_idx as usize] = etag;
        }
    }
    Ok(etags)
}

/// One GET streamed into `out` (written on the blocking pool, not synced) or discarded; the
/// body's length and crc32.
async fn get_streamed(s3: &S3, path: &str, out: Option<&Path>) -> Result<(u64, u32)> {
    let writer = match out {
        Some(out) => {
            let mut file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
            let out = out.to_path_buf();
            let (blocks_tx, mut blocks_rx) = mpsc::channel::<Bytes>(BLOCKS_IN_FLIGHT);
            let written = tokio::task::spawn_blocking(move || -> Result<()> {
                while let Some(block) = blocks_rx.blocking_recv() {
                    file.write_all(&block).with_context(|| format!("cannot write {}", out.display()))?;
                }
                Ok(())
            });
            Some((blocks_tx, written))
        }
        None => None,
    };
    let mut body = s3.send(&Method::GET, path, "", None, empty()).await?.into_body();
    let mut crc32 = crc32fast::Hasher::new();
    let mut n_bytes = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("GET {path}: the body failed after {n_bytes} bytes"))?;
        let Ok(data) = frame.into_data() else { continue };
        crc32.update(&data);
        n_bytes += data.len() as u64;
        if let Some((blocks_tx, _)) = &writer {
            if blocks_tx.send(data).await.is_err() {
                break; // The writer failed: its error is reported below.
            }
        }
    }
    if let Some((blocks_tx, written)) = writer {
        drop(blocks_tx);
        written.await.context("the file writer panicked")??;
    }
    Ok((n_bytes, crc32.finalize()))
}

/// A file's length and crc32, read by [`BLOCK_BYTES`] blocks.
fn file_crc32(path: &Path) -> Result<(u64, u32)> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut crc32 = crc32fast::Hasher::new();
    let mut block = vec![0; BLOCK_BYTES];
    let mut n_bytes = 0;
    loop {
        let n = file.read(&mut block).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok((n_bytes, crc32.finalize()));
        }
        crc32.update(&block[..n]);
        n_bytes += n as u64;
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        match cli.mode {
            Mode::Small(args) => small(args).await,
            Mode::Large(args) => large(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_once_with_slashes_kept() {
        for (key, path) in [
            ("run1/00000007", "/bench/run1/00000007"),
            ("a b+c", "/bench/a%20b%2Bc"),
            ("é~x.y_z-", "/bench/%C3%A9~x.y_z-"),
        ] {
            assert_eq!(object_path("bench", key), path, "key {key:?}");
        }
        assert_eq!(encode("a/b=", false), "a%2Fb%3D");
    }

    #[test]
    fn object_bytes_are_deterministic_and_differ_by_key_and_seed() {
        let a = object_bytes(0, &small_key("p", 1), 4099);
        assert_eq!(a.len(), 4099);
        assert_eq!(a, object_bytes(0, &small_key("p", 1), 4099));
        assert_ne!(a, object_bytes(0, &small_key("p", 2), 4099));
        assert_ne!(a, object_bytes(1, &small_key("p", 1), 4099));
        assert_ne!(a, object_bytes(0, &small_key("q", 1), 4099));
    }

    #[test]
    fn upload_id_is_read_from_the_create_answer() {
        let xml = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>\
                   <UploadId>abc/+=</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(xml_value(xml, "UploadId"), Some("abc/+="));
        assert_eq!(xml_value(xml, "ETag"), None);
    }
}
