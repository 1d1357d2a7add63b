//! Who may do what: an upload's registration ([`Writer`]), the cluster-wide passes one engine at a
//! time runs ([`Pass`], [`PassLease`]), the passes running on this engine, and the engines and
//! passes the status page shows.

use super::*;

/// An upload's or a repair's registration as a writer of a file's chunks, so that gc on any
/// engine keeps off the copies it writes before the metadata points at them. In the embedded
/// backend, the engine's own memory ([`crate::state::Uploads`]) is enough; in PostgreSQL it is
/// a row of `dfs_uploads` under this engine's registration, removed once this is dropped.
pub struct Writer {
    pub file_id: FileId,
    /// The engine registration the row is under (PostgreSQL only).
    pub(crate) epoch: Option<[u8; 16]>,
    pub(crate) done: Option<std::sync::Arc<postgres::Done>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let (Some(epoch), Some(done)) = (self.epoch, &self.done) {
            done.push(self.file_id, epoch);
        }
    }
}

/// A cluster-wide pass that one engine at a time may run (`repair`, `gc`, `scrub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    Repair,
    Gc,
    Scrub,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::Repair => "repair",
            Pass::Gc => "gc",
            Pass::Scrub => "scrub",
        }
    }
}

/// Another engine holds a [`Pass`]: which one, by the address it said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the engine at {holder} is running the cluster's {} pass", pass.name())]
pub struct PassHeld {
    pub pass: Pass,
    pub holder: String,
}

/// Why a cluster-wide pass could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("a {} pass is already running; try again when it has finished", .0.name())]
    AlreadyRunning(Pass),
    #[error("{0}; try again when it has finished")]
    Held(PassHeld),
    #[error("cannot take the {} pass: {source}", pass.name())]
    CannotTake { pass: Pass, source: MetaError },
    #[error("the {} pass was lost (its lease lapsed), and another engine may have taken it over: stopped", .0.name())]
    Lost(Pass),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl PassError {
    /// Takes `pass` for this engine, or says why it cannot run now.
    pub async fn take(meta: &MetaStore, here: &RunningPasses, pass: Pass) -> Result<PassLease, PassError> {
        match meta.take_pass(here, pass).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(held)) => Err(PassError::Held(held)),
            Err(source) => Err(PassError::CannotTake { pass, source }),
        }
    }
}

/// Holds a [`Pass`] for this engine while it lives (several holders on one engine share one
/// lease). In PostgreSQL it is a row of `dfs_leases`, renewed in the background and released
/// when the last holder drops it; [`PassLease::lost`] says when renewing failed (another engine
/// may have taken over), and the pass stops at its next step.
pub struct PassLease {
    pub(crate) held: Option<std::sync::Arc<postgres::Held>>,
    /// Counts the pass as running on this engine; set by [`MetaStore::take_pass`].
    here: Option<RunningHere>,
}

impl PassLease {
    pub(crate) fn new(held: Option<std::sync::Arc<postgres::Held>>) -> PassLease {
        PassLease { held, here: None }
    }

    pub fn lost(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.lost())
    }
}

/// The passes running on an engine: how many hold each, and since when (part of the engine's
/// state; the status page shows them).
#[derive(Default, Clone)]
pub struct RunningPasses(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Pass, (usize, u64)>>>);

impl RunningPasses {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Pass, (usize, u64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `pass` as running here while the result lives.
    fn enter(&self, pass: Pass) -> RunningHere {
        self.lock().entry(pass).or_insert((0, dfs_runtime::unix_ms())).0 += 1;
        RunningHere(self.clone(), pass)
    }

    /// The passes running, by name, with the time the first holder took each.
    fn running(&self) -> Vec<(Pass, u64)> {
        let mut v: Vec<(Pass, u64)> = self.lock().iter().map(|(p, (_, since))| (*p, *since)).collect();
        v.sort_by_key(|(p, _)| p.name());
        v
    }
}

/// Counts a pass as running on its engine while it lives.
struct RunningHere(RunningPasses, Pass);

impl Drop for RunningHere {
    fn drop(&mut self) {
        let mut here = self.0.lock();
        if let std::collections::hash_map::Entry::Occupied(mut e) = here.entry(self.1) {
            e.get_mut().0 -= 1;
            if e.get().0 == 0 {
                e.remove();
            }
        }
    }
}

/// An engine working on this metadata, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineView {
    pub addr: String,
    /// Whether it is the engine answering.
    pub this: bool,
    pub started_unix_ms: u64,
    /// How long its registration lasts unless renewed (PostgreSQL only).
    pub lease_left_ms: Option<i64>,
}

