//! The PostgreSQL metadata backend (`--meta postgres://USER@HOST:PORT/DB`): the same records
//! and repair queue as the embedded database, in tables that any number of engines share.
//!
//! Tables (all named `dfs_*`, so that they can live beside others in one database):
//! - `dfs_schema`: one row per migration applied; an engine refuses a database newer than it.
//! - `dfs_files`: one row per file, its record's bytes (the embedded backend's format) with a
//!   `version` that every change bumps, so a placement is changed by compare and set.
//! - `dfs_repair_queue`: one row per queued chunk.
//! - `dfs_engines`, `dfs_uploads`, `dfs_leases`: which engines are alive, the uploads they
//!   have in progress, and who holds each cluster-wide pass (see [`Postgres::hold_lease`]).
//! - `dfs_buckets`, `dfs_objects` (schema version 2): S3's buckets and the keys in them.
//!
//! Every query runs on one thread of its own ("meta-pg", a Tokio runtime that also drives the
//! connections), so that the engine's io_uring threads only await a reply. Inserts of new files
//! queue for one writer task that commits whatever has queued up in one statement (group
//! commit): a put at concurrency 32 pays one database round trip shared with the others.
//!
//! The SQL keeps to what CockroachDB and YugabyteDB also accept (plain tables, `BYTEA`, `INT8`,
//! `TEXT`, `INSERT ... ON CONFLICT`, `unnest` of several arrays, no stored procedures, no
//! advisory locks); times are the database's own clock in Unix milliseconds, so that engines'
//! clocks need not agree.

use super::{
    ClusterView, EngineView, FileRecord, MetaError, Pass, PassHeld, PassLease, PassView, Placed, PlacementChange,
    Queued, Writer,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use dfs_core::repair::Reason;
use dfs_proto::{ChunkId, FileId};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The newest schema this engine knows.
const SCHEMA_VERSION: i64 = 2;

/// Each migration's statements, every one safe to run twice (two engines may start at once).
const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS dfs_files (
            file_id BYTEA PRIMARY KEY,
            version INT8 NOT NULL,
            size INT8 NOT NULL,
            created_unix_ms INT8 NOT NULL,
            record BYTEA NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dfs_repair_queue (
            file_id BYTEA NOT NULL,
            chunk_idx INT8 NOT NULL,
            reason INT8 NOT NULL,
            queued_unix_ms INT8 NOT NULL,
            attempts INT8 NOT NULL,
            not_before_unix_ms INT8 NOT NULL,
            PRIMARY KEY (file_id, chunk_idx))",
            "CREATE INDEX IF NOT EXISTS dfs_repair_queue_due ON dfs_repair_queue (not_before_unix_ms)",
            "CREATE TABLE IF NOT EXISTS dfs_engines (
            engine_id BYTEA PRIMARY KEY,
            addr TEXT NOT NULL,
            started_unix_ms INT8 NOT NULL,
            expires_unix_ms INT8 NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dfs_uploads (
            file_id BYTEA NOT NULL,
            engine_id BYTEA NOT NULL,
            registered_unix_ms INT8 NOT NULL,
            PRIMARY KEY (file_id, engine_id))",
            "CREATE TABLE IF NOT EXISTS dfs_leases (
            name TEXT PRIMARY KEY,
            holder BYTEA NOT NULL,
            expires_unix_ms INT8 NOT NULL)",
        ],
    ),
    (
        // S3: buckets, and each bucket's keys (as bytes, so that they sort as S3 lists them) with
        // the entry the embedded backend keeps too.
        2,
        &[
            "CREATE TABLE IF NOT EXISTS dfs_buckets (
            name TEXT PRIMARY KEY,
            created_unix_ms INT8 NOT NULL)",
            "CREATE TABLE IF NOT EXISTS dfs_objects (
            bucket TEXT NOT NULL,
            key BYTEA NOT NULL,
            entry BYTEA NOT NULL,
            PRIMARY KEY (bucket, key))",
        ],
    ),
];

/// The database's clock, in Unix milliseconds.
pub(crate) const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::INT8";

/// Connections to PostgreSQL the engine keeps at most.
const MAX_CONNECTIONS: usize = 8;
/// Longest wait for a connection, or for one statement, before the request fails with an error
/// naming the database.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Inserts committed together at most.
const MAX_BATCH: usize = 1024;

/// File IDs registered ahead of need in one round trip, so that an upload seldom waits for its
/// registration.
const RESERVE_BATCH: usize = 256;

/// What PostgreSQL needs beyond its URL.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// File holding the password (its first line), so it never appears in a command line.
    pub password_file: Option<PathBuf>,
    /// How long an engine's registration, and a pass it holds, outlive its last renewal: after
    /// an engine dies, others collect its leftovers and take over its passes this much later.
    pub lease: Duration,
    /// The engine's client address, shown to the others (`dfs_engines.addr`).
    pub engine_addr: String,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions { password_file: None, lease: Duration::from_secs(15), engine_addr: String::new() }
    }
}

struct Insert {
    file_id: FileId,
    /// The registration the upload ran under: the commit is refused if it lapsed.
    epoch: [u8; 16],
    record: FileRecord,
    reply: oneshot::Sender<Result<(), MetaError>>,
}

/// Writers that have finished, whose `dfs_uploads` rows the heartbeat removes.
#[derive(Default)]
pub(crate) struct Done(Mutex<Vec<(FileId, [u8; 16])>>);

impl Done {
    pub(crate) fn push(&self, file_id: FileId, epoch: [u8; 16]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((file_id, epoch));
    }

