//! The repair queue: chunks that something has shown may be short of sound copies, kept in the
//! metadata database (table `repair_queue`, one entry per chunk) so that a restart forgets none,
//! and worked through a batch at a time by [`crate::repair::run_queue`] instead of a pass that
//! asks every node about every copy.
//!
//! It is fed by reads that found a copy missing, corrupt or unreachable, by nodes down for
//! longer than `--repair-after-down-secs`, by a node found replaced (another ID answering at its
//! address), and by the copies a scrub asked for by a client quarantined. Reads note chunks in
//! memory ([`RepairQueue::note`]: no I/O on a read's path); the notes go to the database at the
//! queue's next turn. A chunk that is not settled when tried ([`dfs_core::repair::Outcome`]) is
//! tried again after a back-off ([`dfs_core::repair::retry_after`]).

use crate::meta::{db_err, MetaError, MetaStore, NodeSlot};
use dfs_core::repair::Reason;
use dfs_proto::{ChunkId, FileId};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const QUEUE: TableDefinition<&[u8; 20], &[u8]> = TableDefinition::new("repair_queue");

/// One queued chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// [`Reason::code`] of what queued it first.
    pub reason: u8,
    pub queued_unix_ms: u64,
    /// Tries that left it unsettled.
    pub attempts: u32,
    /// Not tried before this time.
    pub not_before_unix_ms: u64,
}

impl Queued {
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason)
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

impl MetaStore {
    /// Queues each chunk not already queued, to be tried from its time on; a chunk already
    /// queued keeps its entry and is tried no later than the new time. Returns how many
    /// chunks were new. One fsynced transaction.
    pub fn queue_add(&self, entries: &[(ChunkId, Reason, u64)], now_unix_ms: u64) -> Result<u64, MetaError> {
        if entries.is_empty() {
            return Ok(0);
        }
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
    pub fn queue_due(&self, now_unix_ms: u64, limit: usize) -> Result<Vec<(ChunkId, Queued)>, MetaError> {
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
    pub fn queue_settle(&self, settled: &[ChunkId], retry: &[(ChunkId, u32, u64)]) -> Result<(), MetaError> {
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
    pub fn queue_len(&self) -> Result<u64, MetaError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        match txn.open_table(QUEUE) {
            Ok(t) => t.len().map_err(db_err),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Every chunk with a copy recorded on a node `on` matches: a scan of the metadata, no
    /// node request.
    pub fn chunks_placed(&self, on: impl Fn(&NodeSlot) -> bool) -> Result<Vec<ChunkId>, MetaError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self.records(after, 1000)?;
            for (file_id, record) in &page {
                let here: Vec<bool> = record.nodes.iter().map(&on).collect();
                for (idx, chunk) in record.chunks.iter().enumerate() {
                    if chunk.placement.iter().any(|&i| here.get(i as usize).copied().unwrap_or(false)) {
                        out.push(ChunkId { file_id: *file_id, chunk_idx: idx as u32 });
                    }
                }
            }
            match (more, page.last()) {
                (true, Some((last, _))) => after = Some(*last),
                _ => return Ok(out),
            }
        }
    }
}

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

    fn chunk(b: u8, idx: u32) -> ChunkId {
        ChunkId { file_id: FileId([b; 16]), chunk_idx: idx }
    }

    #[test]
    fn a_queued_chunk_is_due_from_its_time_and_kept_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let meta = MetaStore::open(dir.path()).unwrap();
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
        let meta = MetaStore::open(dir.path()).unwrap();
        assert_eq!(meta.queue_len().unwrap(), 1, "the queue survives a restart");
    }

    #[test]
    fn scrub_lines_name_their_chunk() {
        use crate::cluster::quarantined_chunk;
        let c = chunk(7, 2);
        assert_eq!(quarantined_chunk(&format!("chunk {c} is corrupt (block 0); set aside")), Some(c));
        assert_eq!(quarantined_chunk("not scrubbed: node down"), None);
    }
}
