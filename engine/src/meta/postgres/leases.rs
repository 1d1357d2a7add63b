//! Registrations and leases: this engine in `dfs_engines` (renewed by a heartbeat, replaced if it
//! lapses), the uploads it has under way in `dfs_uploads` (file IDs reserved in batches), and the
//! cluster-wide passes in `dfs_leases`, each held by one engine at a time and renewed while held.

use super::*;

/// File IDs registered ahead of need in one round trip, so that an upload seldom waits for its
/// registration.
const RESERVE_BATCH: usize = 256;

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

/// Registers this engine under `epoch` for one lease.
pub(super) async fn register(pool: &Pool, engine: &Engine, epoch: [u8; 16]) -> Result<(), MetaError> {
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
pub(super) async fn heartbeat(pool: Pool, engine: Arc<Engine>) {
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

impl Postgres {
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
            return Ok(Ok(PassLease::new(Some(held))));
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
        Ok(Ok(PassLease::new(Some(held))))
    }
}
