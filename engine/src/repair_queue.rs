//! The repair queue: chunks that something has shown may be short of sound copies, kept in the
//! metadata database (table `repair_queue`, one entry per chunk) so that a restart forgets none,
//! and worked through a batch at a time by [`crate::repair::run_queue`]
//! (`dfs_core::repair::queue_turn`) instead of a pass that asks every node about every copy.
//!
//! It is fed by reads that found a copy missing, corrupt or unreachable, by nodes down for
//! longer than `--repair-after-down-secs`, by a node found replaced (another ID answering at its
//! address), and by the copies a scrub asked for by a client quarantined. Reads note chunks in
//! memory ([`RepairQueue::note`]: no I/O on a read's path); the notes go to the database at the
//! queue's next turn. A chunk that is not settled when tried ([`dfs_core::repair::Outcome`]) is
//! tried again after a back-off ([`dfs_core::repair::retry_after`]).

pub use crate::meta::Queued;
use dfs_core::repair::Reason;
use dfs_proto::ChunkId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the request paths tell the queue, and what it has done since start-up.
#[derive(Default)]
pub struct RepairQueue {
    notes: Mutex<BTreeMap<ChunkId, Reason>>,
    /// Chunks settled by the queue since start-up.
    pub n_settled: AtomicU64,
    /// Copies the queue made since start-up.
    pub n_copies_made: AtomicU64,
}

impl RepairQueue {
    /// Notes that `chunk` may be short of sound copies. Cheap: no I/O.
    pub fn note(&self, chunk: ChunkId, reason: Reason) {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).entry(chunk).or_insert(reason);
    }

    /// The notes since the last call.
    pub fn take_notes(&self) -> Vec<(ChunkId, Reason)> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect()
    }

    pub fn n_notes(&self) -> u64 {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    pub fn settled(&self) -> u64 {
        self.n_settled.load(Ordering::Relaxed)
    }
}

/// The repair bandwidth limit (`--repair-bandwidth`): after each copy, repair waits until the
/// bytes copied so far fit the rate. 0: no limit.
pub struct RepairPace {
    bytes_per_sec: u64,
    next: std::sync::Mutex<Instant>,
}

impl RepairPace {
    pub fn new(bytes_per_sec: u64) -> RepairPace {
        RepairPace { bytes_per_sec, next: std::sync::Mutex::new(Instant::now()) }
    }

    /// Called after copying `bytes`: waits as long as the rate requires.
    pub async fn after(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            *next - now
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfs_proto::FileId;

    fn chunk(b: u8, idx: u32) -> ChunkId {
        ChunkId { file_id: FileId([b; 16]), chunk_idx: idx }
    }

    #[test]
    fn scrub_lines_name_their_chunk() {
        use crate::cluster::quarantined_chunk;
        let c = chunk(7, 2);
        assert_eq!(quarantined_chunk(&format!("chunk {c} is corrupt (block 0); set aside")), Some(c));
        assert_eq!(quarantined_chunk("not scrubbed: node down"), None);
    }
}
