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
//!
//! This file holds the connection pool, the records and their placements (compare and set on
//! `version`); the rest lies beside it: `schema` (migrations), `writer` (the group-committing
//! insert of new files), `leases` (engine registrations, uploads under way, cluster-wide
//! passes), `queue` (the repair queue) and `objects` (S3's buckets and keys).

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

mod leases;
mod objects;
mod queue;
mod schema;
mod tls;
mod writer;

use leases::{heartbeat, register};
pub(crate) use leases::{Done, Held};
use schema::migrate;
use writer::{writer, Insert, MAX_BATCH};

/// The database's clock, in Unix milliseconds.
pub(crate) const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::INT8";

/// Connections to PostgreSQL the engine keeps at most.
const MAX_CONNECTIONS: usize = 8;
/// Longest wait for a connection, or for one statement, before the request fails with an error
/// naming the database.
const TIMEOUT: Duration = Duration::from_secs(10);

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
fn config(url: &str, opts: &PostgresOptions) -> Result<(tokio_postgres::Config, String, tls::PgTls), MetaError> {
    let bad = |why: String| MetaError::Config(format!("--meta: {why}"));
    let (url, tls) = tls::split_url(url)?;
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("not a PostgreSQL URL: {e}")))?;
    if config.get_password().is_some() {
        return Err(bad("the URL holds a password; put it in --meta-password-file instead".into()));
    }
    // A string in libpq's key=value form keeps tokio-postgres's reading of sslmode (none of
    // its modes checks certificates).
    let tls = tls.unwrap_or(match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => tls::PgTls::Off,
        tokio_postgres::config::SslMode::Require => tls::PgTls::Unverified { required: true },
        _ => tls::PgTls::Unverified { required: false },
    });
    config.ssl_mode(tls.ssl_mode());
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
    Ok((config, describe, tls))
}

impl Postgres {
    /// Connects, runs the migrations this database lacks, and starts the writer.
    pub fn open(url: &str, opts: &PostgresOptions) -> Result<Postgres, MetaError> {
        let (config, describe, tls) = config(url, opts)?;
        let connector = tls::connector(&tls)?;
        if tls == tls::PgTls::Off {
            tracing::info!("PostgreSQL {describe}: no TLS");
        } else if matches!(tls, tls::PgTls::Unverified { .. }) {
            tracing::warn!(
                "PostgreSQL {describe}: {}; add sslmode=verify-full&sslrootcert=FILE to know it is the database",
                tls.describe()
            );
        } else {
            tracing::info!("PostgreSQL {describe}: {}", tls.describe());
        }
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
        let manager =
            Manager::from_config(config, connector, ManagerConfig { recycling_method: RecyclingMethod::Fast });
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
}

fn random_id() -> Result<[u8; 16], MetaError> {
    let mut id = [0u8; 16];
    getrandom::getrandom(&mut id).map_err(|e| MetaError::Db(format!("cannot draw a random ID: {e}")))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_any_connection() {
        let opts = PostgresOptions::default();
        let (_, d, tls) = config("postgres://dfs@127.0.0.1:5433/meta", &opts).unwrap();
        assert_eq!((d.as_str(), tls), ("dfs@127.0.0.1:5433/meta", tls::PgTls::Off));
        let err = config("postgres://dfs:secret@127.0.0.1/meta", &opts).err().unwrap().to_string();
        assert!(err.contains("holds a password") && !err.contains("secret"), "{err}");
        let (c, _, tls) = config("postgres://dfs@127.0.0.1/meta?sslmode=require", &opts).unwrap();
        assert_eq!(tls, tls::PgTls::Unverified { required: true });
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let (c, _, _) =
            config("postgres://dfs@h/db", &PostgresOptions { password_file: Some(pw), ..Default::default() }).unwrap();
        assert_eq!(c.get_password(), Some(&b"hunter2"[..]));
    }
}
