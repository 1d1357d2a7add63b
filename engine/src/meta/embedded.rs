//! The embedded metadata backend: a redb database in one directory (`--meta DIR`), crash-safe,
//! for an engine alone.
//!
//! Table `files` maps a file ID to its record's bytes; table `schema` holds the schema version
//! of the database as a whole: 1 while some record names a node by address alone, 2 once every
//! record names its nodes by ID; table `repair_queue` holds the repair queue, one entry per
//! chunk; tables `buckets` and `objects` hold the S3 buckets and their keys (`objects.rs`).
//!
//! Reads run on the calling thread (redb read transactions are cheap and concurrent). Writes
//! of records, and of S3 keys, go to one writer thread that commits whatever has queued up in a
//! single fsynced transaction (group commit), so the io_uring threads never block on an fsync
//! and concurrent PUTs share their fsyncs.

use super::{db_err, FileRecord, MetaError, NodeDirectory, Placed, PlacementChange, Queued};
use dfs_core::repair::Reason;
use dfs_proto::{ChunkId, FileId};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

const FILES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("files");
const SCHEMA: TableDefinition<&str, u64> = TableDefinition::new("schema");
const QUEUE: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("repair_queue");
/// Files recorded and their bytes, kept in the transactions that insert and delete records, so
/// that counting them reads two values instead of every record.
const TOTALS: TableDefinition<&str, u64> = TableDefinition::new("totals");
/// Buckets (S3): name to creation time, Unix ms.
const BUCKETS: TableDefinition<&str, u64> = TableDefinition::new("buckets");
/// Keys of every bucket (S3): the bucket's name, a zero byte and the key, to the entry's bytes
/// (`objects::ObjectEntry`); in byte order, so a bucket's keys are one range.
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
const TOTAL_FILES: &str = "files";
const TOTAL_BYTES: &str = "bytes";
const SCHEMA_VERSION_KEY: &str = "version";
/// Schema: some records name nodes by address alone.
const SCHEMA_NODES_BY_ADDRESS: u64 = 1;
/// Schema: every record names its nodes by ID. The newest this engine knows.
const SCHEMA_NODES_BY_ID: u64 = 2;
/// Writes that may queue for the writer thread before callers wait.
pub const MAX_QUEUED_WRITES: usize = 1024;

enum WriteOp {
    Insert(FileId, Box<FileRecord>, tokio::sync::oneshot::Sender<Result<(), MetaError>>),
    Delete(FileId, tokio::sync::oneshot::Sender<Result<Option<FileRecord>, MetaError>>),
    /// Replaces where one chunk's copies live, if the file still exists.
    SetPlacement(Box<PlacementChange>, tokio::sync::oneshot::Sender<Result<Placed, MetaError>>),
    /// Points a key of a bucket at an entry (an S3 PUT's last step), or removes it (`entry`
    /// None); answers with the entry it replaced, or Err(()) when the bucket does not exist.
    SetObject(Box<ObjectChange>, tokio::sync::oneshot::Sender<Result<ObjectSet, MetaError>>),
}

struct ObjectChange {
    bucket: String,
    key: Vec<u8>,
    entry: Option<Vec<u8>>,
    condition: super::objects::WriteCondition,
}

type ObjectSet = Result<Option<super::objects::ObjectEntry>, super::objects::KeyRefused>;

/// Applies one key change inside the writer's transaction. An old entry that does not decode
/// is replaced all the same and reported in the log: the key must follow the caller's write,
/// and only the old entry's files are left behind (listed, not lost).
fn set_object(txn: &redb::WriteTransaction, change: &ObjectChange) -> Result<ObjectSet, MetaError> {
    use super::objects::{KeyRefused, ObjectEntry, WriteCondition};
    let mut objects = txn.open_table(OBJECTS).map_err(db_err)?;
    let key = object_key(&change.bucket, &change.key);
    if change.condition != WriteCondition::default() {
        let held = objects.get(key.as_slice()).map_err(db_err)?.map(|v| ObjectEntry::decode(v.value())).transpose()?;
        if !change.condition.allows(held.as_ref()) {
            return Ok(Err(KeyRefused::Precondition));
        }
    }
    let old = match &change.entry {
        Some(entry) => {
            let buckets = txn.open_table(BUCKETS).map_err(db_err)?;
            if buckets.get(change.bucket.as_str()).map_err(db_err)?.is_none() {
                return Ok(Err(KeyRefused::NoSuchBucket));
            }
            objects.insert(key.as_slice(), entry.as_slice()).map_err(db_err)?.map(|v| v.value().to_vec())
        }
        None => objects.remove(key.as_slice()).map_err(db_err)?.map(|v| v.value().to_vec()),
    };
    Ok(Ok(old.and_then(|bytes| match ObjectEntry::decode(&bytes) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!("bucket {}: the entry a key replaced does not decode ({e}); its files stay", change.bucket);
            None
        }
    })))
}

