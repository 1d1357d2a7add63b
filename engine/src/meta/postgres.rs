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

use super::{FileRecord, MetaError, Placed, PlacementChange, Queued};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use dfs_core::repair::Reason;
use dfs_proto::{ChunkId, FileId};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The newest schema this engine knows.
const SCHEMA_VERSION: i64 = 1;

/// Each migration's statements, every one safe to run twice (two engines may start at once).
const MIGRATIONS: &[(i64, &[&str])] = &[(
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
)];

/// The database's clock, in Unix milliseconds.
pub(crate) const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::INT8";

/// Connections to PostgreSQL the engine keeps at most.
const MAX_CONNECTIONS: usize = 8;
/// Longest wait for a connection, or for one statement, before the request fails with an error
/// naming the database.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Inserts committed together at most.
const MAX_BATCH: usize = 1024;

/// What PostgreSQL needs beyond its URL.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// File holding the password (its first line), so it never appears in a command line.
    pub password_file: Option<PathBuf>,
}

struct Insert {
    file_id: FileId,
    record: FileRecord,
    reply: oneshot::Sender<Result<(), MetaError>>,
}

pub struct Postgres {
    rt: tokio::runtime::Handle,
    pool: Pool,
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
        let store = Postgres { rt: handle, pool, inserts, describe, stop: Some(stop), thread: Some(thread) };
        let pool = store.pool.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        store.rt.spawn(async move {
            let _ = tx.send(migrate(&pool).await);
        });
        rx.recv().map_err(|_| MetaError::Db("PostgreSQL: migration task vanished".into()))??;
        store.rt.spawn(writer(store.pool.clone(), queue));
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
    pub async fn insert(&self, file_id: FileId, record: FileRecord) -> Result<(), MetaError> {
        let (reply, rx) = oneshot::channel();
        self.inserts.send(Insert { file_id, record, reply }).await.map_err(|_| MetaError::WriterGone)?;
        rx.await.map_err(|_| MetaError::WriterGone)?
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

    pub async fn queue_len(&self) -> Result<u64, MetaError> {
        self.run("counting the repair queue", move |c| async move {
            let row =
                c.query_one("SELECT count(*) FROM dfs_repair_queue", &[]).await.map_err(pg_err("repair queue"))?;
            Ok(u64_of(row.get(0)))
        })
        .await
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
        if let Err(e) = &result {
            tracing::error!("metadata commit failed: {e}");
        }
        for op in batch {
            let _ = op.reply.send(result.as_ref().map(|_| ()).map_err(|e| MetaError::Db(e.to_string())));
        }
    }
}

async fn insert_batch(pool: &Pool, batch: &[Insert]) -> Result<(), MetaError> {
    let c = pool.get().await.map_err(pool_err)?;
    let e = pg_err("commit");
    let stmt = c
        .prepare_cached(
            "INSERT INTO dfs_files (file_id, version, size, created_unix_ms, record) \
             SELECT file_id, 1, size, created, record \
             FROM unnest($1::BYTEA[], $2::INT8[], $3::INT8[], $4::BYTEA[]) AS n(file_id, size, created, record)",
        )
        .await
        .map_err(&e)?;
    let ids: Vec<&[u8]> = batch.iter().map(|i| &i.file_id.0[..]).collect();
    let sizes: Vec<i64> = batch.iter().map(|i| i64_of(i.record.size)).collect();
    let created: Vec<i64> = batch.iter().map(|i| i64_of(i.record.created_unix_ms)).collect();
    let records: Vec<Vec<u8>> = batch.iter().map(|i| i.record.encode()).collect();
    let n = c.execute(&stmt, &[&ids, &sizes, &created, &records]).await.map_err(&e)?;
    // IDs are 128 random bits: a row missing means a bug, not bad luck (a duplicate fails the
    // whole statement on its primary key instead).
    assert_eq!(n as usize, batch.len(), "a batch insert wrote {n} of {} rows", batch.len());
    Ok(())
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
        let (c, _) = config("postgres://dfs@h/db", &PostgresOptions { password_file: Some(pw) }).unwrap();
        assert_eq!(c.get_password(), Some(&b"hunter2"[..]));
    }
}
