//! The S3 operations dfs serves, over its buckets, keys and files. Each operation's work on the
//! cluster and the metadata runs as a task on the S3 thread's runtime (the engine's I/O is not
//! `Send`; `s3s` asks for `Send` futures, so each operation hands its work to a local task and
//! awaits it).

use crate::meta::objects::{bad_bucket_name, BucketDeleted, ObjectEntry, MAX_KEY_BYTES};
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

pub struct DfsS3 {
    pub state: Arc<EngineState>,
}

/// Starts `work` as a task on this thread's runtime, and returns the wait for it (which, unlike
/// the work, can be sent between threads, as `s3s` asks).
fn local<T: Send + 'static>(
    work: impl Future<Output = S3Result<T>> + 'static,
) -> impl Future<Output = S3Result<T>> + Send {
    let task = dfs_runtime::backend::spawn(work);
    async move { task.await.map_err(|e| s3_error!(InternalError, "the request's task failed: {e}"))? }
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

/// Conditional requests are not served yet: refused, rather than answered as if unconditional.
fn no_conditions(any: bool) -> S3Result<()> {
    if any {
        return Err(s3_error!(
            NotImplemented,
            "conditional requests (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since) are not supported yet"
        ));
    }
    Ok(())
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

/// A listing's page: keys with their entries and common prefixes, in order, and where the next
/// page starts.
struct Listing {
    contents: Vec<(String, ObjectEntry)>,
    prefixes: Vec<String>,
    /// The last key or common prefix returned, when more follow.
    next: Option<String>,
}

/// The first key after every key that starts with `p`, if there is one.
fn after_prefix(p: &[u8]) -> Option<Vec<u8>> {
    let mut v = p.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xff {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

/// Keys of `bucket` that start with `prefix` and come after `after`, at most `max` keys and
/// common prefixes together, rolled up at `delimiter`; read from the metadata a page at a time
/// from the first key that can qualify, skipping whole common prefixes.
async fn list(
    state: &EngineState,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&str>,
    max: usize,
) -> S3Result<Listing> {
    let (prefix_b, delim) = (prefix.as_bytes(), delimiter.filter(|d| !d.is_empty()).map(str::as_bytes));
    let mut from: Vec<u8> = prefix_b.to_vec();
    if let Some(a) = after {
        let mut past = a.as_bytes().to_vec();
        past.push(0);
        from = from.max(past);
    }
    let mut out = Listing { contents: Vec::new(), prefixes: Vec::new(), next: None };
    let mut last: Option<String> = None;
    'pages: loop {
        let page = state.meta.objects(bucket, &from, MAX_LIST_KEYS).await.map_err(meta_err)?;
        let n = page.len();
        for (key, entry) in page {
            if !key.starts_with(prefix_b) {
                break 'pages;
            }
            let rest = &key[prefix_b.len()..];
            let rolled =
                delim.and_then(|d| rest.windows(d.len()).position(|w| w == d).map(|p| prefix_b.len() + p + d.len()));
            if out.contents.len() + out.prefixes.len() == max {
                out.next = last;
                return Ok(out);
            }
            match rolled {
                Some(end) => {
                    let cp = String::from_utf8_lossy(&key[..end]).into_owned();
                    out.prefixes.push(cp.clone());
                    last = Some(cp);
                    match after_prefix(&key[..end]) {
                        Some(next) => {
                            from = next;
                            continue 'pages;
                        }
                        None => break 'pages,
                    }
                }
                None => {
                    let k = String::from_utf8_lossy(&key).into_owned();
                    last = Some(k.clone());
                    out.contents.push((k, entry));
                    from = key;
                    from.push(0);
                }
            }
        }
        if n < MAX_LIST_KEYS {
            break;
        }
    }
    Ok(out)
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

async fn require_bucket(state: &EngineState, bucket: &str) -> S3Result<()> {
    match state.meta.bucket(bucket).await.map_err(meta_err)? {
        Some(_) => Ok(()),
        None => Err(s3_error!(NoSuchBucket)),
    }
}

/// Deletes a file a key no longer points at (its record now, its copies in the background).
async fn drop_file(state: &EngineState, file_id: dfs_proto::FileId) {
    if let Err(e) = crate::server::delete_file(state, file_id).await {
        tracing::warn!("S3: file {file_id} a key no longer points at is left for later: {e}");
    }
}

#[async_trait::async_trait]
impl S3 for DfsS3 {
    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let state = self.state.clone();
        local(async move {
            let buckets = state.meta.buckets().await.map_err(meta_err)?;
            let buckets = buckets
                .into_iter()
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
        local(async move {
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
        local(async move {
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
        local(async move {
            require_bucket(&state, &name).await?;
            Ok(S3Response::new(GetBucketLocationOutput::default()))
        })
        .await
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let state = self.state.clone();
        let name = req.input.bucket;
        local(async move {
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
        let input = req.input;
        let trailers = req.trailing_headers;
        local(async move {
            check_key(&input.key)?;
            no_conditions(input.if_match.is_some() || input.if_none_match.is_some())?;
            require_bucket(&state, &input.bucket).await?;
            let body = input.body.ok_or_else(|| s3_error!(IncompleteBody, "no body"))?;
            let size = match input.content_length {
                Some(n) if n >= 0 => n as u64,
                _ => {
                    use s3s::stream::ByteStream as _;
                    body.remaining_length().exact().ok_or_else(|| s3_error!(MissingContentLength))? as u64
                }
            };
            let mut hasher = s3s::checksum::ChecksumHasher::default();
            let mut any = false;
            let want = |on: bool, slot: &mut bool| {
                *slot |= on;
                on
            };
            if want(input.checksum_crc32.is_some(), &mut any) {
                hasher.crc32 = Some(Default::default());
            }
            if want(input.checksum_crc32c.is_some(), &mut any) {
                hasher.crc32c = Some(Default::default());
            }
            if want(input.checksum_sha1.is_some(), &mut any) {
                hasher.sha1 = Some(Default::default());
            }
            if want(input.checksum_sha256.is_some(), &mut any) {
                hasher.sha256 = Some(Default::default());
            }
            if want(input.checksum_crc64nvme.is_some(), &mut any) {
                hasher.crc64nvme = Some(Default::default());
            }
            if let Some(alg) = &input.checksum_algorithm {
                any = true;
                match alg.as_str() {
                    ChecksumAlgorithm::CRC32 => hasher.crc32 = Some(Default::default()),
                    ChecksumAlgorithm::CRC32C => hasher.crc32c = Some(Default::default()),
                    ChecksumAlgorithm::SHA1 => hasher.sha1 = Some(Default::default()),
                    ChecksumAlgorithm::SHA256 => hasher.sha256 = Some(Default::default()),
                    ChecksumAlgorithm::CRC64NVME => hasher.crc64nvme = Some(Default::default()),
                    other => return Err(s3_error!(InvalidArgument, "checksum algorithm {other} is not supported")),
                }
            }
            let mut source = PutBody {
                body,
                pending: Bytes::new(),
                size,
                read: 0,
                md5: Default::default(),
                checksums: any.then_some(hasher),
                expected_md5: input.content_md5.clone(),
                expected: Expected {
                    crc32: input.checksum_crc32.clone(),
                    crc32c: input.checksum_crc32c.clone(),
                    sha1: input.checksum_sha1.clone(),
                    sha256: input.checksum_sha256.clone(),
                    crc64nvme: input.checksum_crc64nvme.clone(),
                },
                trailers,
                etag: None,
                computed: None,
            };
            let name = format!("{}/{}", input.bucket, input.key);
            let file_id = match put_buffered(&state, name, size, S3_CHUNK_CAP_BYTES, &mut source).await {
                Ok(id) => id,
                Err(BufferedPutError::Body(e)) => return Err(e),
                Err(BufferedPutError::Store(status, message)) => return Err(store_err(status, message)),
            };
            let etag = source.etag.clone().expect("a finished body has its ETag");
            let mut user_meta: Vec<(String, String)> =
                input.metadata.unwrap_or_default().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            user_meta.sort();
            let entry = ObjectEntry {
                file_id: file_id.0,
                size,
                etag: etag.clone(),
                modified_unix_ms: dfs_runtime::unix_ms(),
                content_type: input.content_type.map(|c| c.to_string()),
                content_encoding: input.content_encoding,
                content_disposition: input.content_disposition,
                cache_control: input.cache_control,
                user_meta,
            };
            match state.meta.put_object(&input.bucket, input.key.as_bytes(), &entry).await {
                Ok(Ok(Some(old))) => drop_file(&state, old.file_id()).await,
                Ok(Ok(None)) => {}
                Ok(Err(())) => {
                    drop_file(&state, file_id).await;
                    return Err(s3_error!(NoSuchBucket));
                }
                Err(e) => {
                    drop_file(&state, file_id).await;
                    return Err(meta_err(e));
                }
            }
            let computed = source.computed.unwrap_or_default();
            Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(etag)),
                checksum_crc32: computed.checksum_crc32,
                checksum_crc32c: computed.checksum_crc32c,
                checksum_sha1: computed.checksum_sha1,
                checksum_sha256: computed.checksum_sha256,
                checksum_crc64nvme: computed.checksum_crc64nvme,
                ..Default::default()
            }))
        })
        .await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(async move {
            check_key(&input.key)?;
            no_conditions(
                input.if_match.is_some()
                    || input.if_none_match.is_some()
                    || input.if_modified_since.is_some()
                    || input.if_unmodified_since.is_some(),
            )?;
            require_bucket(&state, &input.bucket).await?;
            let entry = state
                .meta
                .object(&input.bucket, input.key.as_bytes())
                .await
                .map_err(meta_err)?
                .ok_or_else(|| s3_error!(NoSuchKey))?;
            let record = state
                .meta
                .get(entry.file_id())
                .await
                .map_err(meta_err)?
                .ok_or_else(|| s3_error!(NoSuchKey, "the key's file is gone"))?;
            let (start, end, content_range) = match &input.range {
                None => (0, record.size, None),
                Some(r) => {
                    let span = r.check(record.size).map_err(|_| s3_error!(InvalidRange))?;
                    let cr = format!("bytes {}-{}/{}", span.start, span.end.saturating_sub(1), record.size);
                    (span.start, span.end, Some(cr))
                }
            };
            let (tx, rx) = tokio::sync::mpsc::channel(GET_QUEUE_PIECES);
            let file_id = entry.file_id();
            let reader_state = state.clone();
            dfs_runtime::backend::spawn(async move {
                crate::get::stream_range(&reader_state, file_id, &record, start, end, tx).await;
            });
            let stream =
                futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
            let output = GetObjectOutput {
                body: Some(StreamingBlob::wrap(stream)),
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
        local(async move {
            check_key(&input.key)?;
            no_conditions(
                input.if_match.is_some()
                    || input.if_none_match.is_some()
                    || input.if_modified_since.is_some()
                    || input.if_unmodified_since.is_some(),
            )?;
            require_bucket(&state, &input.bucket).await?;
            let entry = state
                .meta
                .object(&input.bucket, input.key.as_bytes())
                .await
                .map_err(meta_err)?
                .ok_or_else(|| s3_error!(NoSuchKey))?;
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
        local(async move {
            check_key(&input.key)?;
            require_bucket(&state, &input.bucket).await?;
            if let Some(old) = state.meta.delete_object(&input.bucket, input.key.as_bytes()).await.map_err(meta_err)? {
                drop_file(&state, old.file_id()).await;
            }
            Ok(S3Response::new(DeleteObjectOutput::default()))
        })
        .await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(async move {
            require_bucket(&state, &input.bucket).await?;
            let quiet = input.delete.quiet.unwrap_or(false);
            let (mut deleted, mut errors) = (Vec::new(), Vec::new());
            for o in input.delete.objects {
                match state.meta.delete_object(&input.bucket, o.key.as_bytes()).await {
                    Ok(old) => {
                        if let Some(old) = old {
                            drop_file(&state, old.file_id()).await;
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
        local(async move {
            require_bucket(&state, &input.bucket).await?;
            let max = max_keys(input.max_keys)?;
            let after = match &input.continuation_token {
                Some(t) => Some(untoken(t)?),
                None => input.start_after.clone(),
            };
            let prefix = input.prefix.clone().unwrap_or_default();
            let page = list(&state, &input.bucket, &prefix, input.delimiter.as_deref(), after.as_deref(), max).await?;
            let key_count = (page.contents.len() + page.prefixes.len()) as i32;
            Ok(S3Response::new(ListObjectsV2Output {
                name: Some(input.bucket),
                prefix: Some(prefix),
                delimiter: input.delimiter,
                max_keys: Some(max as i32),
                key_count: Some(key_count),
                continuation_token: input.continuation_token,
                start_after: input.start_after,
                is_truncated: Some(page.next.is_some()),
                next_continuation_token: page.next.as_deref().map(token),
                contents: Some(page.contents.into_iter().map(|(k, e)| object_of(k, &e)).collect()),
                common_prefixes: Some(page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
                encoding_type: input.encoding_type,
                ..Default::default()
            }))
        })
        .await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let state = self.state.clone();
        let input = req.input;
        local(async move {
            require_bucket(&state, &input.bucket).await?;
            let max = max_keys(input.max_keys)?;
            let prefix = input.prefix.clone().unwrap_or_default();
            let page =
                list(&state, &input.bucket, &prefix, input.delimiter.as_deref(), input.marker.as_deref(), max).await?;
            // NextMarker is returned only with a delimiter; without one the client continues
            // from the last key.
            let next_marker = page.next.clone().filter(|_| input.delimiter.is_some());
            Ok(S3Response::new(ListObjectsOutput {
                name: Some(input.bucket),
                prefix: Some(prefix),
                delimiter: input.delimiter,
                marker: input.marker,
                max_keys: Some(max as i32),
                is_truncated: Some(page.next.is_some()),
                next_marker,
                contents: Some(page.contents.into_iter().map(|(k, e)| object_of(k, &e)).collect()),
                common_prefixes: Some(page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
                encoding_type: input.encoding_type,
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
    fn the_key_after_a_prefix_skips_everything_under_it() {
        assert_eq!(after_prefix(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(after_prefix(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(after_prefix(&[0xff, 0xff]), None);
        assert_eq!(untoken(&token("dir/x y")).unwrap(), "dir/x y");
        assert!(untoken("%%%").is_err());
    }
}