pub struct Embedded {
    dir: PathBuf,
    pub(crate) db: Arc<Database>,
    /// Always Some until drop, which closes the queue and waits for the writer to finish.
    writes: Option<mpsc::SyncSender<WriteOp>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Embedded {
    pub fn open(dir: &Path) -> Result<Embedded, MetaError> {
        std::fs::create_dir_all(dir).map_err(|e| MetaError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("meta.redb");
        let db = Database::create(&path).map_err(|e| MetaError::Db(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(db_err)?;
        let empty = txn.open_table(FILES).map_err(db_err)?.is_empty().map_err(db_err)?;
        {
            let mut schema = txn.open_table(SCHEMA).map_err(db_err)?;
            let version = schema.get(SCHEMA_VERSION_KEY).map_err(db_err)?.map(|v| v.value());
            match version {
                Some(v) if v > SCHEMA_NODES_BY_ID => {
                    return Err(MetaError::NewerSchema { found: v, known: SCHEMA_NODES_BY_ID })
                }
                Some(_) => {}
                None => {
                    let v = if empty { SCHEMA_NODES_BY_ID } else { SCHEMA_NODES_BY_ADDRESS };
                    schema.insert(SCHEMA_VERSION_KEY, v).map_err(db_err)?;
                }
            }
        }
        {
            // A database from before the totals were kept: counted once, here.
            let mut totals = txn.open_table(TOTALS).map_err(db_err)?;
            if totals.get(TOTAL_FILES).map_err(db_err)?.is_none() {
                let files = txn.open_table(FILES).map_err(db_err)?;
                let (mut n_files, mut bytes) = (0u64, 0u64);
                for entry in files.iter().map_err(db_err)? {
                    let (k, v) = entry.map_err(db_err)?;
                    n_files += 1;
                    bytes += FileRecord::decode(FileId(*k.value()), v.value())?.size;
                }
                totals.insert(TOTAL_FILES, n_files).map_err(db_err)?;
                totals.insert(TOTAL_BYTES, bytes).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::sync_channel(MAX_QUEUED_WRITES);
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("meta-writer".into())
            .spawn(move || writer(&writer_db, queue))
            .map_err(|e| MetaError::Db(format!("cannot start writer thread: {e}")))?;
        Ok(Embedded { dir: dir.to_path_buf(), db, writes: Some(writes), writer: Some(writer) })
    }

    pub fn describe(&self) -> String {
        format!("metadata in {}", self.dir.display())
    }

    pub fn get(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(FILES).map_err(db_err)?;
        match table.get(&file_id.0).map_err(db_err)? {
            Some(v) => Ok(Some(FileRecord::decode(file_id, v.value())?)),
            None => Ok(None),
        }
    }

    /// Whole records in ID order after `after`, at most `limit`, and whether more follow.
    pub fn records(&self, after: Option<FileId>, limit: usize) -> Result<(Vec<(FileId, FileRecord)>, bool), MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(FILES).map_err(db_err)?;
        let start = after.map(|a| a.0).unwrap_or([0; 16]);
        let mut out = Vec::new();
        for entry in table.range::<&[u8; 16]>(&start..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let file_id = FileId(*k.value());
            if Some(file_id) == after {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((file_id, FileRecord::decode(file_id, v.value())?));
        }
        Ok((out, false))
    }

    /// Durably records a file. Returns once the transaction holding it has committed.
    pub async fn insert(&self, file_id: FileId, record: FileRecord) -> Result<(), MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Insert(file_id, Box::new(record), tx)).await?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    /// Durably removes a file's record; returns it, or None if there was none.
    pub async fn delete(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::Delete(file_id, tx)).await?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    /// Durably records that a chunk now has its copies on `change.nodes`, in that order, if
    /// its placement is still `change.expected` (compare and set: two repairs deciding from
    /// the same record cannot overwrite each other's placement).
    pub async fn set_placement(&self, change: PlacementChange) -> Result<Placed, MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(WriteOp::SetPlacement(Box::new(change), tx)).await?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    /// Files recorded and their bytes.
    pub fn totals(&self) -> Result<(u64, u64), MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let totals = txn.open_table(TOTALS).map_err(db_err)?;
        let get = |k| Ok::<_, MetaError>(totals.get(k).map_err(db_err)?.map(|v| v.value()).unwrap_or(0));
        Ok((get(TOTAL_FILES)?, get(TOTAL_BYTES)?))
    }

    /// The database's schema version (see the module documentation).
    pub fn schema_version(&self) -> Result<u64, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let schema = txn.open_table(SCHEMA).map_err(db_err)?;
        Ok(schema.get(SCHEMA_VERSION_KEY).map_err(db_err)?.map(|v| v.value()).unwrap_or(SCHEMA_NODES_BY_ADDRESS))
    }

    /// The upgrade to node IDs: gives every record's nodes known only by address the ID that
    /// `nodes` knows for that address, rewriting those records, and moves the schema to
    /// "nodes by ID" once no record is left with an unnamed node. Returns how many records it
    /// rewrote and how many still name a node by address alone (nodes that have not answered
    /// since start-up; the next start names them). Runs before the engine serves, in batches.
    pub fn name_nodes(&self, nodes: &dyn NodeDirectory) -> Result<(u64, u64), MetaError> {
        if self.schema_version()? == SCHEMA_NODES_BY_ID {
            return Ok((0, 0));
        }
        const BATCH: usize = 1024;
        let (mut n_named, mut n_left) = (0u64, 0u64);
        let mut after: Option<[u8; 16]> = None;
        loop {
            let txn = self.db.begin_write().map_err(db_err)?;
            let mut last = None;
            {
                let mut table = txn.open_table(FILES).map_err(db_err)?;
                let mut batch = Vec::with_capacity(BATCH);
                let range = match &after {
                    Some(a) => table.range::<&[u8; 16]>(a..).map_err(db_err)?,
                    None => table.range::<&[u8; 16]>(..).map_err(db_err)?,
                };
                for entry in range {
                    let (k, v) = entry.map_err(db_err)?;
                    let key = *k.value();
                    if Some(key) == after {
                        continue;
                    }
                    if batch.len() == BATCH {
                        break;
                    }
                    batch.push((key, FileRecord::decode(FileId(key), v.value())?));
                }
                for (key, mut record) in batch {
                    last = Some(key);
                    if record.name_nodes(nodes) {
                        table.insert(&key, record.encode().as_slice()).map_err(db_err)?;
                        n_named += 1;
                    }
                    if !record.all_nodes_named() {
                        n_left += 1;
                    }
                }
                if last.is_none() && n_left == 0 {
                    txn.open_table(SCHEMA)
                        .map_err(db_err)?
                        .insert(SCHEMA_VERSION_KEY, SCHEMA_NODES_BY_ID)
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
            match last {
                Some(key) => after = Some(key),
                None => return Ok((n_named, n_left)),
            }
        }
    }

    async fn send(&self, mut op: WriteOp) -> Result<(), MetaError> {
        // A full queue means the disk is behind: wait a little rather than grow without bound.
        loop {
            match self.writes.as_ref().expect("queue open until drop").try_send(op) {
                Ok(()) => return Ok(()),
                Err(mpsc::TrySendError::Full(back)) => {
                    op = back;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(MetaError::WriterGone),
            }
        }
    }
}

/// The writer thread: takes every queued write, applies them in one transaction, commits
/// (fsync), then answers each.
fn writer(db: &Database, queue: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_QUEUED_WRITES {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut deleted: Vec<Option<FileRecord>> = Vec::with_capacity(batch.len());
        let mut placed: Vec<Placed> = Vec::with_capacity(batch.len());
        let mut objects_set: Vec<ObjectSet> = Vec::new();
        let result = (|| -> Result<(), MetaError> {
            let txn = db.begin_write().map_err(db_err)?;
            // What this batch adds to the totals (files, bytes).
            let (mut d_files, mut d_bytes) = (0i64, 0i64);
            {
                let mut table = txn.open_table(FILES).map_err(db_err)?;
                for op in &batch {
                    match op {
                        WriteOp::Insert(id, record, _) => {
                            let existing = table.insert(&id.0, record.encode().as_slice()).map_err(db_err)?;
                            // IDs are 128 random bits: a collision means a bug, not bad luck.
                            assert!(existing.is_none(), "file ID {id} inserted twice");
                            d_files += 1;
                            d_bytes += record.size as i64;
                            deleted.push(None);
                            placed.push(Placed::FileGone);
                        }
                        WriteOp::SetPlacement(change, _) => {
                            deleted.push(None);
                            let id = change.file_id;
                            let old = table.get(&id.0).map_err(db_err)?.map(|v| FileRecord::decode(id, v.value()));
                            let Some(mut record) = old.transpose()? else {
                                placed.push(Placed::FileGone);
                                continue;
                            };
                            let outcome = change.apply(&mut record);
                            if outcome == Placed::Set {
                                table.insert(&id.0, record.encode().as_slice()).map_err(db_err)?;
                            }
                            placed.push(outcome);
                        }
                        WriteOp::Delete(id, _) => {
                            placed.push(Placed::FileGone);
                            let old = table.remove(&id.0).map_err(db_err)?;
                            let old = match old {
                                Some(v) => Some(FileRecord::decode(*id, v.value())?),
                                None => None,
                            };
                            if let Some(r) = &old {
                                d_files -= 1;
                                d_bytes -= r.size as i64;
                            }
                            deleted.push(old);
                        }
                        WriteOp::SetObject(..) => {
                            deleted.push(None);
                            placed.push(Placed::FileGone);
                        }
                    }
                }
            }
            // Key changes after the file records, in their order: a PUT's key is only ever set
            // after its file's record committed, in this batch or an earlier one.
            for op in &batch {
                if let WriteOp::SetObject(change, _) = op {
                    objects_set.push(set_object(&txn, change)?);
                }
            }
            if (d_files, d_bytes) != (0, 0) {
                let mut totals = txn.open_table(TOTALS).map_err(db_err)?;
                for (k, d) in [(TOTAL_FILES, d_files), (TOTAL_BYTES, d_bytes)] {
                    let now = totals.get(k).map_err(db_err)?.map(|v| v.value()).unwrap_or(0);
                    let next = now.checked_add_signed(d);
                    assert!(next.is_some(), "the {k} total would leave its range: {now} {d:+}");
                    totals.insert(k, next.unwrap_or(0)).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })();
        if let Err(e) = &result {
            tracing::error!("metadata commit failed: {e}");
        }
        let mut placed = placed.into_iter().chain(std::iter::repeat(Placed::FileGone));
        let mut objects_set = objects_set.into_iter();
        for (op, old) in batch.into_iter().zip(deleted.into_iter().chain(std::iter::repeat(None))) {
            let placed = placed.next().unwrap_or(Placed::FileGone);
            match op {
                WriteOp::SetPlacement(.., reply) => {
                    let _ = reply.send(result.as_ref().map(|_| placed).map_err(|e| MetaError::Db(e.to_string())));
                }
                WriteOp::Insert(_, _, reply) => {
                    let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| MetaError::Db(e.to_string())));
                }
                WriteOp::Delete(_, reply) => {
                    let _ = reply.send(result.as_ref().map(|_| old).map_err(|e| MetaError::Db(e.to_string())));
                }
                WriteOp::SetObject(_, reply) => {
                    let set = objects_set.next();
                    let _ = reply.send(match &result {
                        Ok(()) => set.ok_or_else(|| MetaError::Db("a key change without its outcome".into())),
                        Err(e) => Err(MetaError::Db(e.to_string())),
                    });
                }
            }
        }
    }
}

/// The `objects` table's key of `key` in `bucket`.
fn object_key(bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

impl Embedded {
    /// Runs `f` in a write transaction of its own on the blocking pool, and commits it (S3's
    /// bucket changes, which are rare: one fsync each, beside the writer thread's group
    /// commits, which carry the key changes).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(db_err)?;
            let out = f(&txn)?;
            txn.commit().map_err(db_err)?;
            Ok(out)
        })
        .await
        .map_err(|e| MetaError::Db(format!("metadata write task failed: {e}")))?
    }

    pub async fn create_bucket(&self, name: String, now: u64) -> Result<bool, MetaError> {
        self.write(move |txn| {
            let mut t = txn.open_table(BUCKETS).map_err(db_err)?;
            if t.get(name.as_str()).map_err(db_err)?.is_some() {
                return Ok(false);
            }
            t.insert(name.as_str(), now).map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    pub fn bucket(&self, name: &str) -> Result<Option<u64>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = match txn.open_table(BUCKETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(t.get(name).map_err(db_err)?.map(|v| v.value()))
    }

    pub fn buckets(&self) -> Result<Vec<(String, u64)>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = match txn.open_table(BUCKETS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    pub async fn delete_bucket(&self, name: String) -> Result<super::objects::BucketDeleted, MetaError> {
        use super::objects::BucketDeleted;
        self.write(move |txn| {
            let mut t = txn.open_table(BUCKETS).map_err(db_err)?;
            if t.get(name.as_str()).map_err(db_err)?.is_none() {
                return Ok(BucketDeleted::NoSuchBucket);
            }
            let objects = txn.open_table(OBJECTS).map_err(db_err)?;
            let from = object_key(&name, b"");
            if let Some(first) = objects.range::<&[u8]>(from.as_slice()..).map_err(db_err)?.next() {
                let (k, _) = first.map_err(db_err)?;
                if k.value().starts_with(&from) {
                    return Ok(BucketDeleted::NotEmpty);
                }
            }
            t.remove(name.as_str()).map_err(db_err)?;
            Ok(BucketDeleted::Deleted)
        })
        .await
    }

    /// Points `key` at `entry` in the writer thread's group commit (many PUTs, one fsync).
    pub async fn put_object(
        &self,
        bucket: String,
        key: Vec<u8>,
        entry: Vec<u8>,
        condition: super::objects::WriteCondition,
    ) -> Result<ObjectSet, MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let change = ObjectChange { bucket, key, entry: Some(entry), condition };
        self.send(WriteOp::SetObject(Box::new(change), tx)).await?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    pub fn object(&self, bucket: &str, key: &[u8]) -> Result<Option<super::objects::ObjectEntry>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = match txn.open_table(OBJECTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let found = t.get(object_key(bucket, key).as_slice()).map_err(db_err)?;
        found.map(|v| super::objects::ObjectEntry::decode(v.value())).transpose()
    }

    /// Removes `key` in the writer thread's group commit; returns the entry it held.
    pub async fn delete_object(
        &self,
        bucket: String,
        key: Vec<u8>,
    ) -> Result<Option<super::objects::ObjectEntry>, MetaError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let change = ObjectChange { bucket, key, entry: None, condition: Default::default() };
        self.send(WriteOp::SetObject(Box::new(change), tx)).await?;
        Ok(rx.await.map_err(|_| MetaError::WriterGone)??.unwrap_or(None))
    }

    pub fn objects(
        &self,
        bucket: &str,
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, super::objects::ObjectEntry)>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = match txn.open_table(OBJECTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let prefix = object_key(bucket, b"");
        let start = object_key(bucket, from);
        let mut out = Vec::new();
        for entry in t.range::<&[u8]>(start.as_slice()..).map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let Some(key) = k.value().strip_prefix(prefix.as_slice()) else { break };
            if out.len() == limit {
                break;
            }
            out.push((key.to_vec(), super::objects::ObjectEntry::decode(v.value())?));
        }
        Ok(out)
    }
}

fn key(c: ChunkId) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&c.file_id.0);
    k[16..].copy_from_slice(&c.chunk_idx.to_be_bytes());
    k
}

fn chunk_of(k: &[u8; 20]) -> ChunkId {
    let mut file_id = [0u8; 16];
    file_id.copy_from_slice(&k[..16]);
    let mut idx = [0u8; 4];
    idx.copy_from_slice(&k[16..]);
    ChunkId { file_id: FileId(file_id), chunk_idx: u32::from_be_bytes(idx) }
}

fn decode(c: ChunkId, bytes: &[u8]) -> Result<Queued, MetaError> {
    postcard::from_bytes(bytes).map_err(|e| MetaError::BadRecord(c.file_id, format!("repair queue entry: {e}")))
}

fn encode(q: &Queued) -> Vec<u8> {
    postcard::to_stdvec(q).expect("a queue entry always encodes")
}

impl Embedded {
    /// Queues each chunk not already queued, to be tried from its time on; a chunk already
    /// queued keeps its entry and is tried no later than the new time. Returns how many
    /// chunks were new. One fsynced transaction.
    pub(crate) fn queue_add(&self, entries: &[(ChunkId, Reason, u64)], now_unix_ms: u64) -> Result<u64, MetaError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut n_new = 0;
        {
            let mut table = txn.open_table(QUEUE).map_err(db_err)?;
            for &(chunk, reason, not_before) in entries {
                let k = key(chunk);
                let existing = table.get(&k).map_err(db_err)?.map(|v| decode(chunk, v.value())).transpose()?;
                let entry = match existing {
                    Some(mut q) => {
                        if q.not_before_unix_ms <= not_before {
                            continue;
                        }
                        q.not_before_unix_ms = not_before;
                        q
                    }
                    None => {
                        n_new += 1;
                        Queued {
                            reason: reason.code(),
                            queued_unix_ms: now_unix_ms,
                            attempts: 0,
                            not_before_unix_ms: not_before,
                        }
                    }
                };
                table.insert(&k, encode(&entry).as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(n_new)
    }

    /// Up to `limit` chunks due at `now_unix_ms`, the longest-waiting first.
    pub(crate) fn queue_due(&self, now_unix_ms: u64, limit: usize) -> Result<Vec<(ChunkId, Queued)>, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(QUEUE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut due = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (k, v) = entry.map_err(db_err)?;
            let chunk = chunk_of(k.value());
            let q = decode(chunk, v.value())?;
            if q.not_before_unix_ms <= now_unix_ms {
                due.push((chunk, q));
            }
        }
        due.sort_by_key(|(c, q)| (q.not_before_unix_ms, *c));
        due.truncate(limit);
        Ok(due)
    }

    /// Forgets the settled chunks and reschedules the others (attempts, next time).
    pub(crate) fn queue_settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), MetaError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(QUEUE).map_err(db_err)?;
            for &c in settled {
                table.remove(&key(c)).map_err(db_err)?;
            }
            for &(c, attempts, not_before) in retry {
                let k = key(c);
                let existing = table.get(&k).map_err(db_err)?.map(|v| decode(c, v.value())).transpose()?;
                let Some(mut q) = existing else { continue };
                q.attempts = attempts;
                q.not_before_unix_ms = not_before;
                table.insert(&k, encode(&q).as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Chunks queued.
    pub(crate) fn queue_len(&self) -> Result<u64, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        match txn.open_table(QUEUE) {
            Ok(t) => t.len().map_err(db_err),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(db_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::*;

    fn chunk(b: u8, idx: u32) -> ChunkId {
        ChunkId { file_id: FileId([b; 16]), chunk_idx: idx }
    }

    fn list(meta: &Embedded, after: Option<FileId>, limit: usize) -> (Vec<FileSummary>, bool) {
        let (records, more) = meta.records(after, limit).unwrap();
        (records.into_iter().map(|(id, r)| r.summary(id)).collect(), more)
    }

    fn slot(id: Option<u8>, addr: &str) -> NodeSlot {
        NodeSlot { id: id.map(|b| [b; 16]), addr: addr.into() }
    }

    /// A node table for tests: (ID byte, address) pairs.
    struct Nodes(Vec<(u8, &'static str)>);

    impl NodeDirectory for Nodes {
        fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
            self.0.iter().find(|(b, _)| [*b; 16] == id.0).map(|(_, a)| a.parse().unwrap())
        }
        fn id_of(&self, addr: SocketAddr) -> Option<NodeId> {
            self.0.iter().find(|(_, a)| a.parse::<SocketAddr>().unwrap() == addr).map(|(b, _)| NodeId([*b; 16]))
        }
    }

    /// `record` as read from a version 1 or 2 record: its node by address only.
    fn unnamed(mut r: FileRecord) -> FileRecord {
        r.nodes.iter_mut().for_each(|s| s.id = None);
        r
    }

    fn record(name: &str) -> FileRecord {
        FileRecord {
            name: name.into(),
            size: 5,
            created_unix_ms: 1,
            chunking: Chunking::Equal,
            nodes: vec![slot(Some(1), "127.0.0.1:1")],
            chunks: vec![ChunkRecord { offset: 0, length: 5, crc32: 9, block_crcs: vec![9], placement: vec![0] }],
            origin: None,
        }
    }

    fn change(file_id: FileId, expected: Vec<NodeSlot>, nodes: Vec<NodeSlot>) -> PlacementChange {
        PlacementChange { file_id, chunk_idx: 0, expected, nodes }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn records_survive_reopen_and_delete_returns_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileId([1; 16]);
        let b = FileId([2; 16]);
        {
            let meta = Embedded::open(dir.path()).unwrap();
            block_on(meta.insert(a, record("a"))).unwrap();
            block_on(meta.insert(b, record("b"))).unwrap();
        }
        let meta = Embedded::open(dir.path()).unwrap();
        assert_eq!(meta.get(a).unwrap(), Some(record("a")));
        let (page, more) = list(&meta, None, 1);
        assert_eq!((page.len(), more), (1, true));
        let (page2, more) = list(&meta, Some(page[0].file_id), 10);
        assert_eq!((page2.len(), more), (1, false));
        assert_eq!(block_on(meta.delete(a)).unwrap(), Some(record("a")));
        assert_eq!(block_on(meta.delete(a)).unwrap(), None);
        assert_eq!(meta.get(a).unwrap(), None);
    }

    #[test]
    fn totals_follow_inserts_and_deletes_and_an_older_database_is_counted_once_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let sized = |name: &str, size| FileRecord { size, ..record(name) };
        {
            let meta = Embedded::open(dir.path()).unwrap();
            assert_eq!(meta.totals().unwrap(), (0, 0));
            block_on(meta.insert(FileId([1; 16]), sized("a", 100))).unwrap();
            block_on(meta.insert(FileId([2; 16]), sized("b", 20))).unwrap();
            block_on(meta.insert(FileId([3; 16]), sized("c", 3))).unwrap();
            assert_eq!(block_on(meta.delete(FileId([2; 16]))).unwrap().map(|r| r.size), Some(20));
            // Deleting what is not there changes nothing.
            assert_eq!(block_on(meta.delete(FileId([2; 16]))).unwrap(), None);
            assert_eq!(meta.totals().unwrap(), (2, 103));
        }
        assert_eq!(Embedded::open(dir.path()).unwrap().totals().unwrap(), (2, 103), "kept across a reopen");
        // A database written before the totals were kept: counted when opened.
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            assert!(txn.delete_table(TOTALS).unwrap());
            txn.commit().unwrap();
        }
        let meta = Embedded::open(dir.path()).unwrap();
        assert_eq!(meta.totals().unwrap(), (2, 103));
        block_on(meta.insert(FileId([4; 16]), sized("d", 7))).unwrap();
        assert_eq!(meta.totals().unwrap(), (3, 110));
    }

    #[test]
    fn set_placement_rewrites_one_chunk_and_skips_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Embedded::open(dir.path()).unwrap();
        let a = FileId([3; 16]);
        block_on(meta.insert(a, record("a"))).unwrap();
        // Node 1 is now at another address; node 2 is new.
        let moved = vec![slot(Some(2), "127.0.0.1:2"), slot(Some(1), "127.0.0.1:5")];
        let was = vec![slot(Some(1), "127.0.0.1:1")];
        assert_eq!(block_on(meta.set_placement(change(a, was.clone(), moved.clone()))).unwrap(), Placed::Set);
        let got = meta.get(a).unwrap().unwrap();
        assert_eq!(got.nodes, [slot(Some(1), "127.0.0.1:5"), slot(Some(2), "127.0.0.1:2")]);
        assert_eq!(got.chunks[0].placement, [1, 0]);
        // A second decision made from the old placement does not overwrite the first.
        let other = vec![slot(Some(3), "127.0.0.1:3")];
        assert_eq!(block_on(meta.set_placement(change(a, was, other.clone()))).unwrap(), Placed::Changed);
        assert_eq!(meta.get(a).unwrap().unwrap().chunks[0].placement, [1, 0]);
        block_on(meta.delete(a)).unwrap();
        assert_eq!(block_on(meta.set_placement(change(a, moved, other))).unwrap(), Placed::FileGone);
        assert_eq!(meta.get(a).unwrap(), None);
    }

    /// The bytes the engine wrote for `record("a")` before record version 2, pinned so that a
    /// change to the version 1 layout fails here instead of on an operator's database.
    const V1_RECORD_A: &[u8] = &[
        1, // version
        1, b'a', // name
        5,    // size
        1,    // created_unix_ms
        0,    // chunking: Equal
        1, 11, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', b':', b'1', // nodes
        1, 0, 5, 9, 1, 9, 1, 0, // one chunk: offset, length, crc32, block crcs, placement
    ];

    fn insert_raw(dir: &Path, id: FileId, bytes: &[u8]) {
        let db = Database::create(dir.join("meta.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(FILES).unwrap().insert(&id.0, bytes).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn version_1_records_still_read_and_are_rewritten_in_the_current_version_with_no_origin() {
        let v1 = FileRecordV1 {
            name: "a".into(),
            size: 5,
            created_unix_ms: 1,
            chunking: Chunking::Equal,
            nodes: vec!["127.0.0.1:1".into()],
            chunks: record("a").chunks,
        };
        assert_eq!([&[RECORD_VERSION_1][..], &postcard::to_stdvec(&v1).unwrap()].concat(), V1_RECORD_A);

        let dir = tempfile::tempdir().unwrap();
        let id = FileId([4; 16]);
        insert_raw(dir.path(), id, V1_RECORD_A);
        let meta = Embedded::open(dir.path()).unwrap();
        assert_eq!(meta.get(id).unwrap(), Some(unnamed(record("a"))));
        assert_eq!(list(&meta, None, 10).0[0].origin, None);
        // A placement change rewrites the record in the current version; nothing is lost.
        let was = vec![slot(None, "127.0.0.1:1")];
        assert_eq!(
            block_on(meta.set_placement(change(id, was, vec![slot(Some(2), "127.0.0.1:2")]))).unwrap(),
            Placed::Set
        );
        let txn = meta.db.begin_read().unwrap();
        let stored = txn.open_table(FILES).unwrap().get(&id.0).unwrap().unwrap().value().to_vec();
        assert_eq!(stored[0], RECORD_VERSION);
        let got = meta.get(id).unwrap().unwrap();
        assert_eq!((got.name.as_str(), got.origin, got.chunks[0].placement.as_slice()), ("a", None, &[1u16][..]));
    }

    fn insert_v2(dir: &Path, id: FileId, addrs: &[&str]) {
        let v2 = FileRecordV2 {
            name: "old".into(),
            size: 5,
            created_unix_ms: 1,
            chunking: Chunking::Equal,
            nodes: addrs.iter().map(|a| a.to_string()).collect(),
            chunks: vec![ChunkRecord {
                offset: 0,
                length: 5,
                crc32: 9,
                block_crcs: vec![9],
                placement: (0..addrs.len() as u16).collect(),
            }],
            origin: None,
        };
        insert_raw(dir, id, &[&[RECORD_VERSION_2][..], &postcard::to_stdvec(&v2).unwrap()].concat());
    }

    #[test]
    fn records_by_address_are_named_once_their_nodes_answer_and_then_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (FileId([10; 16]), FileId([11; 16]));
        insert_v2(dir.path(), a, &["127.0.0.1:1", "127.0.0.1:2"]);
        insert_v2(dir.path(), b, &["127.0.0.1:2"]);
        let meta = Embedded::open(dir.path()).unwrap();
        assert_eq!(meta.schema_version().unwrap(), SCHEMA_NODES_BY_ADDRESS);
        // Only the node at :2 has answered: b is named whole, a in part.
        assert_eq!(meta.name_nodes(&Nodes(vec![(2, "127.0.0.1:2")])).unwrap(), (2, 1));
        assert_eq!(meta.schema_version().unwrap(), SCHEMA_NODES_BY_ADDRESS);
        assert_eq!(meta.get(b).unwrap().unwrap().nodes, [slot(Some(2), "127.0.0.1:2")]);
        // Now both answer: a is named, the schema moves on, and the next run has nothing to do.
        let both = Nodes(vec![(1, "127.0.0.1:1"), (2, "127.0.0.1:2")]);
        assert_eq!(meta.name_nodes(&both).unwrap(), (1, 0));
        assert_eq!(meta.schema_version().unwrap(), SCHEMA_NODES_BY_ID);
        assert_eq!(meta.name_nodes(&both).unwrap(), (0, 0));
        let got = meta.get(a).unwrap().unwrap();
        assert_eq!(got.nodes, [slot(Some(1), "127.0.0.1:1"), slot(Some(2), "127.0.0.1:2")]);
        // Node 1 moves: its copies are found at its new address, by its ID.
        let moved = Nodes(vec![(1, "127.0.0.1:7"), (2, "127.0.0.1:2")]);
        let addrs = got.copy_addrs(&got.chunks[0], &moved).unwrap();
        assert_eq!(addrs, ["127.0.0.1:7".parse().unwrap(), "127.0.0.1:2".parse().unwrap()]);
        assert_eq!(got.info(a, &moved).nodes[0], FileNode { id: Some(NodeId([1; 16])), addr: "127.0.0.1:7".into() });
        // A node no one has seen since start-up is looked for where it last was.
        let addrs = got.copy_addrs(&got.chunks[0], &Nodes(vec![])).unwrap();
        assert_eq!(addrs, ["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()]);
    }

    #[test]
    fn a_new_database_names_nodes_by_id_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Embedded::open(dir.path()).unwrap().schema_version().unwrap(), SCHEMA_NODES_BY_ID);
        {
            let db = Database::create(dir.path().join("meta.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(SCHEMA).unwrap().insert(SCHEMA_VERSION_KEY, SCHEMA_NODES_BY_ID + 1).unwrap();
            txn.commit().unwrap();
        }
        let err = Embedded::open(dir.path()).err().expect("refused").to_string();
        assert!(err.contains("schema version 3, newer than this engine's 2"), "{err}");
    }

    #[test]
    fn the_origin_survives_reopen_and_shows_in_stat_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let id = FileId([6; 16]);
        let tagged = FileRecord { origin: Some([0xab; 16]), ..record("t") };
        {
            let meta = Embedded::open(dir.path()).unwrap();
            block_on(meta.insert(id, tagged.clone())).unwrap();
        }
        let meta = Embedded::open(dir.path()).unwrap();
        let got = meta.get(id).unwrap().unwrap();
        assert_eq!(got, tagged);
        assert_eq!(got.info(id, &Nodes(vec![])).origin, Some(Origin([0xab; 16])));
        assert_eq!(list(&meta, None, 10).0[0].origin, Some(Origin([0xab; 16])));
    }

    #[test]
    fn unknown_and_empty_records_are_errors_not_panics() {
        let id = FileId([8; 16]);
        for (bytes, why) in [(&[][..], "empty"), (&[4, 0][..], "version 4"), (&V1_RECORD_A[..5], "")] {
            let err = FileRecord::decode(id, bytes).expect_err("must be refused").to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_queued_chunk_is_due_from_its_time_and_kept_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Embedded::open(dir.path()).unwrap();
        assert_eq!(meta.queue_len().unwrap(), 0);
        assert!(meta.queue_due(u64::MAX, 10).unwrap().is_empty(), "no table yet, nothing due");
        let n = meta.queue_add(&[(chunk(1, 0), Reason::ReadFailed, 100), (chunk(2, 3), Reason::NodeDown, 50)], 10);
        assert_eq!(n.unwrap(), 2);
        // Queued again, later: the entry stays as it was; earlier: it moves up.
        assert_eq!(meta.queue_add(&[(chunk(1, 0), Reason::NodeDown, 500)], 20).unwrap(), 0);
        assert_eq!(meta.queue_add(&[(chunk(1, 0), Reason::NodeDown, 40)], 20).unwrap(), 0);
        let due = meta.queue_due(60, 10).unwrap();
        assert_eq!(due.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [chunk(1, 0), chunk(2, 3)]);
        assert_eq!(due[0].1.reason(), Some(Reason::ReadFailed), "the first reason stays");
        assert!(meta.queue_due(30, 10).unwrap().is_empty());
        meta.queue_settle(&[chunk(1, 0)], &[(chunk(2, 3), 1, 1000)]).unwrap();
        assert_eq!(meta.queue_len().unwrap(), 1);
        assert!(meta.queue_due(999, 10).unwrap().is_empty());
        let due = meta.queue_due(1000, 10).unwrap();
        assert_eq!((due[0].0, due[0].1.attempts), (chunk(2, 3), 1));
        drop(meta);
        let meta = Embedded::open(dir.path()).unwrap();
        assert_eq!(meta.queue_len().unwrap(), 1, "the queue survives a restart");
    }
}
