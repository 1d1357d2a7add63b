//! Where a store's scrub pass stands, kept by the store and read into its report (NodeStat),
//! which the engine's status page shows. Its own module so that both stores and the scrub that
//! walks them can use it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where a store's scrub stands, for its report (NodeStat): the running pass's count, and the
/// last finished pass's.
#[derive(Debug, Default)]
pub struct ScrubProgress {
    running: AtomicBool,
    n_checked: AtomicU64,
    last_finished_unix_ms: AtomicU64,
    last_checked: AtomicU64,
    last_corrupt: AtomicU64,
}

impl ScrubProgress {
    pub fn report(&self) -> dfs_proto::ScrubReport {
        let running = self.running.load(Ordering::Acquire);
        dfs_proto::ScrubReport {
            running,
            n_checked: if running { self.n_checked.load(Ordering::Relaxed) } else { 0 },
            last_finished_unix_ms: self.last_finished_unix_ms.load(Ordering::Relaxed),
            last_checked: self.last_checked.load(Ordering::Relaxed),
            last_corrupt: self.last_corrupt.load(Ordering::Relaxed),
        }
    }

    /// Marks a pass as running until the returned guard drops (a pass that fails half way
    /// leaves the last finished figures as they were).
    pub(crate) fn start(&self) -> Running<'_> {
        self.n_checked.store(0, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
        Running(self)
    }
}

pub(crate) struct Running<'a>(&'a ScrubProgress);

impl Running<'_> {
    pub(crate) fn checked(&self, n: u64) {
        self.0.n_checked.store(n, Ordering::Relaxed);
    }

    pub(crate) fn finish(self, n_checked: u64, n_corrupt: u64) {
        self.0.last_checked.store(n_checked, Ordering::Relaxed);
        self.0.last_corrupt.store(n_corrupt, Ordering::Relaxed);
        self.0.last_finished_unix_ms.store(dfs_runtime::unix_ms(), Ordering::Relaxed);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}