    fn take(&self) -> Vec<(FileId, [u8; 16])> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A pass this engine holds, shared by its holders on this engine; renewed by a task until the
/// last holder drops it, then released.
pub(crate) struct Held {
    pass: Pass,
    holder: [u8; 16],
    lost: Arc<AtomicBool>,
    renew: tokio::task::AbortHandle,
    pool: Pool,
    rt: tokio::runtime::Handle,
}

impl Held {
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renew.abort();
        let (pool, name, holder) = (self.pool.clone(), self.pass.name(), self.holder);
        self.rt.spawn(async move {
            let Ok(c) = pool.get().await else { return };
            let _ = c.execute("DELETE FROM dfs_leases WHERE name = $1 AND holder = $2", &[&name, &&holder[..]]).await;
            tracing::info!("released the cluster's {name} pass");
        });
    }
}

/// This engine in `dfs_engines`, and what hangs off its registration.
struct Engine {
    /// The current registration: a random ID, replaced if the registration lapses.
    epoch: Mutex<[u8; 16]>,
    /// File IDs registered for uploads to come, with the registration they are under.
    reserved: tokio::sync::Mutex<Vec<(FileId, [u8; 16])>>,
    done: Arc<Done>,
    held: Mutex<HashMap<Pass, Weak<Held>>>,
    /// Taken while a pass is being taken, so that two takers on this engine share one lease
    /// (two would each renew it, and the first to finish would release the other's).
    taking: tokio::sync::Mutex<()>,
    lease_ms: i64,
    addr: String,
}

impl Engine {
    fn epoch(&self) -> [u8; 16] {
        *self.epoch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Postgres {
    rt: tokio::runtime::Handle,
    pool: Pool,
    engine: Arc<Engine>,
    inserts: mpsc::Sender<Insert>,
    /// `user@host:port/db`, for the log.
    describe: String,
    /// Dropped to stop the runtime thread.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> MetaError + '_ {
    move |e| {
        // The server's own message (e.g. "password authentication failed") is in the source.
        let detail = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(inner) = src {
                    s = format!("{s}: {inner}");
                    src = inner.source();
                }
                s
            }
        };
        MetaError::Db(format!("PostgreSQL: {what}: {detail}"))
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> MetaError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_err("connecting")(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            MetaError::Db(format!("PostgreSQL: no connection within {} s", TIMEOUT.as_secs()))
        }
        other => MetaError::Db(format!("PostgreSQL: {other}")),
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn file_id_of(bytes: &[u8]) -> Result<FileId, MetaError> {
    let id: [u8; 16] =
        bytes.try_into().map_err(|_| MetaError::Db(format!("PostgreSQL: a file ID of {} bytes", bytes.len())))?;
    Ok(FileId(id))
}

/// The connection settings from `url` and the options, checked before any connection.
fn config(url: &str, opts: &PostgresOptions) -> Result<(tokio_postgres::Config, String), MetaError> {
    let bad = |why: String| MetaError::Config(format!("--meta: {why}"));
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("not a PostgreSQL URL: {e}")))?;
    if config.get_password().is_some() {
        return Err(bad("the URL holds a password; put it in --meta-password-file instead".into()));
    }
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(bad("sslmode=require: this engine connects to PostgreSQL without TLS (use a local socket \
                        or a tunnel, or sslmode=disable)"
            .into()));
    }
    if let Some(path) = &opts.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read --meta-password-file {}: {e}", path.display())))?;
        let password = text.lines().next().unwrap_or("").to_string();
        if password.is_empty() {
            return Err(bad(format!("--meta-password-file {} is empty", path.display())));
        }
        config.password(password);
    }
    config.connect_timeout(TIMEOUT);
    config.application_name("dfs-engine");
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let describe = format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().or(config.get_user()).unwrap_or("?")
    );
    Ok((config, describe))
}

impl Postgres {
    /// Connects, runs the migrations this database lacks, and starts the writer.
    pub fn open(url: &str, opts: &PostgresOptions) -> Result<Postgres, MetaError> {
        let (config, describe) = config(url, opts)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MetaError::Db(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("meta-pg".into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })
            .map_err(|e| MetaError::Db(format!("cannot start the PostgreSQL thread: {e}")))?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = {
            let _enter = handle.enter();
            Pool::builder(manager)
                .max_size(MAX_CONNECTIONS)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(TIMEOUT))
                .create_timeout(Some(TIMEOUT))
                .recycle_timeout(Some(TIMEOUT))
                .build()
                .map_err(|e| MetaError::Db(format!("PostgreSQL pool: {e}")))?
        };
        let (inserts, queue) = mpsc::channel(MAX_BATCH);
        let engine = Arc::new(Engine {
            epoch: Mutex::new(random_id()?),
            reserved: Default::default(),
            done: Default::default(),
            held: Default::default(),
            taking: Default::default(),
            lease_ms: opts.lease.as_millis().try_into().unwrap_or(i64::MAX),
            addr: opts.engine_addr.clone(),
        });
        let store = Postgres { rt: handle, pool, engine, inserts, describe, stop: Some(stop), thread: Some(thread) };
        let (pool, engine) = (store.pool.clone(), store.engine.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        store.rt.spawn(async move {
            let result = match migrate(&pool).await {
                Ok(()) => register(&pool, &engine, engine.epoch()).await,
                Err(e) => Err(e),
            };
            let _ = tx.send(result);
        });
        rx.recv().map_err(|_| MetaError::Db("PostgreSQL: start-up task vanished".into()))??;
        store.rt.spawn(writer(store.pool.clone(), queue));
        store.rt.spawn(heartbeat(store.pool.clone(), store.engine.clone()));
        Ok(store)
    }

    pub fn describe(&self) -> String {
        format!("metadata in PostgreSQL at {}", self.describe)
    }

    /// Runs `f` with a pooled connection on the PostgreSQL thread, within [`TIMEOUT`].
    async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, MetaError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, MetaError>> + Send,
    {
        let pool = self.pool.clone();
        let task = self.rt.spawn(async move {
            let client = pool.get().await.map_err(pool_err)?;
            match tokio::time::timeout(TIMEOUT, f(client)).await {
                Ok(r) => r,
                Err(_) => Err(MetaError::Db(format!("PostgreSQL: {what}: no answer within {} s", TIMEOUT.as_secs()))),
            }
        });
        task.await.map_err(|e| MetaError::Db(format!("PostgreSQL: {what}: task failed: {e}")))?
    }

