//! The S3 operations dfs serves, over its buckets, keys and files. Each operation's work on the
//! cluster and the metadata runs as a task on the S3 thread's runtime (the engine's I/O is not
//! `Send`; `s3s` asks for `Send` futures, so each operation hands its work to a local task and
//! awaits it).

use crate::meta::objects::{
    bad_bucket_name, upload_key, BucketDeleted, ETagMatch, KeyRefused, ObjectEntry, PartRef, WriteCondition,
    MAX_KEY_BYTES, UPLOADS_BUCKET,
};
use crate::put::{put_buffered, BodySource, BufferedPutError};
use crate::state::EngineState;
use bytes::Bytes;
use dfs_proto::Status;
use futures_util::StreamExt;
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result, S3};
use std::future::Future;
use std::sync::Arc;

/// Largest chunk an S3 upload is cut into: each chunk is held whole in memory (against the
/// buffer budget) before it goes to its nodes, since its crc32 must precede it.
pub const S3_CHUNK_CAP_BYTES: u64 = 8 << 20;
/// Keys one listing returns at most (S3's own limit).
const MAX_LIST_KEYS: usize = 1000;
/// Verified bytes queued between a download's reader and the response body.
const GET_QUEUE_PIECES: usize = 4;
/// A GET of at most this many bytes is read whole before its answer starts (see `get_object`).
const WHOLE_BODY_BYTES: u64 = 1 << 20;

pub struct DfsS3 {
    pub state: Arc<EngineState>,
}

/// Starts `work`, operation `op`, as a task on this thread's runtime, and returns the wait for it
/// (which, unlike the work, can be sent between threads, as `s3s` asks); counts the request by
/// its answer, in the metrics and on the status page.
fn local<T: Send + 'static>(
    state: &Arc<EngineState>,
    op: &'static str,
    work: impl Future<Output = S3Result<T>> + 'static,
) -> impl Future<Output = S3Result<T>> + Send {
    let started = std::time::Instant::now();
    let task = dfs_runtime::backend::spawn(work);
    let state = state.clone();
    async move {
        let result = task.await.map_err(|e| s3_error!(InternalError, "the request's task failed: {e}"))?;
        let code = match &result {
            Ok(_) => "200",
            Err(e) => e.code().as_str(),
        };
        let elapsed = started.elapsed();
        crate::metrics::S3_REQUESTS.with_label_values(&[op, code]).inc();
        crate::metrics::S3_REQUEST_SECONDS.with_label_values(&[op]).observe(elapsed.as_secs_f64());
        // Not-found and not-modified answers are what a client asked about, not failures.
        let outcome = match code {
            "200" | "NoSuchKey" | "NotModified" => "ok",
            _ => "error",
        };
        let tally = dfs_runtime::conn::Tally { bytes_in: 0, bytes_out: 0, outcome };
        state.activity.record(&tally, elapsed);
        result
    }
}

fn meta_err(e: crate::meta::MetaError) -> S3Error {
    tracing::error!("S3: {e}");
    s3_error!(ServiceUnavailable, "metadata: {e}")
}

fn store_err(status: Status, message: String) -> S3Error {
    match status {
        Status::BadRequest => s3_error!(InvalidRequest, "{message}"),
        Status::Unavailable => s3_error!(ServiceUnavailable, "{message}"),
        _ => s3_error!(InternalError, "{message}"),
    }
}

fn check_key(key: &str) -> S3Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(s3_error!(KeyTooLongError, "a key has 1 to {MAX_KEY_BYTES} bytes"));
    }
    Ok(())
}

/// A write's If-Match and If-None-Match, as the metadata checks them when it sets the key.
fn write_condition(if_match: Option<ETagCondition>, if_none_match: Option<ETagCondition>) -> WriteCondition {
    let side = |c: ETagCondition| match c {
        ETagCondition::Any => ETagMatch::Any,
        ETagCondition::ETag(e) => ETagMatch::ETag(e.value().to_string()),
    };
    WriteCondition { if_match: if_match.map(side), if_none_match: if_none_match.map(side) }
}

/// Refuses a conditional write early, before its body is stored, when the key already fails
/// the condition. (The metadata checks it again when it sets the key.)
async fn check_write_condition(
    state: &EngineState,
    bucket: &str,
    key: &str,
    condition: &WriteCondition,
) -> S3Result<()> {
    if *condition == WriteCondition::default() {
        return Ok(());
    }
    let held = state.meta.object(bucket, key.as_bytes()).await.map_err(meta_err)?;
    if condition.allows(held.as_ref()) {
        Ok(())
    } else {
        Err(s3_error!(PreconditionFailed, "the key does not meet If-Match / If-None-Match"))
    }
}

/// GET and HEAD preconditions (If-Match, If-Unmodified-Since: 412; If-None-Match,
/// If-Modified-Since: 304), checked against the object's ETag and time, in the order HTTP
/// gives them (RFC 9110, 13.2.2); times compare to the second.
fn check_preconditions(
    entry: &ObjectEntry,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == entry.etag,
    };
    let modified = (entry.modified_unix_ms / 1000) as i64;
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    match (if_match, if_unmodified_since) {
        (Some(c), _) if !matches(c) => return Err(s3_error!(PreconditionFailed, "the ETag does not match If-Match")),
        (None, Some(t)) if modified > secs(t) => {
            return Err(s3_error!(PreconditionFailed, "modified after If-Unmodified-Since"))
        }
        _ => {}
    }
    match (if_none_match, if_modified_since) {
        (Some(c), _) if matches(c) => Err(s3_error!(NotModified)),
        (None, Some(t)) if modified <= secs(t) => Err(s3_error!(NotModified)),
        _ => Ok(()),
    }
}

fn timestamp(unix_ms: u64) -> Timestamp {
    Timestamp::from(std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms))
}

/// The body of a PUT as a dfs upload's source: its bytes in order, its MD5 (the ETag) and the
/// checksums the client asked for computed on the way, and checked at the end against what the
/// client sent (Content-MD5, `x-amz-checksum-*`, in the headers or the aws-chunked trailer).
struct PutBody {
    body: StreamingBlob,
    pending: Bytes,
    size: u64,
    read: u64,
    md5: s3s::crypto::Md5,
    checksums: Option<s3s::checksum::ChecksumHasher>,
    expected_md5: Option<String>,
    expected: Expected,
    trailers: Option<s3s::TrailingHeaders>,
    etag: Option<String>,
    computed: Option<s3s::dto::Checksum>,
}

