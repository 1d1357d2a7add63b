//! The native protocol's bucket requests, what `dfs-client bucket` sends: create, list and
//! delete the S3 front door's buckets, and list a bucket's keys with the dfs files behind each.
//! They make the same metadata calls as the S3 requests of the same name (`meta::objects`), so
//! a bucket made one way is the same bucket the other way.

use crate::meta::objects::{bad_bucket_name, BucketDeleted, ObjectEntry};
use crate::state::EngineState;
use dfs_proto::limits::{MAX_ETAG_BYTES, MAX_KEY_BYTES, MAX_LIST_ENTRIES};
use dfs_proto::{BucketSummary, KeySummary, Msg, Status};

fn no_bucket(name: &str) -> Msg {
    Msg::error(Status::NotFound, format!("bucket {name:?} not found"))
}

pub async fn create(state: &EngineState, name: &str) -> Msg {
    if let Some(why) = bad_bucket_name(name) {
        return Msg::error(Status::BadRequest, format!("{name:?} is not a bucket name: {why}"));
    }
    match state.meta.create_bucket(name).await {
        Ok(true) => Msg::Ok,
        Ok(false) => Msg::error(Status::AlreadyExists, format!("bucket {name:?} exists already")),
        Err(e) => state.meta_failed(e),
    }
}

pub async fn delete(state: &EngineState, name: &str) -> Msg {
    if bad_bucket_name(name).is_some() {
        return no_bucket(name);
    }
    match state.meta.delete_bucket(name).await {
        Ok(BucketDeleted::Deleted) => Msg::Ok,
        Ok(BucketDeleted::NoSuchBucket) => no_bucket(name),
        Ok(BucketDeleted::NotEmpty) => Msg::error(
            Status::BadRequest,
            format!("bucket {name:?} is not empty: delete its keys first (dfs-client bucket ls {name})"),
        ),
        Err(e) => state.meta_failed(e),
    }
}

/// Buckets by name after `after`, at most `limit`. The `#multipart` namespace, which holds
/// uploads in progress, is no bucket and is left out.
pub async fn list(state: &EngineState, after: Option<&str>, limit: u32) -> Msg {
    let limit = limit.min(MAX_LIST_ENTRIES) as usize;
    match state.meta.buckets().await {
        Ok(all) => {
            let mut names = all
                .into_iter()
                .filter(|(name, _)| bad_bucket_name(name).is_none() && after.is_none_or(|a| name.as_str() > a));
            let buckets: Vec<BucketSummary> = names
                .by_ref()
                .take(limit)
                .map(|(name, created_unix_ms)| BucketSummary { name, created_unix_ms })
                .collect();
            Msg::BucketListOk { buckets, more: names.next().is_some() }
        }
        Err(e) => state.meta_failed(e),
    }
}

fn summary(key: String, e: &ObjectEntry) -> KeySummary {
    let mut etag = e.etag.clone();
    // An ETag is an MD5 in hex, with `-N` for N parts: far below the limit. Cut rather than
    // refuse to list if an entry ever holds more.
    etag.truncate(MAX_ETAG_BYTES as usize);
    KeySummary {
        key,
        size: e.size,
        modified_unix_ms: e.modified_unix_ms,
        etag,
        first_file: e.parts.first().map(|p| p.file_id()),
        n_files: e.parts.len() as u32,
    }
}

/// Keys of `bucket` that start with `prefix`, after `after`, at most `limit`, in byte order.
pub async fn keys(state: &EngineState, bucket: &str, prefix: &str, after: Option<&str>, limit: u32) -> Msg {
    if bad_bucket_name(bucket).is_some() {
        return no_bucket(bucket);
    }
    match state.meta.bucket(bucket).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_bucket(bucket),
        Err(e) => return state.meta_failed(e),
    }
    let limit = limit.min(MAX_LIST_ENTRIES) as usize;
    match state.meta.list_keys(bucket, prefix, None, after, limit).await {
        Ok(page) => {
            // S3 keeps keys to 1024 bytes; the listing's frame is sized for that.
            debug_assert!(page.contents.iter().all(|(k, _)| k.len() <= MAX_KEY_BYTES as usize));
            let more = page.next.is_some();
            let keys = page.contents.into_iter().map(|(k, e)| summary(k, &e)).collect();
            Msg::BucketKeysOk { keys, more }
        }
        Err(e) => state.meta_failed(e),
    }
}
