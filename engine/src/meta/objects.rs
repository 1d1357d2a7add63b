//! Buckets and the keys in them, for the S3 front door: a bucket is a namespace that maps each
//! key to the ID of a dfs file, with what S3 keeps beside an object (its ETag, size, time, and
//! the headers it returns). Files stay addressed by ID: an object is a dfs file like any other,
//! and `dfs-client stat ID` shows it.
//!
//! Both backends keep the same entry bytes: a format version byte, then postcard. Keys are
//! compared as bytes (S3 lists in the binary order of their UTF-8), so a listing is a range scan
//! from where the last one stopped, never a read of every entry.

use super::{MetaError, MetaStore};
use dfs_proto::FileId;
use serde::{Deserialize, Serialize};

/// Entry format version, the first byte of every stored entry.
const ENTRY_VERSION: u8 = 1;
/// Longest bucket name S3 allows.
pub const MAX_BUCKET_NAME: usize = 63;
/// Longest key S3 allows, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// One dfs file holding bytes of an object, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    pub file_id: [u8; 16],
    pub size: u64,
}

impl PartRef {
    pub fn file_id(&self) -> FileId {
        FileId(self.file_id)
    }
}

/// What a key points at: the files that hold the object's bytes, in order (one for a single
/// PUT, one per part for a multipart upload), and what S3 keeps beside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    pub parts: Vec<PartRef>,
    pub size: u64,
    /// The ETag without its quotes: the MD5 of the body in hex for a single PUT, the MD5 of the
    /// parts' MD5s and `-N` for N parts.
    pub etag: String,
    pub modified_unix_ms: u64,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub cache_control: Option<String>,
    /// `x-amz-meta-*`, names without the prefix, in lower case.
    pub user_meta: Vec<(String, String)>,
}

impl ObjectEntry {
    /// An entry with only the object's headers (a multipart upload's, until it completes).
    pub fn headers_only(
        content_type: Option<String>,
        content_encoding: Option<String>,
        content_disposition: Option<String>,
        cache_control: Option<String>,
        user_meta: Vec<(String, String)>,
    ) -> ObjectEntry {
        ObjectEntry {
            parts: Vec::new(),
            size: 0,
            etag: String::new(),
            modified_unix_ms: dfs_runtime::unix_ms(),
            content_type,
            content_encoding,
            content_disposition,
            cache_control,
            user_meta,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENTRY_VERSION];
        out.extend(postcard::to_allocvec(self).expect("an object entry always encodes"));
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<ObjectEntry, MetaError> {
        match bytes.split_first() {
            Some((&ENTRY_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| MetaError::Db(format!("an object entry does not decode: {e}")))
            }
            Some((v, _)) => Err(MetaError::Db(format!("object entry format {v} is newer than this engine knows"))),
            None => Err(MetaError::Db("an empty object entry".into())),
        }
    }
}

/// One side of a write's precondition: any entry (`*`), or an entry with this ETag (no quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ETagMatch {
    Any,
    ETag(String),
}

/// S3's conditional write: a precondition on the entry a key holds, checked in the same
/// transaction that sets the key, so two writers cannot both pass it. `if_match`: the key
/// holds an entry that matches; `if_none_match`: it holds none that matches (`*`: no entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteCondition {
    pub if_match: Option<ETagMatch>,
    pub if_none_match: Option<ETagMatch>,
}

impl WriteCondition {
    /// Whether a key holding `existing` may be written.
    pub fn allows(&self, existing: Option<&ObjectEntry>) -> bool {
        let hits = |m: &ETagMatch, e: &ObjectEntry| match m {
            ETagMatch::Any => true,
            ETagMatch::ETag(t) => t.trim_matches('"') == e.etag,
        };
        if let Some(m) = &self.if_match {
            if !existing.is_some_and(|e| hits(m, e)) {
                return false;
            }
        }
        if let Some(m) = &self.if_none_match {
            if existing.is_some_and(|e| hits(m, e)) {
                return false;
            }
        }
        true
    }
}

/// Why a key was not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefused {
    NoSuchBucket,
    /// The write's condition did not hold.
    Precondition,
}

/// How deleting a bucket went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketDeleted {
    Deleted,
    NoSuchBucket,
    NotEmpty,
}

/// Where multipart uploads in progress are kept: a bucket no S3 request can name (`#` is never
/// in a bucket name). An upload is the key `BUCKET \0 KEY \0 UPLOAD_ID` (so a bucket's
/// uploads are one range), with the object's headers; each part is the key `\x01 UPLOAD_ID \0`
/// and the part number (4 bytes, big-endian), pointing at the part's file.
pub const UPLOADS_BUCKET: &str = "#multipart";