/// The checksums the client announced.
#[derive(Default)]
struct Expected {
    crc32: Option<String>,
    crc32c: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    crc64nvme: Option<String>,
}

impl BodySource for PutBody {
    type Error = S3Error;

    async fn fill(&mut self, buf: &mut [u8]) -> Result<(), S3Error> {
        use s3s::crypto::Checksum as _;
        let mut at = 0;
        while at < buf.len() {
            if self.pending.is_empty() {
                match self.body.next().await {
                    Some(Ok(b)) => self.pending = b,
                    Some(Err(e)) => {
                        return Err(s3_error!(IncompleteBody, "the body broke after {} bytes: {e}", self.read))
                    }
                    None => {
                        return Err(s3_error!(
                            IncompleteBody,
                            "the body ended after {} of {} bytes",
                            self.read,
                            self.size
                        ))
                    }
                }
            }
            let n = self.pending.len().min(buf.len() - at);
            let piece = self.pending.split_to(n);
            buf[at..at + n].copy_from_slice(&piece);
            self.md5.update(&piece);
            if let Some(c) = &mut self.checksums {
                c.update(&piece);
            }
            at += n;
            self.read += n as u64;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), S3Error> {
        use s3s::crypto::Checksum as _;
        if !self.pending.is_empty() {
            return Err(s3_error!(IncompleteBody, "the body is longer than its {} bytes", self.size));
        }
        while let Some(more) = self.body.next().await {
            match more {
                Ok(b) if b.is_empty() => {}
                Ok(_) => return Err(s3_error!(IncompleteBody, "the body is longer than its {} bytes", self.size)),
                Err(e) => return Err(s3_error!(IncompleteBody, "the body broke at its end: {e}")),
            }
        }
        let md5 = std::mem::take(&mut self.md5).finalize();
        if let Some(expected) = &self.expected_md5 {
            use base64::Engine as _;
            let ours = base64::engine::general_purpose::STANDARD.encode(md5);
            if *expected != ours {
                return Err(s3_error!(BadDigest, "the Content-MD5 does not match the body"));
            }
        }
        self.etag = Some(md5.iter().map(|b| format!("{b:02x}")).collect());
        if let Some(trailers) = self.trailers.take().and_then(|t| t.take()) {
            let get = |name: &str| trailers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            self.expected.crc32 = self.expected.crc32.take().or(get("x-amz-checksum-crc32"));
            self.expected.crc32c = self.expected.crc32c.take().or(get("x-amz-checksum-crc32c"));
            self.expected.sha1 = self.expected.sha1.take().or(get("x-amz-checksum-sha1"));
            self.expected.sha256 = self.expected.sha256.take().or(get("x-amz-checksum-sha256"));
            self.expected.crc64nvme = self.expected.crc64nvme.take().or(get("x-amz-checksum-crc64nvme"));
        }
        let computed = self.checksums.take().map(|c| c.finalize()).unwrap_or_default();
        let pairs = [
            ("CRC32", &self.expected.crc32, &computed.checksum_crc32),
            ("CRC32C", &self.expected.crc32c, &computed.checksum_crc32c),
            ("SHA1", &self.expected.sha1, &computed.checksum_sha1),
            ("SHA256", &self.expected.sha256, &computed.checksum_sha256),
            ("CRC64NVME", &self.expected.crc64nvme, &computed.checksum_crc64nvme),
        ];
        for (name, expected, ours) in pairs {
            if let Some(expected) = expected {
                if Some(expected) != ours.as_ref() {
                    return Err(s3_error!(BadDigest, "the {name} checksum does not match the body"));
                }
            }
        }
        self.computed = Some(computed);
        Ok(())
    }
}

/// With `EncodingType=url` (what botocore asks for by default), the names in a listing go out
/// percent-encoded (all but unreserved characters and `/`), and the client decodes them.
struct Names {
    url: bool,
}

impl Names {
    fn of(encoding: &Option<EncodingType>) -> S3Result<Names> {
        match encoding.as_ref().map(|e| e.as_str()) {
            None => Ok(Names { url: false }),
            Some(e) if e == EncodingType::URL => Ok(Names { url: true }),
            Some(other) => Err(s3_error!(InvalidArgument, "encoding type {other} is not supported")),
        }
    }