/// A cluster-wide pass held, and by which engine. The repair queue holds `repair` for as long
/// as its engine runs the queue; gc and scrub hold theirs while they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassView {
    pub pass: String,
    /// The address of the engine running it.
    pub holder: String,
    pub this: bool,
    /// When it started, known for this engine's passes only.
    pub since_unix_ms: Option<u64>,
    /// How long its lease lasts unless renewed (PostgreSQL only).
    pub lease_left_ms: Option<i64>,
}

/// The engines sharing the metadata and the passes they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub engines: Vec<EngineView>,
    pub passes: Vec<PassView>,
}

impl MetaStore {
    /// A new file ID for an upload, registered as being written.
    pub async fn new_upload(&self) -> Result<Writer, MetaError> {
        match self {
            MetaStore::Embedded(_) => {
                let file_id = FileId::random().map_err(|e| MetaError::Db(format!("cannot draw a file ID: {e}")))?;
                Ok(Writer { file_id, epoch: None, done: None })
            }
            MetaStore::Postgres(p) => p.new_upload().await,
        }
    }

    /// Registers a writer of new copies of an existing file's chunks (repair).
    pub async fn register_writer(&self, file_id: FileId) -> Result<Writer, MetaError> {
        match self {
            MetaStore::Embedded(_) => Ok(Writer { file_id, epoch: None, done: None }),
            MetaStore::Postgres(p) => p.register_writer(file_id).await,
        }
    }

    /// Whether another engine registered a writer of this file that is still alive (always
    /// false for the embedded backend, which has no other engine).
    pub async fn writing_elsewhere(&self, file_id: FileId) -> Result<bool, MetaError> {
        match self {
            MetaStore::Embedded(_) => Ok(false),
            MetaStore::Postgres(p) => p.writing_elsewhere(file_id).await,
        }
    }

    /// Takes `pass` for this engine, or says which engine holds it. The embedded backend has
    /// no other engine: always this one.
    pub async fn take_pass(&self, here: &RunningPasses, pass: Pass) -> Result<Result<PassLease, PassHeld>, MetaError> {
        let taken = match self {
            MetaStore::Embedded(_) => Ok(PassLease::new(None)),
            MetaStore::Postgres(p) => p.take_pass(pass).await?,
        };
        Ok(taken.map(|mut lease| {
            lease.here = Some(here.enter(pass));
            lease
        }))
    }

    /// The engines working on this metadata and the passes they run. With the embedded
    /// database that is this engine (at `this_addr`, started at `started_unix_ms`) alone.
    pub async fn cluster_view(
        &self,
        running: &RunningPasses,
        this_addr: &str,
        started_unix_ms: u64,
    ) -> Result<ClusterView, MetaError> {
        let here = running.running();
        let since = |name: &str| here.iter().find(|(p, _)| p.name() == name).map(|(_, s)| *s);
        match self {
            MetaStore::Embedded(_) => Ok(ClusterView {
                engines: vec![EngineView {
                    addr: this_addr.to_string(),
                    this: true,
                    started_unix_ms,
                    lease_left_ms: None,
                }],
                passes: here
                    .iter()
                    .map(|(p, s)| PassView {
                        pass: p.name().to_string(),
                        holder: this_addr.to_string(),
                        this: true,
                        since_unix_ms: Some(*s),
                        lease_left_ms: None,
                    })
                    .collect(),
            }),
            MetaStore::Postgres(p) => {
                let mut view = p.cluster_view().await?;
                for pass in view.passes.iter_mut().filter(|p| p.this) {
                    pass.since_unix_ms = since(&pass.pass);
                }
                Ok(view)
            }
        }
    }
}