pub fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + key.len() + upload_id.len() + 2);
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k.extend_from_slice(upload_id.as_bytes());
    k
}

/// The key of part `number` of an upload; with `number` 0, the start of its parts.
pub fn part_key(upload_id: &str, number: u32) -> Vec<u8> {
    let mut k = part_prefix(upload_id);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

pub fn part_prefix(upload_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(upload_id.len() + 6);
    k.push(1);
    k.extend_from_slice(upload_id.as_bytes());
    k.push(0);
    k
}

/// Why a name is not a bucket name S3 accepts (3 to 63 characters of lower-case letters,
/// digits, dots and hyphens, starting and ending with a letter or digit), or None.
pub fn bad_bucket_name(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.len() < 3 || b.len() > MAX_BUCKET_NAME {
        return Some("a bucket name has 3 to 63 characters");
    }
    if !b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-') {
        return Some("a bucket name has only lower-case letters, digits, dots and hyphens");
    }
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !edge(b[0]) || !edge(b[b.len() - 1]) {
        return Some("a bucket name starts and ends with a letter or a digit");
    }
    if name.contains("..") {
        return Some("a bucket name has no two dots in a row");
    }
    None
}

/// Most keys read from the metadata at once while listing.
pub const LIST_PAGE_KEYS: usize = 1000;

/// A listing's page: keys with their entries and common prefixes, in order, and where the next
/// page starts.
#[derive(Debug, Default)]
pub struct Listing {
    pub contents: Vec<(String, ObjectEntry)>,
    pub prefixes: Vec<String>,
    /// The last key or common prefix returned, when more follow.
    pub next: Option<String>,
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

impl MetaStore {
    /// Keys of `bucket` that start with `prefix` and come after `after`, at most `max` keys and
    /// common prefixes together, rolled up at `delimiter`: the listing of the S3 front door and
    /// of `dfs-client bucket ls`. Read from the metadata a page at a time from the first key
    /// that can qualify, skipping whole common prefixes, so a listing never reads every key.
    pub async fn list_keys(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> Result<Listing, MetaError> {
        let (prefix_b, delim) = (prefix.as_bytes(), delimiter.filter(|d| !d.is_empty()).map(str::as_bytes));
        let mut from: Vec<u8> = prefix_b.to_vec();
        if let Some(a) = after {
            let mut past = a.as_bytes().to_vec();
            past.push(0);
            from = from.max(past);
        }
        let mut out = Listing::default();
        let mut last: Option<String> = None;
        'pages: loop {
            let page = self.objects(bucket, &from, LIST_PAGE_KEYS).await?;
            let n = page.len();
            for (key, entry) in page {
                if !key.starts_with(prefix_b) {
                    break 'pages;
                }
                let rest = &key[prefix_b.len()..];
                let rolled = delim
                    .and_then(|d| rest.windows(d.len()).position(|w| w == d).map(|p| prefix_b.len() + p + d.len()));
                let skipped = rolled.is_some_and(|end| after.is_some_and(|a| &key[..end] <= a.as_bytes()));
                if !skipped && out.contents.len() + out.prefixes.len() == max {
                    // Something more qualifies: the page is full.
                    out.next = last;
                    return Ok(out);
                }
                match rolled {
                    // A common prefix at or before where the listing resumes was returned already.
                    Some(end) if skipped => match after_prefix(&key[..end]) {
                        Some(next) => {
                            from = next;
                            continue 'pages;
                        }
                        None => break 'pages,
                    },
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
            if n < LIST_PAGE_KEYS {
                break;
            }
        }
        Ok(out)
    }

    /// Creates a bucket; false if it exists already.
    pub async fn create_bucket(&self, name: &str) -> Result<bool, MetaError> {
        let now = dfs_runtime::unix_ms();
        match self {
            MetaStore::Embedded(e) => e.create_bucket(name.to_string(), now).await,
            MetaStore::Postgres(p) => p.create_bucket(name.to_string(), now).await,
        }
    }

    /// The bucket's creation time, if it exists.
    pub async fn bucket(&self, name: &str) -> Result<Option<u64>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.bucket(name),
            MetaStore::Postgres(p) => p.bucket(name.to_string()).await,
        }
    }