    pub async fn get(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        self.run("reading a file record", move |c| async move {
            let stmt =
                c.prepare_cached("SELECT record FROM dfs_files WHERE file_id = $1").await.map_err(pg_err("get"))?;
            let row = c.query_opt(&stmt, &[&&file_id.0[..]]).await.map_err(pg_err("get"))?;
            row.map(|r| FileRecord::decode(file_id, r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    pub async fn records(
        &self,
        after: Option<FileId>,
        limit: usize,
    ) -> Result<(Vec<(FileId, FileRecord)>, bool), MetaError> {
        self.run("listing files", move |c| async move {
            let stmt = c
                .prepare_cached("SELECT file_id, record FROM dfs_files WHERE file_id > $1 ORDER BY file_id LIMIT $2")
                .await
                .map_err(pg_err("list"))?;
            let after: &[u8] = after.as_ref().map(|a| &a.0[..]).unwrap_or(&[]);
            let rows = c.query(&stmt, &[&after, &i64_of(limit as u64 + 1)]).await.map_err(pg_err("list"))?;
            let more = rows.len() > limit;
            let mut out = Vec::with_capacity(rows.len().min(limit));
            for row in rows.iter().take(limit) {
                let file_id = file_id_of(row.get(0))?;
                out.push((file_id, FileRecord::decode(file_id, row.get::<_, &[u8]>(1))?));
            }
            Ok((out, more))
        })
        .await
    }

    /// Queues the insert for the writer task; returns once its batch has committed.
    pub async fn insert(&self, writer: &Writer, record: FileRecord) -> Result<(), MetaError> {
        let epoch = writer.epoch.expect("a PostgreSQL upload is registered under an engine registration");
        let (reply, rx) = oneshot::channel();
        let insert = Insert { file_id: writer.file_id, epoch, record, reply };
        self.inserts.send(insert).await.map_err(|_| MetaError::WriterGone)?;
        rx.await.map_err(|_| MetaError::WriterGone)?
    }

    pub async fn create_bucket(&self, name: String, now: u64) -> Result<bool, MetaError> {
        self.run("creating a bucket", move |c| async move {
            let n = c
                .execute(
                    "INSERT INTO dfs_buckets (name, created_unix_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &i64_of(now)],
                )
                .await
                .map_err(pg_err("creating a bucket"))?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn bucket(&self, name: String) -> Result<Option<u64>, MetaError> {
        self.run("reading a bucket", move |c| async move {
            let row = c
                .query_opt("SELECT created_unix_ms FROM dfs_buckets WHERE name = $1", &[&name])
                .await
                .map_err(pg_err("reading a bucket"))?;
            Ok(row.map(|r| r.get::<_, i64>(0) as u64))
        })
        .await
    }

    pub async fn buckets(&self) -> Result<Vec<(String, u64)>, MetaError> {
        self.run("listing buckets", move |c| async move {
            let rows = c
                .query("SELECT name, created_unix_ms FROM dfs_buckets ORDER BY name", &[])
                .await
                .map_err(pg_err("listing buckets"))?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
        })
        .await
    }

    /// Deletes the bucket only if no key is in it, in one statement.
    pub async fn delete_bucket(&self, name: String) -> Result<super::objects::BucketDeleted, MetaError> {
        use super::objects::BucketDeleted;
        self.run("deleting a bucket", move |c| async move {
            let e = pg_err("deleting a bucket");
            let n = c
                .execute(
                    "DELETE FROM dfs_buckets b WHERE b.name = $1 \
                     AND NOT EXISTS (SELECT 1 FROM dfs_objects o WHERE o.bucket = $1)",
                    &[&name],
                )
                .await
                .map_err(&e)?;
            if n == 1 {
                return Ok(BucketDeleted::Deleted);
            }
            let exists = c.query_opt("SELECT 1 FROM dfs_buckets WHERE name = $1", &[&name]).await.map_err(&e)?;
            Ok(if exists.is_some() { BucketDeleted::NotEmpty } else { BucketDeleted::NoSuchBucket })
        })
        .await
    }

    /// Sets the key's entry and returns the one it replaced, in one transaction (the old row is
    /// locked while it is read).
    pub async fn put_object(
        &self,
        bucket: String,
        key: Vec<u8>,
        entry: Vec<u8>,
        condition: super::objects::WriteCondition,
    ) -> Result<Result<Option<super::objects::ObjectEntry>, super::objects::KeyRefused>, MetaError> {
        use super::objects::{KeyRefused, ObjectEntry};
        self.run("recording an object", move |mut c| async move {
            let e = pg_err("recording an object");
            let txn = c.transaction().await.map_err(&e)?;
            if txn
                .query_opt("SELECT 1 FROM dfs_buckets WHERE name = $1 FOR SHARE", &[&bucket])
                .await
                .map_err(&e)?
                .is_none()
            {
                return Ok(Err(KeyRefused::NoSuchBucket));
            }
            // The row is locked from here to the commit: a condition checked on it holds when
            // the new entry is written. A key with no row yet is claimed by the INSERT below,
            // whose conflict with a concurrent first write fails one of them.
            let old = txn
                .query_opt("SELECT entry FROM dfs_objects WHERE bucket = $1 AND key = $2 FOR UPDATE", &[&bucket, &key])
                .await
                .map_err(&e)?;
            let old = old.map(|r| ObjectEntry::decode(r.get::<_, &[u8]>(0))).transpose()?;
            if !condition.allows(old.as_ref()) {
                return Ok(Err(KeyRefused::Precondition));
            }
            let written = if old.is_none() && condition.if_none_match.is_some() {
                // Must not exist: a row inserted meanwhile by another engine makes this write
                // lose, not overwrite it.
                txn.execute(
                    "INSERT INTO dfs_objects (bucket, key, entry) VALUES ($1, $2, $3) ON CONFLICT (bucket, key) DO NOTHING",
                    &[&bucket, &key, &entry],
                )
                .await
                .map_err(&e)?
            } else {
                txn.execute(
                    "INSERT INTO dfs_objects (bucket, key, entry) VALUES ($1, $2, $3) \
                     ON CONFLICT (bucket, key) DO UPDATE SET entry = excluded.entry",
                    &[&bucket, &key, &entry],
                )
                .await
                .map_err(&e)?
            };
            if written == 0 {
                return Ok(Err(KeyRefused::Precondition));
            }
            txn.commit().await.map_err(&e)?;
            Ok(Ok(old))
        })
        .await
    }

    pub async fn object(&self, bucket: String, key: Vec<u8>) -> Result<Option<super::objects::ObjectEntry>, MetaError> {
        self.run("reading an object", move |c| async move {
            let row = c
                .query_opt("SELECT entry FROM dfs_objects WHERE bucket = $1 AND key = $2", &[&bucket, &key])
                .await
                .map_err(pg_err("reading an object"))?;
            row.map(|r| super::objects::ObjectEntry::decode(r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    pub async fn delete_object(
        &self,
        bucket: String,
        key: Vec<u8>,
    ) -> Result<Option<super::objects::ObjectEntry>, MetaError> {
        self.run("deleting an object", move |c| async move {
            let row = c
                .query_opt("DELETE FROM dfs_objects WHERE bucket = $1 AND key = $2 RETURNING entry", &[&bucket, &key])
                .await
                .map_err(pg_err("deleting an object"))?;
            row.map(|r| super::objects::ObjectEntry::decode(r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    pub async fn objects(
        &self,
        bucket: String,
        from: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, super::objects::ObjectEntry)>, MetaError> {
        self.run("listing objects", move |c| async move {
            let rows = c
                .query(
                    "SELECT key, entry FROM dfs_objects WHERE bucket = $1 AND key >= $2 ORDER BY key LIMIT $3",
                    &[&bucket, &from, &i64_of(limit as u64)],
                )
                .await
                .map_err(pg_err("listing objects"))?;
            rows.iter()
                .map(|r| Ok((r.get::<_, Vec<u8>>(0), super::objects::ObjectEntry::decode(r.get::<_, &[u8]>(1))?)))
                .collect()
        })
        .await
    }

    /// See [`super::MetaStore::settle_failed_insert`]: deletes the upload's registration row,
    /// which the insert claims in its own statement, then reads the record.
    pub async fn settle_failed_insert(&self, writer: &Writer) -> Result<Option<FileRecord>, MetaError> {
        let epoch = writer.epoch.expect("a PostgreSQL upload is registered under an engine registration");
        let file_id = writer.file_id;
        self.run("settling a failed commit", move |c| async move {
            let e = pg_err("settling a failed commit");
            c.execute("DELETE FROM dfs_uploads WHERE file_id = $1 AND engine_id = $2", &[&&file_id.0[..], &&epoch[..]])
                .await
                .map_err(&e)?;
            let row =
                c.query_opt("SELECT record FROM dfs_files WHERE file_id = $1", &[&&file_id.0[..]]).await.map_err(&e)?;
            row.map(|r| FileRecord::decode(file_id, r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    /// A file ID registered for an upload: from the IDs registered ahead of need, registering
    /// a batch more when none is left.
    pub async fn new_upload(&self) -> Result<Writer, MetaError> {
        let engine = self.engine.clone();
        let mut reserved = engine.reserved.lock().await;
        let epoch = engine.epoch();
        // IDs under a registration that lapsed protect nothing.
        reserved.retain(|(_, e)| *e == epoch);
        if reserved.is_empty() {
            let ids = (0..RESERVE_BATCH).map(|_| random_id().map(FileId)).collect::<Result<Vec<_>, _>>()?;
            let rows = ids.clone();
            self.run("registering uploads", move |c| async move {
                let ids: Vec<&[u8]> = rows.iter().map(|f| &f.0[..]).collect();
                c.execute(
                    &format!(
                        "INSERT INTO dfs_uploads (file_id, engine_id, registered_unix_ms) \
                         SELECT f, $2, {DB_NOW_MS} FROM unnest($1::BYTEA[]) AS n(f)"
                    ),
                    &[&ids, &&epoch[..]],
                )
                .await
                .map_err(pg_err("registering uploads"))?;
                Ok(())
            })
            .await?;
            reserved.extend(ids.into_iter().map(|f| (f, epoch)));
        }
        let (file_id, epoch) = reserved.pop().expect("refilled above");
        Ok(Writer { file_id, epoch: Some(epoch), done: Some(self.engine.done.clone()) })
    }

    /// Registers this engine as writing new copies of `file_id`'s chunks.
    pub async fn register_writer(&self, file_id: FileId) -> Result<Writer, MetaError> {
        let epoch = self.engine.epoch();
        self.run("registering a writer", move |c| async move {
            c.execute(
                &format!(
                    "INSERT INTO dfs_uploads (file_id, engine_id, registered_unix_ms) VALUES ($1, $2, {DB_NOW_MS}) \
                     ON CONFLICT (file_id, engine_id) DO NOTHING"
                ),
                &[&&file_id.0[..], &&epoch[..]],
            )
            .await
            .map_err(pg_err("registering a writer"))?;
            Ok(())
        })
        .await?;
        Ok(Writer { file_id, epoch: Some(epoch), done: Some(self.engine.done.clone()) })
    }

    /// Whether an engine whose registration is alive (this one or another) registered a
    /// writer of `file_id` that has not finished.
    pub async fn writing_elsewhere(&self, file_id: FileId) -> Result<bool, MetaError> {
        self.run("looking up writers", move |c| async move {
            let row = c
                .query_opt(
                    &format!(
                        "SELECT 1 FROM dfs_uploads u JOIN dfs_engines e ON e.engine_id = u.engine_id \
                         WHERE u.file_id = $1 AND e.expires_unix_ms > {DB_NOW_MS} LIMIT 1"
                    ),
                    &[&&file_id.0[..]],
                )
                .await
                .map_err(pg_err("looking up writers"))?;
            Ok(row.is_some())
        })
        .await
    }

    /// Takes `pass` for this engine (or joins this engine's hold of it), or names the engine
    /// that holds it.
    pub async fn take_pass(&self, pass: Pass) -> Result<Result<PassLease, PassHeld>, MetaError> {
        let _taking = self.engine.taking.lock().await;
        let mine = self.engine.held.lock().unwrap_or_else(|e| e.into_inner()).get(&pass).and_then(Weak::upgrade);
        if let Some(held) = mine.filter(|h| !h.lost()) {
            return Ok(Ok(PassLease::new(pass, Some(held))));
        }
        let (name, holder, lease_ms) = (pass.name(), self.engine.epoch(), self.engine.lease_ms);
        let taken = self
            .run("taking a pass", move |c| async move {
                let e = pg_err("taking a pass");
                let won = c
                    .query_opt(
                        &format!(
                            "INSERT INTO dfs_leases (name, holder, expires_unix_ms) VALUES ($1, $2, {DB_NOW_MS} + $3) \
                             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                             expires_unix_ms = excluded.expires_unix_ms \
                             WHERE dfs_leases.expires_unix_ms <= {DB_NOW_MS} OR dfs_leases.holder = excluded.holder \
                             RETURNING holder"
                        ),
                        &[&name, &&holder[..], &lease_ms],
                    )
                    .await
                    .map_err(&e)?;
                if won.is_some() {
                    return Ok(Ok(()));
                }
                let row = c
                    .query_opt(
                        "SELECT e.addr FROM dfs_leases l LEFT JOIN dfs_engines e ON e.engine_id = l.holder \
                         WHERE l.name = $1",
                        &[&name],
                    )
                    .await
                    .map_err(&e)?;
                let addr: Option<String> = row.and_then(|r| r.get(0));
                Ok(Err(addr
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "an engine that has not said its address".into())))
            })
            .await?;
        if let Err(holder) = taken {
            return Ok(Err(PassHeld { pass, holder }));
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renew = self.rt.spawn(renew(self.pool.clone(), name, holder, lease_ms, lost.clone())).abort_handle();
        let held = Arc::new(Held { pass, holder, lost, renew, pool: self.pool.clone(), rt: self.rt.clone() });
        self.engine.held.lock().unwrap_or_else(|e| e.into_inner()).insert(pass, Arc::downgrade(&held));
        tracing::info!("took the cluster's {name} pass");
        Ok(Ok(PassLease::new(pass, Some(held))))
    }

    pub async fn delete(&self, file_id: FileId) -> Result<Option<FileRecord>, MetaError> {
        self.run("deleting a file record", move |c| async move {
            let stmt = c
                .prepare_cached("DELETE FROM dfs_files WHERE file_id = $1 RETURNING record")
                .await
                .map_err(pg_err("delete"))?;
            let row = c.query_opt(&stmt, &[&&file_id.0[..]]).await.map_err(pg_err("delete"))?;
            row.map(|r| FileRecord::decode(file_id, r.get::<_, &[u8]>(0))).transpose()
        })
        .await
    }

    /// Compare and set on the row's version: read, decide, write only over what was read;
    /// when another engine changed the row meanwhile, decide again from the new record.
    pub async fn set_placement(&self, change: PlacementChange) -> Result<Placed, MetaError> {
        self.run("changing a placement", move |c| async move {
            let read = c
                .prepare_cached("SELECT version, record FROM dfs_files WHERE file_id = $1")
                .await
                .map_err(pg_err("placement"))?;
            let write = c
                .prepare_cached(
                    "UPDATE dfs_files SET version = version + 1, record = $3 WHERE file_id = $1 AND version = $2",
                )
                .await
                .map_err(pg_err("placement"))?;
            let id = change.file_id;
            loop {
                let Some(row) = c.query_opt(&read, &[&&id.0[..]]).await.map_err(pg_err("placement"))? else {
                    return Ok(Placed::FileGone);
                };
                let version: i64 = row.get(0);
                let mut record = FileRecord::decode(id, row.get::<_, &[u8]>(1))?;
                let placed = change.apply(&mut record);
                if placed != Placed::Set {
                    return Ok(placed);
                }
                let n =
                    c.execute(&write, &[&&id.0[..], &version, &record.encode()]).await.map_err(pg_err("placement"))?;
                if n == 1 {
                    return Ok(Placed::Set);
                }
            }
        })
        .await
    }

    pub async fn queue_add(&self, entries: &[(ChunkId, Reason, u64)], now_unix_ms: u64) -> Result<u64, MetaError> {
        let entries = entries.to_vec();
        self.run("queueing chunks for repair", move |mut c| async move {
            let e = pg_err("repair queue");
            let txn = c.transaction().await.map_err(&e)?;
            let ids: Vec<&[u8]> = entries.iter().map(|(c, ..)| &c.file_id.0[..]).collect();
            let idxs: Vec<i64> = entries.iter().map(|(c, ..)| c.chunk_idx as i64).collect();
            let existing: std::collections::HashSet<(Vec<u8>, i64)> = txn
                .query(
                    "SELECT q.file_id, q.chunk_idx FROM dfs_repair_queue q \
                     JOIN unnest($1::BYTEA[], $2::INT8[]) AS n(file_id, chunk_idx) \
                     ON q.file_id = n.file_id AND q.chunk_idx = n.chunk_idx",
                    &[&ids, &idxs],
                )
                .await
                .map_err(&e)?
                .iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1)))
                .collect();
            let reasons: Vec<i64> = entries.iter().map(|(_, r, _)| r.code() as i64).collect();
            let not_before: Vec<i64> = entries.iter().map(|(.., t)| i64_of(*t)).collect();
            txn.execute(
                "INSERT INTO dfs_repair_queue (file_id, chunk_idx, reason, queued_unix_ms, attempts, not_before_unix_ms) \
                 SELECT file_id, chunk_idx, reason, $5, 0, not_before \
                 FROM unnest($1::BYTEA[], $2::INT8[], $3::INT8[], $4::INT8[]) AS n(file_id, chunk_idx, reason, not_before) \
                 ON CONFLICT (file_id, chunk_idx) DO UPDATE SET not_before_unix_ms = \
                 LEAST(dfs_repair_queue.not_before_unix_ms, excluded.not_before_unix_ms)",
                &[&ids, &idxs, &reasons, &not_before, &i64_of(now_unix_ms)],
            )
            .await
            .map_err(&e)?;
            txn.commit().await.map_err(&e)?;
            let mut new: std::collections::HashSet<(&[u8], i64)> = std::collections::HashSet::new();
            for (id, idx) in ids.iter().zip(&idxs) {
                if !existing.contains(&(id.to_vec(), *idx)) {
                    new.insert((id, *idx));
                }
            }
            Ok(new.len() as u64)
        })
        .await
    }

    pub async fn queue_due(&self, now_unix_ms: u64, limit: usize) -> Result<Vec<(ChunkId, Queued)>, MetaError> {
        self.run("reading the repair queue", move |c| async move {
            let rows = c
                .query(
                    "SELECT file_id, chunk_idx, reason, queued_unix_ms, attempts, not_before_unix_ms \
                     FROM dfs_repair_queue WHERE not_before_unix_ms <= $1 \
                     ORDER BY not_before_unix_ms, file_id, chunk_idx LIMIT $2",
                    &[&i64_of(now_unix_ms), &i64_of(limit as u64)],
                )
                .await
                .map_err(pg_err("repair queue"))?;
            rows.iter()
                .map(|r| {
                    let chunk = ChunkId { file_id: file_id_of(r.get(0))?, chunk_idx: r.get::<_, i64>(1) as u32 };
                    let q = Queued {
                        reason: r.get::<_, i64>(2) as u8,
                        queued_unix_ms: u64_of(r.get(3)),
                        attempts: r.get::<_, i64>(4) as u32,
                        not_before_unix_ms: u64_of(r.get(5)),
                    };
                    Ok((chunk, q))
                })
                .collect()
        })
        .await
    }

    pub async fn queue_settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), MetaError> {
        let settled = settled.to_vec();
        let retry = retry.to_vec();
        self.run("settling the repair queue", move |mut c| async move {
            let e = pg_err("repair queue");
            let txn = c.transaction().await.map_err(&e)?;
            let ids: Vec<&[u8]> = settled.iter().map(|c| &c.file_id.0[..]).collect();
            let idxs: Vec<i64> = settled.iter().map(|c| c.chunk_idx as i64).collect();
            txn.execute(
                "DELETE FROM dfs_repair_queue q USING unnest($1::BYTEA[], $2::INT8[]) AS n(file_id, chunk_idx) \
                 WHERE q.file_id = n.file_id AND q.chunk_idx = n.chunk_idx",
                &[&ids, &idxs],
            )
            .await
            .map_err(&e)?;
            let ids: Vec<&[u8]> = retry.iter().map(|(c, ..)| &c.file_id.0[..]).collect();
            let idxs: Vec<i64> = retry.iter().map(|(c, ..)| c.chunk_idx as i64).collect();
            let attempts: Vec<i64> = retry.iter().map(|(_, a, _)| *a as i64).collect();
            let not_before: Vec<i64> = retry.iter().map(|(.., t)| i64_of(*t)).collect();
            txn.execute(
                "UPDATE dfs_repair_queue q SET attempts = n.attempts, not_before_unix_ms = n.not_before \
                 FROM unnest($1::BYTEA[], $2::INT8[], $3::INT8[], $4::INT8[]) AS n(file_id, chunk_idx, attempts, not_before) \
                 WHERE q.file_id = n.file_id AND q.chunk_idx = n.chunk_idx",
                &[&ids, &idxs, &attempts, &not_before],
            )
            .await
            .map_err(&e)?;
            txn.commit().await.map_err(&e)
        })
        .await
    }

    pub async fn totals(&self) -> Result<(u64, u64), MetaError> {
        self.run("counting files", move |c| async move {
            let row = c
                .query_one("SELECT count(*), coalesce(sum(size), 0)::INT8 FROM dfs_files", &[])
                .await
                .map_err(pg_err("counting files"))?;
            Ok((u64_of(row.get(0)), u64_of(row.get(1))))
        })
        .await
    }

    /// The engines whose registration is alive, and the passes whose lease is.
    pub async fn cluster_view(&self) -> Result<ClusterView, MetaError> {
        let me = self.engine.epoch();
        self.run("listing engines and passes", move |c| async move {
            let e = pg_err("listing engines and passes");
            let engines = c
                .query(
                    &format!(
                        "SELECT addr, started_unix_ms, expires_unix_ms - {DB_NOW_MS}, engine_id = $1 FROM dfs_engines \
                         WHERE expires_unix_ms > {DB_NOW_MS} ORDER BY started_unix_ms, addr"
                    ),
                    &[&&me[..]],
                )
                .await
                .map_err(&e)?
                .iter()
                .map(|r| EngineView {
                    addr: r.get(0),
                    started_unix_ms: u64_of(r.get(1)),
                    lease_left_ms: Some(r.get(2)),
                    this: r.get(3),
                })
                .collect();
            let passes = c
                .query(
                    &format!(
                        "SELECT l.name, coalesce(e.addr, ''), l.expires_unix_ms - {DB_NOW_MS}, l.holder = $1 \
                         FROM dfs_leases l LEFT JOIN dfs_engines e ON e.engine_id = l.holder \
                         WHERE l.expires_unix_ms > {DB_NOW_MS} ORDER BY l.name"
                    ),
                    &[&&me[..]],
                )
                .await
                .map_err(&e)?
                .iter()
                .map(|r| PassView {
                    pass: r.get(0),
                    holder: r.get(1),
                    lease_left_ms: Some(r.get(2)),
                    this: r.get(3),
                    since_unix_ms: None,
                })
                .collect();
            Ok(ClusterView { engines, passes })
        })
        .await
    }

    pub async fn queue_len(&self) -> Result<u64, MetaError> {
        self.run("counting the repair queue", move |c| async move {
            let row =
                c.query_one("SELECT count(*) FROM dfs_repair_queue", &[]).await.map_err(pg_err("repair queue"))?;
            Ok(u64_of(row.get(0)))
        })
        .await
    }
}

fn random_id() -> Result<[u8; 16], MetaError> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(|e| MetaError::Db(format!("cannot draw a random ID: {e}")))?;
    Ok(id)
}

/// Registers this engine under `epoch` for one lease.
async fn register(pool: &Pool, engine: &Engine, epoch: [u8; 16]) -> Result<(), MetaError> {
    let c = pool.get().await.map_err(pool_err)?;
    c.execute(
        &format!(
            "INSERT INTO dfs_engines (engine_id, addr, started_unix_ms, expires_unix_ms) \
             VALUES ($1, $2, {DB_NOW_MS}, {DB_NOW_MS} + $3)"
        ),
        &[&&epoch[..], &engine.addr, &engine.lease_ms],
    )
    .await
    .map_err(pg_err("registering the engine"))?;
    Ok(())
}

/// Every third of a lease: renews this engine's registration (never one that lapsed: then it
/// registers anew, and uploads under the old one fail at commit), removes the rows of writers
/// that finished, and forgets engines gone for a day.
async fn heartbeat(pool: Pool, engine: Arc<Engine>) {
    let every = Duration::from_millis((engine.lease_ms / 3).max(100) as u64);
    let mut failing = false;
    let mut beats = 0u64;
    loop {
        tokio::time::sleep(every).await;
        beats += 1;
        let result = async {
            let c = pool.get().await.map_err(pool_err)?;
            let e = pg_err("renewing the engine's registration");
            let epoch = engine.epoch();
            let n = c
                .execute(
                    &format!(
                        "UPDATE dfs_engines SET expires_unix_ms = {DB_NOW_MS} + $2 \
                         WHERE engine_id = $1 AND expires_unix_ms > {DB_NOW_MS}"
                    ),
                    &[&&epoch[..], &engine.lease_ms],
                )
                .await
                .map_err(&e)?;
            if n == 0 {
                let fresh = random_id()?;
                drop(c);
                register(&pool, &engine, fresh).await?;
                *engine.epoch.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::warn!(
                    "this engine's registration in PostgreSQL lapsed (no renewal within {} ms): registered anew; \
                     uploads that began before fail at their commit, and passes it held are given up",
                    engine.lease_ms
                );
                return Ok(());
            }
            let done = engine.done.take();
            if !done.is_empty() {
                let ids: Vec<&[u8]> = done.iter().map(|(f, _)| &f.0[..]).collect();
                let epochs: Vec<&[u8]> = done.iter().map(|(_, e)| &e[..]).collect();
                let removed = c
                    .execute(
                        "DELETE FROM dfs_uploads u USING unnest($1::BYTEA[], $2::BYTEA[]) AS n(file_id, engine_id) \
                         WHERE u.file_id = n.file_id AND u.engine_id = n.engine_id",
                        &[&ids, &epochs],
                    )
                    .await;
                if let Err(err) = removed {
                    done.iter().for_each(|(f, e)| engine.done.push(*f, *e));
                    return Err(pg_err("removing finished uploads")(err));
                }
            }
            if beats % 100 == 1 {
                let day = 86_400_000i64;
                c.execute(
                    &format!(
                        "DELETE FROM dfs_uploads WHERE engine_id IN \
                         (SELECT engine_id FROM dfs_engines WHERE expires_unix_ms < {DB_NOW_MS} - $1)"
                    ),
                    &[&day],
                )
                .await
                .map_err(&e)?;
                c.execute(&format!("DELETE FROM dfs_engines WHERE expires_unix_ms < {DB_NOW_MS} - $1"), &[&day])
                    .await
                    .map_err(&e)?;
            }
            Ok::<_, MetaError>(())
        }
        .await;
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("PostgreSQL reachable again: engine registration renewed");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("{e} (trying again every {every:?})");
            }
            Err(_) => {}
        }
    }
}

/// Renews a pass every third of its lease; sets `lost` when a renewal finds it gone or fails
/// for longer than the lease.
async fn renew(pool: Pool, name: &'static str, holder: [u8; 16], lease_ms: i64, lost: Arc<AtomicBool>) {
    let every = Duration::from_millis((lease_ms / 3).max(100) as u64);
    let mut last_renewed = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let result = async {
            let c = pool.get().await.map_err(pool_err)?;
            c.execute(
                &format!(
                    "UPDATE dfs_leases SET expires_unix_ms = {DB_NOW_MS} + $3 \
                     WHERE name = $1 AND holder = $2 AND expires_unix_ms > {DB_NOW_MS}"
                ),
                &[&name, &&holder[..], &lease_ms],
            )
            .await
            .map_err(pg_err("renewing a pass"))
        }
        .await;
        match result {
            Ok(1) => last_renewed = std::time::Instant::now(),
            Ok(_) => {
                tracing::warn!("the cluster's {name} pass was lost (its lease lapsed): stopping it");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) if last_renewed.elapsed().as_millis() as i64 >= lease_ms => {
                tracing::warn!("the cluster's {name} pass could not be renewed for a whole lease ({e}): stopping it");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(_) => {}
        }
    }
}

/// Brings the database to [`SCHEMA_VERSION`]; refuses one that is newer.
async fn migrate(pool: &Pool) -> Result<(), MetaError> {
    let c = pool.get().await.map_err(pool_err)?;
    let e = pg_err("migrating the schema");
    // Two engines starting at once may race on the same CREATE: the loser tries again and
    // finds the work done.
    let mut tries = 0;
    loop {
        tries += 1;
        let result = async {
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS dfs_schema (version INT8 PRIMARY KEY, applied_unix_ms INT8 NOT NULL)",
            )
            .await?;
            let current: Option<i64> = c.query_one("SELECT max(version) FROM dfs_schema", &[]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(current.unwrap_or(0))
        }
        .await;
        let current = match result {
            Ok(v) => v,
            Err(err) if tries < 3 && err.as_db_error().is_some() => continue,
            Err(err) => return Err(e(err)),
        };
        if current > SCHEMA_VERSION {
            return Err(MetaError::NewerSchema { found: current as u64, known: SCHEMA_VERSION as u64 });
        }
        let mut failed = None;
        for (version, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            for sql in *statements {
                if let Err(err) = c.batch_execute(sql).await {
                    failed = Some(err);
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
            let insert = format!(
                "INSERT INTO dfs_schema (version, applied_unix_ms) VALUES ($1, {DB_NOW_MS}) ON CONFLICT (version) DO NOTHING"
            );
            if let Err(err) = c.execute(&insert, &[version]).await {
                failed = Some(err);
                break;
            }
            tracing::info!("PostgreSQL metadata: schema migrated to version {version}");
        }
        match failed {
            None => return Ok(()),
            Some(err) if tries < 3 && err.as_db_error().is_some() => continue,
            Some(err) => return Err(e(err)),
        }
    }
}

/// The writer task: takes every queued insert, commits them in one statement, answers each.
async fn writer(pool: Pool, mut queue: mpsc::Receiver<Insert>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let result = match tokio::time::timeout(TIMEOUT, insert_batch(&pool, &batch)).await {
            Ok(r) => r,
            Err(_) => Err(MetaError::Db(format!("PostgreSQL: commit: no answer within {} s", TIMEOUT.as_secs()))),
        };
        match result {
            Ok(each) => {
                for (op, r) in batch.into_iter().zip(each) {
                    let _ = op.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!("metadata commit failed: {e}");
                for op in batch {
                    let _ = op.reply.send(Err(MetaError::Db(e.to_string())));
                }
            }
        }
    }
}

/// Commits a batch in one statement; per insert, Ok, or why it was refused (its engine
/// registration lapsed, or its upload's registration row is gone). Err: the statement failed or
/// its answer did not come; it may still commit later unless
/// [`Postgres::settle_failed_insert`] takes its registration row away first.
///
/// Each record is inserted only by claiming (deleting) its upload's `dfs_uploads` row in the
/// same statement: whoever deletes that row first, this statement or the settling after a
/// failed commit, decides whether the record can ever exist.
async fn insert_batch(pool: &Pool, batch: &[Insert]) -> Result<Vec<Result<(), MetaError>>, MetaError> {
    let c = pool.get().await.map_err(pool_err)?;
    let e = pg_err("commit");
    let stmt = c
        .prepare_cached(&format!(
            "WITH n AS (SELECT * FROM unnest($1::BYTEA[], $2::INT8[], $3::INT8[], $4::BYTEA[], $5::BYTEA[]) \
                 AS n(file_id, size, created, record, engine_id)), \
             claimed AS (DELETE FROM dfs_uploads u USING n, dfs_engines e \
                 WHERE u.file_id = n.file_id AND u.engine_id = n.engine_id \
                 AND e.engine_id = n.engine_id AND e.expires_unix_ms > {DB_NOW_MS} \
                 RETURNING u.file_id) \
             INSERT INTO dfs_files (file_id, version, size, created_unix_ms, record) \
                 SELECT n.file_id, 1, n.size, n.created, n.record FROM n JOIN claimed ON claimed.file_id = n.file_id \
                 RETURNING file_id"
        ))
        .await
        .map_err(&e)?;
    let ids: Vec<&[u8]> = batch.iter().map(|i| &i.file_id.0[..]).collect();
    let sizes: Vec<i64> = batch.iter().map(|i| i64_of(i.record.size)).collect();
    let created: Vec<i64> = batch.iter().map(|i| i64_of(i.record.created_unix_ms)).collect();
    let records: Vec<Vec<u8>> = batch.iter().map(|i| i.record.encode()).collect();
    let epochs: Vec<&[u8]> = batch.iter().map(|i| &i.epoch[..]).collect();
    let rows = c.query(&stmt, &[&ids, &sizes, &created, &records, &epochs]).await.map_err(&e)?;
    let written: std::collections::HashSet<&[u8]> = rows.iter().map(|r| r.get::<_, &[u8]>(0)).collect();
    Ok(batch
        .iter()
        .map(|i| {
            if written.contains(&i.file_id.0[..]) {
                Ok(())
            } else {
                Err(MetaError::Db(
                    "not recorded: this engine's registration in PostgreSQL lapsed while the upload ran (so gc on \
                     another engine may have collected its copies), or the upload's registration is gone; upload it \
                     again"
                        .into(),
                ))
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_any_connection() {
        let opts = PostgresOptions::default();
        let (_, d) = config("postgres://dfs@127.0.0.1:5433/meta", &opts).unwrap();
        assert_eq!(d, "dfs@127.0.0.1:5433/meta");
        let err = config("postgres://dfs:secret@127.0.0.1/meta", &opts).err().unwrap().to_string();
        assert!(err.contains("holds a password") && !err.contains("secret"), "{err}");
        let err = config("postgres://dfs@127.0.0.1/meta?sslmode=require", &opts).err().unwrap().to_string();
        assert!(err.contains("sslmode=require"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let (c, _) =
            config("postgres://dfs@h/db", &PostgresOptions { password_file: Some(pw), ..Default::default() }).unwrap();
        assert_eq!(c.get_password(), Some(&b"hunter2"[..]));
    }
}
