//! What every request handler shares: the engine's configuration, its metadata, what it knows
//! of the nodes, the download budget, and the uploads in progress; and the answers any handler
//! may give.

use crate::buffer::Budget;
use crate::cluster::Links;
use crate::meta::MetaStore;
use dfs_proto::{ChunkId, FileId, Msg, Status};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct EngineConfig {
    pub nodes: Vec<SocketAddr>,
    /// Copies of each chunk, on distinct nodes.
    pub replicas: usize,
    pub data_path: dfs_runtime::DataPath,
    pub dynamic_chunk_cap_bytes: u64,
    pub client_idle_timeout: Duration,
    /// Age below which a chunk no file references is not yet an orphan.
    pub gc_grace: Duration,
}

/// File IDs whose chunks are being written right now (an upload, or repair making a copy),
/// which garbage collection must not touch: a copy may exist before the metadata points at it.
/// Counted, so that two writers of one file each keep it protected.
#[derive(Default)]
pub struct Uploads(std::sync::Mutex<std::collections::HashMap<FileId, usize>>);

/// Releases its file ID in [`Uploads`] when the writing ends, however it ends.
pub struct UploadGuard<'a>(&'a Uploads, FileId);

impl Uploads {
    pub fn begin(&self, file_id: FileId) -> UploadGuard<'_> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(file_id).or_default() += 1;
        UploadGuard(self, file_id)
    }

    pub fn contains(&self, file_id: FileId) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&file_id)
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        let mut writers = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut n) = writers.entry(self.1) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

/// Copies gc has claimed for deletion, by chunk and node: repair writes no copy of a claimed
/// chunk to the claimed node, so gc's DELETE cannot land on a copy that repair has just made
/// and recorded there (`dfs_core::gc` says why the claim comes before gc's second look).
#[derive(Default)]
pub struct GcClaims(std::sync::Mutex<std::collections::HashSet<(ChunkId, SocketAddr)>>);

/// Releases its claim in [`GcClaims`] when dropped.
pub struct GcClaim<'a>(&'a GcClaims, ChunkId, SocketAddr);

impl GcClaims {
    /// Claims `chunk` on `node`; None if another gc pass holds that claim.
    pub fn claim(&self, chunk: ChunkId, node: SocketAddr) -> Option<GcClaim<'_>> {
        let fresh = self.0.lock().unwrap_or_else(|e| e.into_inner()).insert((chunk, node));
        fresh.then_some(GcClaim(self, chunk, node))
    }

    pub fn is_claimed(&self, chunk: ChunkId, node: SocketAddr) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(&(chunk, node))
    }
}

impl Drop for GcClaim<'_> {
    fn drop(&mut self) {
        let removed = self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).remove(&(self.1, self.2));
        assert!(removed, "a held claim is in the set until it is released");
    }
}

pub struct EngineState {
    /// With keys, only clients presenting one are served.
    pub access_keys: Option<dfs_proto::auth::AccessKeys>,
    pub uploads_in_progress: Uploads,
    pub gc_claims: GcClaims,
    pub config: EngineConfig,
    pub meta: MetaStore,
    /// How to reach the nodes, and what the engine knows of them (`links.health`).
    pub links: Links,
    pub budget: Arc<Budget>,
    /// Set while a full repair pass runs: one at a time, whether asked for or on the interval.
    pub repair_running: std::sync::atomic::AtomicBool,
    /// Held by a full repair pass and by each turn of the repair queue: never two at once.
    pub repair_lock: tokio::sync::Mutex<()>,
    /// Chunks noted for repair by the request paths, and what the queue has done.
    pub repair_queue: Arc<crate::repair_queue::RepairQueue>,
    pub repair_pace: crate::repair_queue::RepairPace,
    /// Requests per second and transfers under way, for the status page.
    pub activity: crate::activity::Activity,
    /// The last errors answered to clients, for the status page.
    pub errors: crate::metrics::RecentErrors,
    /// The cluster-wide passes running on this engine.
    pub passes: crate::meta::RunningPasses,
}

pub fn not_found(file_id: FileId) -> Msg {
    Msg::error(Status::NotFound, format!("file {file_id} not found"))
}

impl EngineState {
    /// The answer when the metadata cannot be read or written: Unavailable, so that a client
    /// given several engines tries the next. Logged, and kept for the status page.
    pub fn meta_failed(&self, e: impl std::fmt::Display) -> Msg {
        tracing::error!("{e}");
        self.errors.note(&e.to_string());
        Msg::error(Status::Unavailable, e.to_string())
    }

    /// The answer to a failure of the engine itself. Logged, and kept for the status page.
    pub fn internal(&self, e: impl std::fmt::Display) -> Msg {
        tracing::error!("{e}");
        self.errors.note(&e.to_string());
        Msg::error(Status::Internal, e.to_string())
    }
}