    /// Every bucket with its creation time, by name.
    pub async fn buckets(&self) -> Result<Vec<(String, u64)>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.buckets(),
            MetaStore::Postgres(p) => p.buckets().await,
        }
    }

    /// Deletes an empty bucket.
    pub async fn delete_bucket(&self, name: &str) -> Result<BucketDeleted, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.delete_bucket(name.to_string()).await,
            MetaStore::Postgres(p) => p.delete_bucket(name.to_string()).await,
        }
    }

    /// Points `key` of `bucket` at `entry`'s file if `condition` allows what it holds; returns
    /// the entry it replaced (whose files the caller deletes).
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &[u8],
        entry: &ObjectEntry,
        condition: &WriteCondition,
    ) -> Result<Result<Option<ObjectEntry>, KeyRefused>, MetaError> {
        let (bucket, key, bytes, condition) = (bucket.to_string(), key.to_vec(), entry.encode(), condition.clone());
        match self {
            MetaStore::Embedded(e) => e.put_object(bucket, key, bytes, condition).await,
            MetaStore::Postgres(p) => p.put_object(bucket, key, bytes, condition).await,
        }
    }

    pub async fn object(&self, bucket: &str, key: &[u8]) -> Result<Option<ObjectEntry>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.object(bucket, key),
            MetaStore::Postgres(p) => p.object(bucket.to_string(), key.to_vec()).await,
        }
    }

    /// Removes `key` from `bucket`; returns its entry (whose file the caller deletes).
    pub async fn delete_object(&self, bucket: &str, key: &[u8]) -> Result<Option<ObjectEntry>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.delete_object(bucket.to_string(), key.to_vec()).await,
            MetaStore::Postgres(p) => p.delete_object(bucket.to_string(), key.to_vec()).await,
        }
    }

    /// Up to `limit` keys of `bucket` from `from` on (inclusive), in byte order, with their
    /// entries.
    pub async fn objects(
        &self,
        bucket: &str,
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, ObjectEntry)>, MetaError> {
        match self {
            MetaStore::Embedded(e) => e.objects(bucket, from, limit),
            MetaStore::Postgres(p) => p.objects(bucket.to_string(), from.to_vec(), limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_conditions_follow_s3() {
        let entry = |etag: &str| ObjectEntry {
            etag: etag.into(),
            ..ObjectEntry::headers_only(None, None, None, None, Vec::new())
        };
        let e = entry("abc");
        let cond = |m: Option<ETagMatch>, n: Option<ETagMatch>| WriteCondition { if_match: m, if_none_match: n };
        let tag = |t: &str| Some(ETagMatch::ETag(t.into()));
        assert!(WriteCondition::default().allows(None) && WriteCondition::default().allows(Some(&e)));
        assert!(cond(Some(ETagMatch::Any), None).allows(Some(&e)));
        assert!(!cond(Some(ETagMatch::Any), None).allows(None));
        assert!(cond(tag("\"abc\""), None).allows(Some(&e)));
        assert!(!cond(tag("abd"), None).allows(Some(&e)));
        assert!(!cond(tag("abc"), None).allows(None));
        assert!(cond(None, Some(ETagMatch::Any)).allows(None));
        assert!(!cond(None, Some(ETagMatch::Any)).allows(Some(&e)));
        assert!(cond(None, tag("old")).allows(Some(&e)) && cond(None, tag("old")).allows(None));
        assert!(!cond(None, tag("abc")).allows(Some(&e)));
    }

    #[test]
    fn the_key_after_a_prefix_skips_everything_under_it() {
        assert_eq!(after_prefix(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(after_prefix(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(after_prefix(&[0xff, 0xff]), None);
    }

    #[test]
    fn entries_round_trip_and_bucket_names_follow_s3() {
        let e = ObjectEntry {
            parts: vec![PartRef { file_id: [7; 16], size: 5 }],
            size: 5,
            etag: "5d41402abc4b2a76b9719d911017c592".into(),
            modified_unix_ms: 9,
            content_type: Some("text/plain".into()),
            content_encoding: None,
            content_disposition: None,
            cache_control: Some("no-cache".into()),
            user_meta: vec![("a".into(), "b".into())],
        };
        assert_eq!(ObjectEntry::decode(&e.encode()).unwrap(), e);
        assert!(ObjectEntry::decode(&[9, 1, 2]).is_err());
        for good in ["abc", "my-bucket.v2", "0a0"] {
            assert_eq!(bad_bucket_name(good), None, "{good}");
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a..b", "a_b", &"a".repeat(64)] {
            assert!(bad_bucket_name(bad).is_some(), "{bad}");
        }
    }
}