    fn name(&self, s: String) -> String {
        if !self.url {
            return s;
        }
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    fn opt(&self, s: Option<String>) -> Option<String> {
        s.map(|s| self.name(s))
    }
}

fn object_of(key: String, e: &ObjectEntry) -> Object {
    Object {
        key: Some(key),
        size: Some(e.size as i64),
        e_tag: Some(ETag::Strong(e.etag.clone())),
        last_modified: Some(timestamp(e.modified_unix_ms)),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        ..Default::default()
    }
}

fn token(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn untoken(t: &str) -> S3Result<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| s3_error!(InvalidArgument, "the continuation token is not one this server gave"))?;
    String::from_utf8(bytes)
        .map_err(|_| s3_error!(InvalidArgument, "the continuation token is not one this server gave"))
}

fn max_keys(m: Option<i32>) -> S3Result<usize> {
    match m {
        None => Ok(MAX_LIST_KEYS),
        Some(m) if m < 0 => Err(s3_error!(InvalidArgument, "max-keys is not negative")),
        Some(m) => Ok((m as usize).min(MAX_LIST_KEYS)),
    }
}

/// The entry `key` of `bucket` points at: NoSuchBucket, NoSuchKey, or it.
async fn existing_object(state: &EngineState, bucket: &str, key: &str) -> S3Result<ObjectEntry> {
    check_key(key)?;
    require_bucket(state, bucket).await?;
    state.meta.object(bucket, key.as_bytes()).await.map_err(meta_err)?.ok_or_else(|| s3_error!(NoSuchKey))
}

async fn require_bucket(state: &EngineState, bucket: &str) -> S3Result<()> {
    match state.meta.bucket(bucket).await.map_err(meta_err)? {
        Some(_) => Ok(()),
        None => Err(s3_error!(NoSuchBucket)),
    }
}

/// Deletes the files of an object a key no longer points at (records now, copies in the
/// background).
async fn drop_object(state: &EngineState, entry: &ObjectEntry) {
    for part in &entry.parts {
        drop_file(state, part.file_id()).await;
    }
}

async fn drop_file(state: &EngineState, file_id: dfs_proto::FileId) {
    if let Err(e) = crate::server::delete_file(state, file_id).await {
        tracing::warn!("S3: file {file_id} a key no longer points at is left for later: {e}");
    }
}

/// The digests a client sent with a body (PutObject, UploadPart).
struct Digests {
    content_md5: Option<String>,
    algorithm: Option<ChecksumAlgorithm>,
    expected: Expected,
}

/// The digests a PutObject or UploadPart input carries (the two have the same fields).
macro_rules! digests_of {
    ($input:expr) => {
        Digests {
            content_md5: $input.content_md5,
            algorithm: $input.checksum_algorithm,
            expected: Expected {
                crc32: $input.checksum_crc32,
                crc32c: $input.checksum_crc32c,
                sha1: $input.checksum_sha1,
                sha256: $input.checksum_sha256,
                crc64nvme: $input.checksum_crc64nvme,
            },
        }
    };
}

/// A body stored as a new dfs file, digests checked.
struct Stored {
    file_id: dfs_proto::FileId,
    size: u64,
    /// The MD5 in hex: the ETag of a single PUT, of a part.
    md5_hex: String,
    computed: s3s::dto::Checksum,
}

/// Largest body of one PUT or one part (S3's limit).
const MAX_PUT_BYTES: u64 = 5 << 30;

/// Stores a request body as a new dfs file named `name` (see `put::put_buffered`); nothing is
/// stored unless it is whole and matches every digest its client sent.
async fn store_body(
    state: &EngineState,
    name: String,
    body: Option<StreamingBlob>,
    content_length: Option<i64>,
    digests: Digests,
    trailers: Option<s3s::TrailingHeaders>,
) -> S3Result<Stored> {
    let body = body.ok_or_else(|| s3_error!(IncompleteBody, "no body"))?;
    let size = match content_length {
        Some(n) if n >= 0 => n as u64,
        _ => {
            use s3s::stream::ByteStream as _;
            body.remaining_length().exact().ok_or_else(|| s3_error!(MissingContentLength))? as u64
        }
    };
    if size > MAX_PUT_BYTES {
        return Err(s3_error!(EntityTooLarge, "one PUT takes at most 5 GiB: use a multipart upload"));
    }
    let e = &digests.expected;
    let mut hasher = s3s::checksum::ChecksumHasher::default();
    let mut any = false;
    let mut want = |alg: &str| {
        any = true;
        match alg {
            ChecksumAlgorithm::CRC32 => hasher.crc32 = Some(Default::default()),
            ChecksumAlgorithm::CRC32C => hasher.crc32c = Some(Default::default()),
            ChecksumAlgorithm::SHA1 => hasher.sha1 = Some(Default::default()),
            ChecksumAlgorithm::SHA256 => hasher.sha256 = Some(Default::default()),
            ChecksumAlgorithm::CRC64NVME => hasher.crc64nvme = Some(Default::default()),
            _ => return false,
        }
        true
    };
    for (on, alg) in [
        (e.crc32.is_some(), ChecksumAlgorithm::CRC32),
        (e.crc32c.is_some(), ChecksumAlgorithm::CRC32C),
        (e.sha1.is_some(), ChecksumAlgorithm::SHA1),
        (e.sha256.is_some(), ChecksumAlgorithm::SHA256),
        (e.crc64nvme.is_some(), ChecksumAlgorithm::CRC64NVME),
    ] {
        if on {
            want(alg);
        }
    }
    if let Some(alg) = &digests.algorithm {
        if !want(alg.as_str()) {
            return Err(s3_error!(InvalidArgument, "checksum algorithm {} is not supported", alg.as_str()));
        }
    }
    let mut source = PutBody {
        body,
        pending: Bytes::new(),
        size,
        read: 0,
        md5: Default::default(),
        checksums: any.then_some(hasher),
        expected_md5: digests.content_md5,
        expected: digests.expected,
        trailers,
        etag: None,
        computed: None,
    };
    let _counted = crate::activity::InProgress::upload(&state.activity);
    let file_id = match put_buffered(state, name, size, S3_CHUNK_CAP_BYTES, &mut source).await {
        Ok(id) => id,
        Err(BufferedPutError::Body(e)) => return Err(e),
        Err(BufferedPutError::Store(status, message)) => return Err(store_err(status, message)),
    };
    Ok(Stored {
        file_id,
        size,
        md5_hex: source.etag.expect("a finished body has its MD5"),
        computed: source.computed.unwrap_or_default(),
    })
}

/// Streams bytes `start..end` of an object, part after part, into `tx`.
async fn stream_object(state: &EngineState, entry: &ObjectEntry, start: u64, end: u64, tx: crate::get::ByteSender) {
    let mut at = 0u64;
    for part in &entry.parts {
        let (part_start, part_end) = (at, at + part.size);
        at = part_end;
        let (from, to) = (start.max(part_start), end.min(part_end));
        if from >= to {
            continue;
        }
        let record = match state.meta.get(part.file_id()).await {
            Ok(Some(r)) if r.size == part.size => r,
            Ok(Some(r)) => {
                let why = format!("file {} holds {} bytes, the object says {}", part.file_id(), r.size, part.size);
                let _ = tx.send(Err(std::io::Error::other(why))).await;
                return;
            }
            Ok(None) => {
                let why = format!("file {} of the object is gone", part.file_id());
                let _ = tx.send(Err(std::io::Error::other(why))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        };
        let sent =
            crate::get::stream_range(state, part.file_id(), &record, from - part_start, to - part_start, tx.clone())
                .await;
        if !sent {
            return;
        }
    }
}

fn lower_meta(m: Option<Metadata>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        m.unwrap_or_default().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    v.sort();
    v
}

/// Points `key` at `entry`'s files; the files it pointed at before go. If the bucket is gone
/// meanwhile, `entry`'s files go instead.
async fn point_key(
    state: &EngineState,
    bucket: &str,
    key: &str,
    entry: &ObjectEntry,
    condition: &WriteCondition,
) -> S3Result<()> {
    set_key(state, bucket, key.as_bytes(), entry, condition).await
}

/// Points `key` of `bucket` at `entry` (an object, or an upload's part), then deletes the files
/// of the entry it replaced; when the key is not set, `entry`'s files go. When the metadata
/// answers an error, the key may or may not have been set (a commit whose answer was lost):
/// it is read again, and `entry`'s files are deleted only if the key does not point at them.
async fn set_key(
    state: &EngineState,
    bucket: &str,
    key: &[u8],
    entry: &ObjectEntry,
    condition: &WriteCondition,
) -> S3Result<()> {
    let mut answer = state.meta.put_object(bucket, key, entry, condition).await;
    if answer.is_ok() && dfs_runtime::failpoint::is_on("s3-key-answer-lost") {
        // Tests: the key is set, but its commit's answer reads as an error.
        answer = Err(crate::meta::MetaError::Db("failpoint s3-key-answer-lost: the commit's answer was lost".into()));
    }
    match answer {
        Ok(Ok(Some(old))) => {
            drop_object(state, &old).await;
            Ok(())
        }
        Ok(Ok(None)) => Ok(()),
        Ok(Err(KeyRefused::NoSuchBucket)) => {
            drop_object(state, entry).await;
            Err(s3_error!(NoSuchBucket))
        }
        Ok(Err(KeyRefused::Precondition)) => {
            drop_object(state, entry).await;
            Err(s3_error!(PreconditionFailed, "the key does not meet If-Match / If-None-Match"))
        }
        Err(e) => match state.meta.object(bucket, key).await {
            Ok(Some(held)) if held.parts == entry.parts => {
                tracing::warn!(
                    "bucket {bucket}: a key was set though its commit answered an error ({e}); \
                     the files of what it held before, if anything, are left for an operator"
                );
                Ok(())
            }
            Ok(_) => {
                drop_object(state, entry).await;
                Err(meta_err(e))
            }
            Err(again) => {
                tracing::error!(
                    "bucket {bucket}: setting a key answered an error ({e}) and reading it back too ({again}); \
                     its new files are kept, since the key may point at them"
                );
                Err(s3_error!(ServiceUnavailable, "the outcome of this write is unknown: {e}"))
            }
        },
    }
}

/// Smallest part but the last (S3's limit).
const MIN_PART_BYTES: u64 = 5 << 20;
/// Most parts an upload has (S3's limit).
const MAX_PARTS: i32 = 10_000;

fn new_upload_id() -> S3Result<String> {
    let mut raw = [0u8; 16];
    getrandom::getrandom(&mut raw).map_err(|e| s3_error!(InternalError, "cannot draw an upload ID: {e}"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

fn check_upload_id(id: &str) -> S3Result<()> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(s3_error!(NoSuchUpload))
    }
}

/// Removes an upload's parts from the metadata; returns them, by part number.
async fn take_parts(state: &EngineState, upload_id: &str) -> S3Result<Vec<(u32, ObjectEntry)>> {
    let mut parts = Vec::new();
    let prefix = crate::meta::objects::part_prefix(upload_id);
    loop {
        let page = state.meta.objects(UPLOADS_BUCKET, &prefix, MAX_LIST_KEYS).await.map_err(meta_err)?;
        let mine: Vec<_> = page.into_iter().take_while(|(k, _)| k.starts_with(&prefix)).collect();
        if mine.is_empty() {
            return Ok(parts);
        }
        for (k, _) in mine {
            let number = u32::from_be_bytes(
                k[prefix.len()..].try_into().map_err(|_| s3_error!(InternalError, "a bad part key"))?,
            );
            if let Some(e) = state.meta.delete_object(UPLOADS_BUCKET, &k).await.map_err(meta_err)? {
                parts.push((number, e));
            }
        }
    }
}

/// The parts of an upload from `after` on, in order, at most `limit`.
async fn parts_of(state: &EngineState, upload_id: &str, after: u32, limit: usize) -> S3Result<Vec<(u32, ObjectEntry)>> {
    let prefix = crate::meta::objects::part_prefix(upload_id);
    let from = crate::meta::objects::part_key(upload_id, after.saturating_add(1));
    let page = state.meta.objects(UPLOADS_BUCKET, &from, limit).await.map_err(meta_err)?;
    page.into_iter()
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, e)| {
            let n = u32::from_be_bytes(
                k[prefix.len()..].try_into().map_err(|_| s3_error!(InternalError, "a bad part key"))?,
            );
            Ok((n, e))
        })
        .collect()
}

/// Aborts every upload begun more than `max_age` ago (abandoned): its parts' files go.
pub async fn collect_abandoned_uploads(state: &EngineState, max_age: std::time::Duration) -> S3Result<usize> {
    let cutoff = dfs_runtime::unix_ms().saturating_sub(max_age.as_millis() as u64);
    let mut from = vec![2u8];
    let mut n = 0;
    loop {
        let page = state.meta.objects(UPLOADS_BUCKET, &from, MAX_LIST_KEYS).await.map_err(meta_err)?;
        let Some((last, _)) = page.last() else { return Ok(n) };
        let mut next = last.clone();
        next.push(0);
        for (k, e) in page {
            if e.modified_unix_ms >= cutoff {
                continue;
            }
            let Some(upload_id) = k.rsplit(|&b| b == 0).next().and_then(|id| std::str::from_utf8(id).ok()) else {
                continue;
            };
            let upload_id = upload_id.to_string();
            if state.meta.delete_object(UPLOADS_BUCKET, &k).await.map_err(meta_err)?.is_some() {
                for (_, part) in take_parts(state, &upload_id).await? {
                    drop_object(state, &part).await;
                }
                n += 1;
            }
        }
        from = next;
    }
}

#[async_trait::async_trait]
impl S3 for DfsS3 {
    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let state = self.state.clone();
        local(&self.state, "ListBuckets", async move {
            let buckets = state.meta.buckets().await.map_err(meta_err)?;
            let buckets = buckets
                .into_iter()
                .filter(|(name, _)| bad_bucket_name(name).is_none())
                .map(|(name, created)| Bucket {
                    name: Some(name),
                    creation_date: Some(timestamp(created)),
                    ..Default::default()
                })
                .collect();
            Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
        })
        .await
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let state = self.state.clone();
        let name = req.input.bucket;
        local(&self.state, "CreateBucket", async move {
            if let Some(why) = bad_bucket_name(&name) {
                return Err(s3_error!(InvalidBucketName, "{why}"));
            }
            if !state.meta.create_bucket(&name).await.map_err(meta_err)? {
                return Err(s3_error!(BucketAlreadyOwnedByYou));
            }
            Ok(S3Response::new(CreateBucketOutput { location: Some(format!("/{name}")) }))
        })
        .await
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        let state = self.state.clone();
        let name = req.input.bucket;
        local(&self.state, "HeadBucket", async move {
            require_bucket(&state, &name).await?;
            Ok(S3Response::new(HeadBucketOutput::default()))
        })
        .await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let state = self.state.clone();
        let name = req.input.bucket;
        local(&self.state, "GetBucketLocation", async move {
            require_bucket(&state, &name).await?;
            Ok(S3Response::new(GetBucketLocationOutput::default()))
        })
        .await
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let state = self.state.clone();
        let name = req.input.bucket;
        local(&self.state, "DeleteBucket", async move {
            if bad_bucket_name(&name).is_some() {
                return Err(s3_error!(NoSuchBucket));
            }
            match state.meta.delete_bucket(&name).await.map_err(meta_err)? {
                BucketDeleted::Deleted => Ok(S3Response::new(DeleteBucketOutput::default())),
                BucketDeleted::NoSuchBucket => Err(s3_error!(NoSuchBucket)),
                BucketDeleted::NotEmpty => Err(s3_error!(BucketNotEmpty)),
            }
        })
        .await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let state = self.state.clone();
        let mut input = req.input;
        let trailers = req.trailing_headers;
        local(&self.state, "PutObject", async move {
            check_key(&input.key)?;
            let condition = write_condition(input.if_match.take(), input.if_none_match.take());
            require_bucket(&state, &input.bucket).await?;
            check_write_condition(&state, &input.bucket, &input.key, &condition).await?;
            let digests = digests_of!(input);
            let name = format!("{}/{}", input.bucket, input.key);
            let stored = store_body(&state, name, input.body, input.content_length, digests, trailers).await?;
            crate::metrics::S3_BYTES_IN.inc_by(stored.size);
            state.activity.add_bytes(stored.size, 0);
            let mut entry = ObjectEntry::headers_only(
                input.content_type.map(|c| c.to_string()),
                input.content_encoding,
                input.content_disposition,
                input.cache_control,
                lower_meta(input.metadata),
            );
            entry.parts = vec![PartRef { file_id: stored.file_id.0, size: stored.size }];
            entry.size = stored.size;
            entry.etag = stored.md5_hex.clone();
            point_key(&state, &input.bucket, &input.key, &entry, &condition).await?;
            let c = stored.computed;
            Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(stored.md5_hex)),
                checksum_crc32: c.checksum_crc32,
                checksum_crc32c: c.checksum_crc32c,
                checksum_sha1: c.checksum_sha1,
                checksum_sha256: c.checksum_sha256,
                checksum_crc64nvme: c.checksum_crc64nvme,
                ..Default::default()
            }))
        })
        .await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "GetObject", async move {
            let entry = existing_object(&state, &input.bucket, &input.key).await?;
            check_preconditions(
                &entry,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )?;
            let (start, end, content_range) = match &input.range {
                None => (0, entry.size, None),
                Some(r) => {
                    let span = r.check(entry.size).map_err(|_| s3_error!(InvalidRange))?;
                    let cr = format!("bytes {}-{}/{}", span.start, span.end.saturating_sub(1), entry.size);
                    (span.start, span.end, Some(cr))
                }
            };
            let (tx, rx) = tokio::sync::mpsc::channel(GET_QUEUE_PIECES);
            let reader_state = state.clone();
            let reader_entry = entry.clone();
            dfs_runtime::backend::spawn(async move {
                let _counted = crate::activity::InProgress::download(&reader_state.activity);
                stream_object(&reader_state, &reader_entry, start, end, tx).await;
            });
            let body = if end - start <= WHOLE_BODY_BYTES {
                // A small body is read whole before the status line goes out, so a chunk with
                // no readable copy is an S3 error naming it, not a body cut short.
                let mut rx = rx;
                let mut whole = Vec::with_capacity((end - start) as usize);
                while let Some(piece) = rx.recv().await {
                    match piece {
                        Ok(bytes) => whole.extend_from_slice(&bytes),
                        Err(e) => return Err(s3_error!(InternalError, "{e}")),
                    }
                }
                if whole.len() as u64 != end - start {
                    let why = format!("{} of the {} bytes asked for could be read", whole.len(), end - start);
                    return Err(s3_error!(InternalError, "{why}"));
                }
                crate::metrics::S3_BYTES_OUT.inc_by(whole.len() as u64);
                state.activity.add_bytes(0, whole.len() as u64);
                StreamingBlob::from(s3s::Body::from(Bytes::from(whole)))
            } else {
                StreamingBlob::wrap(futures_util::stream::unfold((rx, state.clone()), |(mut rx, state)| async move {
                    let item = rx.recv().await?;
                    if let Ok(bytes) = &item {
                        crate::metrics::S3_BYTES_OUT.inc_by(bytes.len() as u64);
                        state.activity.add_bytes(0, bytes.len() as u64);
                    }
                    Some((item, (rx, state)))
                }))
            };
            let output = GetObjectOutput {
                body: Some(body),
                content_length: Some((end - start) as i64),
                content_range,
                accept_ranges: Some("bytes".into()),
                e_tag: Some(ETag::Strong(entry.etag.clone())),
                last_modified: Some(timestamp(entry.modified_unix_ms)),
                content_type: entry.content_type.as_deref().and_then(|c| c.parse().ok()),
                content_encoding: entry.content_encoding.clone(),
                content_disposition: entry.content_disposition.clone(),
                cache_control: entry.cache_control.clone(),
                metadata: (!entry.user_meta.is_empty()).then(|| entry.user_meta.iter().cloned().collect()),
                ..Default::default()
            };
            let mut resp = S3Response::new(output);
            if input.range.is_some() {
                resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
            }
            Ok(resp)
        })
        .await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "HeadObject", async move {
            let entry = existing_object(&state, &input.bucket, &input.key).await?;
            check_preconditions(
                &entry,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )?;
            Ok(S3Response::new(HeadObjectOutput {
                content_length: Some(entry.size as i64),
                accept_ranges: Some("bytes".into()),
                e_tag: Some(ETag::Strong(entry.etag.clone())),
                last_modified: Some(timestamp(entry.modified_unix_ms)),
                content_type: entry.content_type.as_deref().and_then(|c| c.parse().ok()),
                content_encoding: entry.content_encoding.clone(),
                content_disposition: entry.content_disposition.clone(),
                cache_control: entry.cache_control.clone(),
                metadata: (!entry.user_meta.is_empty()).then(|| entry.user_meta.iter().cloned().collect()),
                ..Default::default()
            }))
        })
        .await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "DeleteObject", async move {
            check_key(&input.key)?;
            require_bucket(&state, &input.bucket).await?;
            if let Some(old) = state.meta.delete_object(&input.bucket, input.key.as_bytes()).await.map_err(meta_err)? {
                drop_object(&state, &old).await;
            }
            Ok(S3Response::new(DeleteObjectOutput::default()))
        })
        .await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "DeleteObjects", async move {
            require_bucket(&state, &input.bucket).await?;
            if input.delete.objects.len() > MAX_LIST_KEYS {
                return Err(s3_error!(MalformedXML, "one request deletes at most {MAX_LIST_KEYS} keys"));
            }
            let quiet = input.delete.quiet.unwrap_or(false);
            let (mut deleted, mut errors) = (Vec::new(), Vec::new());
            for o in input.delete.objects {
                match state.meta.delete_object(&input.bucket, o.key.as_bytes()).await {
                    Ok(old) => {
                        if let Some(old) = old {
                            drop_object(&state, &old).await;
                        }
                        if !quiet {
                            deleted.push(DeletedObject { key: Some(o.key), ..Default::default() });
                        }
                    }
                    Err(e) => errors.push(Error {
                        key: Some(o.key),
                        code: Some("InternalError".into()),
                        message: Some(e.to_string()),
                        ..Default::default()
                    }),
                }
            }
            Ok(S3Response::new(DeleteObjectsOutput {
                deleted: Some(deleted),
                errors: (!errors.is_empty()).then_some(errors),
                ..Default::default()
            }))
        })
        .await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "ListObjectsV2", async move {
            require_bucket(&state, &input.bucket).await?;
            let max = max_keys(input.max_keys)?;
            let after = match &input.continuation_token {
                Some(t) => Some(untoken(t)?),
                None => input.start_after.clone(),
            };
            let prefix = input.prefix.clone().unwrap_or_default();
            let names = Names::of(&input.encoding_type)?;
            let delimiter = input.delimiter.filter(|d| !d.is_empty());
            let page = state
                .meta
                .list_keys(&input.bucket, &prefix, delimiter.as_deref(), after.as_deref(), max)
                .await
                .map_err(meta_err)?;
            let key_count = (page.contents.len() + page.prefixes.len()) as i32;
            Ok(S3Response::new(ListObjectsV2Output {
                name: Some(input.bucket),
                prefix: Some(names.name(prefix)),
                delimiter: names.opt(delimiter),
                max_keys: Some(max as i32),
                key_count: Some(key_count),
                continuation_token: input.continuation_token,
                start_after: names.opt(input.start_after),
                is_truncated: Some(page.next.is_some()),
                next_continuation_token: page.next.as_deref().map(token),
                contents: Some(page.contents.into_iter().map(|(k, e)| object_of(names.name(k), &e)).collect()),
                common_prefixes: Some(
                    page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(names.name(p)) }).collect(),
                ),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        })
        .await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "ListObjects", async move {
            require_bucket(&state, &input.bucket).await?;
            let max = max_keys(input.max_keys)?;
            let prefix = input.prefix.clone().unwrap_or_default();
            let names = Names::of(&input.encoding_type)?;
            let delimiter = input.delimiter.filter(|d| !d.is_empty());
            let page = state
                .meta
                .list_keys(&input.bucket, &prefix, delimiter.as_deref(), input.marker.as_deref(), max)
                .await
                .map_err(meta_err)?;
            // NextMarker is returned only with a delimiter; without one the client continues
            // from the last key.
            let next_marker = page.next.clone().filter(|_| delimiter.is_some());
            Ok(S3Response::new(ListObjectsOutput {
                name: Some(input.bucket),
                // Version 1 encodes keys, delimiter and markers, not the prefix.
                prefix: Some(prefix),
                delimiter: names.opt(delimiter),
                marker: Some(names.name(input.marker.unwrap_or_default())),
                max_keys: Some(max as i32),
                is_truncated: Some(page.next.is_some()),
                next_marker: names.opt(next_marker),
                contents: Some(page.contents.into_iter().map(|(k, e)| object_of(names.name(k), &e)).collect()),
                common_prefixes: Some(
                    page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(names.name(p)) }).collect(),
                ),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        })
        .await
    }

    /// Buckets keep no versions: each key is listed as its one version, `null`, the latest.
    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "ListObjectVersions", async move {
            require_bucket(&state, &input.bucket).await?;
            let max = max_keys(input.max_keys)?;
            let prefix = input.prefix.clone().unwrap_or_default();
            let names = Names::of(&input.encoding_type)?;
            let delimiter = input.delimiter.filter(|d| !d.is_empty());
            let after = input.key_marker.clone().filter(|m| !m.is_empty());
            let page = state
                .meta
                .list_keys(&input.bucket, &prefix, delimiter.as_deref(), after.as_deref(), max)
                .await
                .map_err(meta_err)?;
            let versions = page
                .contents
                .into_iter()
                .map(|(k, e)| ObjectVersion {
                    key: Some(names.name(k)),
                    version_id: Some("null".into()),
                    is_latest: Some(true),
                    e_tag: Some(ETag::Strong(e.etag.clone())),
                    size: Some(e.size as i64),
                    last_modified: Some(timestamp(e.modified_unix_ms)),
                    storage_class: Some(ObjectVersionStorageClass::from_static(ObjectVersionStorageClass::STANDARD)),
                    ..Default::default()
                })
                .collect();
            Ok(S3Response::new(ListObjectVersionsOutput {
                name: Some(input.bucket),
                prefix: Some(names.name(prefix)),
                delimiter: names.opt(delimiter),
                key_marker: names.opt(input.key_marker),
                max_keys: Some(max as i32),
                is_truncated: Some(page.next.is_some()),
                next_key_marker: names.opt(page.next.clone()),
                next_version_id_marker: page.next.map(|_| "null".into()),
                versions: Some(versions),
                common_prefixes: Some(
                    page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(names.name(p)) }).collect(),
                ),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        })
        .await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "CopyObject", async move {
            check_key(&input.key)?;
            let CopySource::Bucket { bucket: src_bucket, key: src_key, version_id } = &input.copy_source else {
                return Err(s3_error!(NotImplemented, "copying from an access point is not supported"));
            };
            if version_id.is_some() {
                return Err(s3_error!(NotImplemented, "objects have no versions here"));
            }
            require_bucket(&state, &input.bucket).await?;
            let source = existing_object(&state, src_bucket, src_key).await?;
            check_preconditions(
                &source,
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
                input.copy_source_if_modified_since.as_ref(),
                input.copy_source_if_unmodified_since.as_ref(),
            )
            .map_err(|e| match e.code() {
                // A copy's "not modified" is a failed precondition (S3 answers 412).
                s3s::S3ErrorCode::NotModified => s3_error!(PreconditionFailed),
                _ => e,
            })?;
            let replace = input.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
            if **src_bucket == *input.bucket && **src_key == *input.key && !replace {
                return Err(s3_error!(
                    InvalidRequest,
                    "copying an object onto itself changes nothing: give the metadata directive REPLACE"
                ));
            }
            // The bytes are read as a GET reads them and stored as a PUT stores them: a new
            // file, every block verified on the way out and every chunk on the way in.
            let (tx, rx) = tokio::sync::mpsc::channel(GET_QUEUE_PIECES);
            let (reader_state, reader_entry, size) = (state.clone(), source.clone(), source.size);
            dfs_runtime::backend::spawn(async move {
                stream_object(&reader_state, &reader_entry, 0, size, tx).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { Some((rx.recv().await?, rx)) });
            let none = Digests { content_md5: None, algorithm: None, expected: Expected::default() };
            let name = format!("{}/{}", input.bucket, input.key);
            let stored =
                store_body(&state, name, Some(StreamingBlob::wrap(stream)), Some(size as i64), none, None).await?;
            let mut entry = if replace {
                ObjectEntry::headers_only(
                    input.content_type.map(|c| c.to_string()),
                    input.content_encoding,
                    input.content_disposition,
                    input.cache_control,
                    lower_meta(input.metadata),
                )
            } else {
                ObjectEntry { modified_unix_ms: dfs_runtime::unix_ms(), ..source }
            };
            entry.parts = vec![PartRef { file_id: stored.file_id.0, size: stored.size }];
            entry.size = stored.size;
            entry.etag = stored.md5_hex.clone();
            let modified = entry.modified_unix_ms;
            point_key(&state, &input.bucket, &input.key, &entry, &WriteCondition::default()).await?;
            Ok(S3Response::new(CopyObjectOutput {
                copy_object_result: Some(CopyObjectResult {
                    e_tag: Some(ETag::Strong(stored.md5_hex)),
                    last_modified: Some(timestamp(modified)),
                    ..Default::default()
                }),
                ..Default::default()
            }))
        })
        .await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "CreateMultipartUpload", async move {
            check_key(&input.key)?;
            require_bucket(&state, &input.bucket).await?;
            let upload_id = new_upload_id()?;
            let headers = ObjectEntry::headers_only(
                input.content_type.map(|c| c.to_string()),
                input.content_encoding,
                input.content_disposition,
                input.cache_control,
                lower_meta(input.metadata),
            );
            let at = upload_key(&input.bucket, &input.key, &upload_id);
            match state.meta.put_object(UPLOADS_BUCKET, &at, &headers, &WriteCondition::default()).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(s3_error!(InternalError, "the uploads namespace is missing")),
                Err(e) => return Err(meta_err(e)),
            }
            Ok(S3Response::new(CreateMultipartUploadOutput {
                bucket: Some(input.bucket),
                key: Some(input.key),
                upload_id: Some(upload_id),
                ..Default::default()
            }))
        })
        .await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let state = self.state.clone();
        let input = req.input;
        let trailers = req.trailing_headers;
        local(&self.state, "UploadPart", async move {
            check_upload_id(&input.upload_id)?;
            if !(1..=MAX_PARTS).contains(&input.part_number) {
                return Err(s3_error!(InvalidArgument, "a part number is 1 to {MAX_PARTS}"));
            }
            let at = upload_key(&input.bucket, &input.key, &input.upload_id);
            if state.meta.object(UPLOADS_BUCKET, &at).await.map_err(meta_err)?.is_none() {
                return Err(s3_error!(NoSuchUpload));
            }
            let digests = digests_of!(input);
            let name =
                format!("{}/{} (upload {}, part {})", input.bucket, input.key, input.upload_id, input.part_number);
            let stored = store_body(&state, name, input.body, input.content_length, digests, trailers).await?;
            crate::metrics::S3_BYTES_IN.inc_by(stored.size);
            state.activity.add_bytes(stored.size, 0);
            let mut part = ObjectEntry::headers_only(None, None, None, None, Vec::new());
            part.parts = vec![PartRef { file_id: stored.file_id.0, size: stored.size }];
            part.size = stored.size;
            part.etag = stored.md5_hex.clone();
            let at = crate::meta::objects::part_key(&input.upload_id, input.part_number as u32);
            set_key(&state, UPLOADS_BUCKET, &at, &part, &WriteCondition::default()).await?;
            let c = stored.computed;
            Ok(S3Response::new(UploadPartOutput {
                e_tag: Some(ETag::Strong(stored.md5_hex)),
                checksum_crc32: c.checksum_crc32,
                checksum_crc32c: c.checksum_crc32c,
                checksum_sha1: c.checksum_sha1,
                checksum_sha256: c.checksum_sha256,
                checksum_crc64nvme: c.checksum_crc64nvme,
                ..Default::default()
            }))
        })
        .await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let state = self.state.clone();
        let mut input = req.input;
        local(&self.state, "CompleteMultipartUpload", async move {
            use s3s::crypto::Checksum as _;
            check_upload_id(&input.upload_id)?;
            let condition = write_condition(input.if_match.take(), input.if_none_match.take());
            check_write_condition(&state, &input.bucket, &input.key, &condition).await?;
            let listed = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
            if listed.is_empty() {
                return Err(s3_error!(MalformedXML, "the request lists no part"));
            }
            let at = upload_key(&input.bucket, &input.key, &input.upload_id);
            let Some(headers) = state.meta.object(UPLOADS_BUCKET, &at).await.map_err(meta_err)? else {
                return Err(s3_error!(NoSuchUpload));
            };
            let stored: std::collections::BTreeMap<u32, ObjectEntry> =
                parts_of(&state, &input.upload_id, 0, MAX_PARTS as usize + 1).await?.into_iter().collect();
            // Every listed part exists with the ETag listed, in ascending order; all but the
            // last are at least 5 MiB.
            let mut chosen: Vec<(u32, &ObjectEntry)> = Vec::with_capacity(listed.len());
            for p in &listed {
                let n =
                    p.part_number.filter(|n| (1..=MAX_PARTS).contains(n)).ok_or_else(|| s3_error!(InvalidPart))? as u32;
                if chosen.last().is_some_and(|(prev, _)| *prev >= n) {
                    return Err(s3_error!(InvalidPartOrder));
                }
                let part = stored.get(&n).ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
                let etag = p.e_tag.as_ref().map(|e| e.value().to_string());
                if etag.as_deref().is_some_and(|e| e != part.etag) {
                    return Err(s3_error!(InvalidPart, "part {n} has another ETag"));
                }
                chosen.push((n, part));
            }
            if let Some((n, _)) = chosen[..chosen.len() - 1].iter().find(|(_, p)| p.size < MIN_PART_BYTES) {
                return Err(s3_error!(EntityTooSmall, "part {n} is smaller than 5 MiB and not the last"));
            }
            let mut md5s = s3s::crypto::Md5::new();
            for (_, p) in &chosen {
                let raw: Vec<u8> = (0..p.etag.len() / 2)
                    .filter_map(|i| u8::from_str_radix(&p.etag[2 * i..2 * i + 2], 16).ok())
                    .collect();
                md5s.update(&raw);
            }
            let etag =
                format!("{}-{}", md5s.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>(), chosen.len());
            let mut entry = headers;
            entry.parts = chosen.iter().flat_map(|(_, p)| p.parts.iter().cloned()).collect();
            entry.size = chosen.iter().map(|(_, p)| p.size).sum();
            entry.etag = etag.clone();
            entry.modified_unix_ms = dfs_runtime::unix_ms();
            let used: std::collections::BTreeSet<u32> = chosen.iter().map(|(n, _)| *n).collect();
            // The upload is claimed before its parts are used: a second completion, an abort or
            // the collection of abandoned uploads finds it gone, and cannot delete the files the
            // object now points at.
            if state.meta.delete_object(UPLOADS_BUCKET, &at).await.map_err(meta_err)?.is_none() {
                return Err(s3_error!(NoSuchUpload));
            }
            for (n, part) in take_parts(&state, &input.upload_id).await? {
                if !used.contains(&n) {
                    drop_object(&state, &part).await;
                }
            }
            point_key(&state, &input.bucket, &input.key, &entry, &condition).await?;
            Ok(S3Response::new(CompleteMultipartUploadOutput {
                bucket: Some(input.bucket.clone()),
                key: Some(input.key.clone()),
                e_tag: Some(ETag::Strong(etag)),
                location: Some(format!("/{}/{}", input.bucket, input.key)),
                ..Default::default()
            }))
        })
        .await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "AbortMultipartUpload", async move {
            check_upload_id(&input.upload_id)?;
            let at = upload_key(&input.bucket, &input.key, &input.upload_id);
            if state.meta.delete_object(UPLOADS_BUCKET, &at).await.map_err(meta_err)?.is_none() {
                return Err(s3_error!(NoSuchUpload));
            }
            for (_, part) in take_parts(&state, &input.upload_id).await? {
                drop_object(&state, &part).await;
            }
            Ok(S3Response::new(AbortMultipartUploadOutput::default()))
        })
        .await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "ListParts", async move {
            check_upload_id(&input.upload_id)?;
            let at = upload_key(&input.bucket, &input.key, &input.upload_id);
            if state.meta.object(UPLOADS_BUCKET, &at).await.map_err(meta_err)?.is_none() {
                return Err(s3_error!(NoSuchUpload));
            }
            let max = max_keys(input.max_parts)?;
            let after = input.part_number_marker.filter(|m| *m > 0).unwrap_or(0) as u32;
            let mut page = parts_of(&state, &input.upload_id, after, max + 1).await?;
            let truncated = page.len() > max;
            page.truncate(max);
            let next = page.last().map(|(n, _)| *n as i32).filter(|_| truncated);
            let parts = page
                .into_iter()
                .map(|(n, p)| Part {
                    part_number: Some(n as i32),
                    size: Some(p.size as i64),
                    e_tag: Some(ETag::Strong(p.etag.clone())),
                    last_modified: Some(timestamp(p.modified_unix_ms)),
                    ..Default::default()
                })
                .collect();
            Ok(S3Response::new(ListPartsOutput {
                bucket: Some(input.bucket),
                key: Some(input.key),
                upload_id: Some(input.upload_id),
                max_parts: Some(max as i32),
                is_truncated: Some(truncated),
                next_part_number_marker: next,
                parts: Some(parts),
                ..Default::default()
            }))
        })
        .await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(&self.state, "ListMultipartUploads", async move {
            require_bucket(&state, &input.bucket).await?;
            let max = max_keys(input.max_uploads)?;
            let prefix = input.prefix.clone().unwrap_or_default();
            let mut start = input.bucket.as_bytes().to_vec();
            start.push(0);
            let bucket_len = start.len();
            start.extend_from_slice(prefix.as_bytes());
            let mut from = start.clone();
            if let Some(marker) = &input.key_marker {
                let mut after = upload_key(&input.bucket, marker, input.upload_id_marker.as_deref().unwrap_or("~"));
                after.push(0);
                from = from.max(after);
            }
            let page = state.meta.objects(UPLOADS_BUCKET, &from, max + 1).await.map_err(meta_err)?;
            let mut uploads = Vec::new();
            let mut truncated = false;
            for (k, e) in page {
                if !k.starts_with(&start) {
                    break;
                }
                if uploads.len() == max {
                    truncated = true;
                    break;
                }
                let rest = &k[bucket_len..];
                let Some(cut) = rest.iter().rposition(|&b| b == 0) else { continue };
                uploads.push(MultipartUpload {
                    key: Some(String::from_utf8_lossy(&rest[..cut]).into_owned()),
                    upload_id: Some(String::from_utf8_lossy(&rest[cut + 1..]).into_owned()),
                    initiated: Some(timestamp(e.modified_unix_ms)),
                    ..Default::default()
                });
            }
            let (next_key, next_id) = match uploads.last().filter(|_| truncated) {
                Some(u) => (u.key.clone(), u.upload_id.clone()),
                None => (None, None),
            };
            Ok(S3Response::new(ListMultipartUploadsOutput {
                bucket: Some(input.bucket),
                prefix: input.prefix,
                key_marker: input.key_marker,
                upload_id_marker: input.upload_id_marker,
                max_uploads: Some(max as i32),
                is_truncated: Some(truncated),
                next_key_marker: next_key,
                next_upload_id_marker: next_id,
                uploads: Some(uploads),
                ..Default::default()
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_round_trip() {
        assert_eq!(untoken(&token("dir/x y")).unwrap(), "dir/x y");
        assert!(untoken("%%%").is_err());
    }
}
