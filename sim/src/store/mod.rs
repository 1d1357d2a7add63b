//! The node's segment store, the code that ships (`dfs_node::store::segments`), run over a
//! simulated disk ([`disk::SimDisk`]) for several lives per seed. Each life takes random steps:
//! STOREs of small records and of records larger than a segment held open across other steps,
//! deletes, FETCHes, checkpoints, compaction, scrub passes held open across other steps, a
//! failed writeback of a file, a sector that rots, and a stop, clean or with the power cut at
//! any call the store makes (inside a record, a checkpoint, a compaction, the making of a
//! segment). After every restart:
//! - every record acknowledged and not deleted is found and reads back byte-exact, or, where a
//!   sector of it rotted, its loss is reported (a FETCH fails its check, or it is gone) and the
//!   record is stored again, as repair stores it from another copy; no read ever returns bytes
//!   other than those stored;
//! - a deleted record never comes back;
//! - sequence numbers go on above every one found, so none repeats.

pub mod disk;

use dfs_node::store::segments::{Incoming, Policy, Prefill, SegmentIo, SegmentStore, Threads};
use dfs_node::store::ChunkError;
use dfs_proto::{ChunkId, FileId};
use disk::SimDisk;
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SEGMENT: u64 = 1 << 20;
const LIVES: usize = 4;

/// What one seed's store did.
#[derive(Debug, Default)]
pub struct Counts {
    pub acked: u64,
    pub deleted: u64,
    pub power_cuts: u64,
    pub writeback_errors: u64,
    pub rotted: u64,
    pub disk_full: u64,
    pub repaired: u64,
    pub checkpoints: u64,
    pub compactions: u64,
}

/// What the store acknowledged, and what it was told to forget.
#[derive(Default)]
struct Model {
    acked: BTreeMap<ChunkId, Vec<u8>>,
    deleted: BTreeSet<ChunkId>,
    /// Acknowledged records with a rotted sector: their loss may be reported.
    rotted: BTreeSet<ChunkId>,
    /// Every record that ever had a sector rot (a scrub pass may have listed its old copy).
    ever_rotted: BTreeSet<ChunkId>,
    next_file: u32,
    trace: Vec<String>,
    counts: Counts,
}

impl Model {
    fn fresh_id(&mut self) -> ChunkId {
        self.next_file += 1;
        let mut file_id = [0u8; 16];
        file_id[..4].copy_from_slice(&self.next_file.to_be_bytes());
        ChunkId { file_id: FileId(file_id), chunk_idx: 0 }
    }

    fn note(&mut self, step: String) {
        self.trace.push(step);
    }

    fn fail(&self, why: String) -> StoreFailed {
        let tail = self.trace.len().saturating_sub(60);
        StoreFailed::Violated { why, last_steps: self.trace[tail..].to_vec() }
    }

    fn random_acked(&self, rng: &mut XorShiftRng) -> Option<ChunkId> {
        (!self.acked.is_empty())
            .then(|| *self.acked.keys().nth(rng.random_range(0..self.acked.len())).expect("in range"))
    }
}

/// A STORE running as a task of its own, as the node runs each request: Ok(true) once the
/// node acknowledged it.
struct Store {
    id: ChunkId,
    bytes: Rc<Vec<u8>>,
    task: JoinHandle<bool>,
    /// Holds the body part-way (a large record) until opened: true, the rest arrives; false,
    /// the engine goes away.
    gate: Option<oneshot::Sender<bool>>,
}

/// Piece sizes a socket might deliver a body in.
fn random_pieces(rng: &mut XorShiftRng) -> Vec<usize> {
    (0..16)
        .map(|_| if rng.random_bool(0.3) { rng.random_range(1..4096) } else { rng.random_range(4096..=256 << 10) })
        .collect()
}

/// Feeds `bytes[*pos..upto]` to a STORE in the given piece sizes (cycled), as a socket
/// delivers them.
async fn feed(
    incoming: &mut Incoming<'_>,
    bytes: &[u8],
    pos: &mut usize,
    upto: usize,
    pieces: &[usize],
    turn: &mut usize,
) {
    while *pos < upto {
        let (mut stage, begin, end) = incoming.next_piece((upto - *pos) as u64);
        let n = (end - begin).min(pieces[*turn % pieces.len()]);
        *turn += 1;
        stage.spare_all()[begin..begin + n].copy_from_slice(&bytes[*pos..*pos + n]);
        // As a read from the socket leaves it: the bytes received count as data.
        stage.set_len(begin + n);
        *pos += n;
        incoming.received(stage, begin, begin + n).await;
    }
}

/// Starts a STORE of `bytes` as `id`, held after `hold_at` bytes when given.
fn spawn_store(
    s: &Arc<SegmentStore>,
    id: ChunkId,
    bytes: Vec<u8>,
    rng: &mut XorShiftRng,
    hold_at: Option<usize>,
) -> Store {
    let pieces = random_pieces(rng);
    let bytes = Rc::new(bytes);
    let (gate, opened) = match hold_at {
        Some(at) => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some((at, rx)))
        }
        None => (None, None),
    };
    let (s, body) = (s.clone(), bytes.clone());
    let task = tokio::task::spawn_local(async move {
        let mut incoming = s.receive(id, body.len() as u64, crc32fast::hash(&body));
        let (mut pos, mut turn) = (0, 0);
        if let Some((at, opened)) = opened {
            feed(&mut incoming, &body, &mut pos, at, &pieces, &mut turn).await;
            if !opened.await.unwrap_or(false) {
                incoming.abandon().await;
                return false;
            }
        }
        feed(&mut incoming, &body, &mut pos, body.len(), &pieces, &mut turn).await;
        incoming.finish().await.is_ok()
    });
    Store { id, bytes, task, gate }
}

fn random_bytes(rng: &mut XorShiftRng, len: usize) -> Vec<u8> {
    let seed = rng.random_range(0..=255u8);
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left((i / 4096) as u32 % 8)).collect()
}

/// Lets every task run until each waits on something the simulation gives: a gate, or a sync
/// not yet run.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Runs `task` to its end, running the queued syncs whenever it waits on one, as the sync
/// thread would.
async fn finish<T>(s: &SegmentStore, task: JoinHandle<T>) -> T {
    for _ in 0..1000 {
        settle().await;
        if task.is_finished() {
            return task.await.expect("a store task does not panic");
        }
        s.sync_now();
    }
    panic!("a task of the segment store never finished");
}

/// A STORE run to its end: whether the node acknowledged it.
async fn store(s: &Arc<SegmentStore>, id: ChunkId, bytes: Vec<u8>, rng: &mut XorShiftRng) -> bool {
    let st = spawn_store(s, id, bytes, rng, None);
    finish(s, st.task).await
}

/// A FETCH run to its end (one that finds a record corrupt sets it aside, and syncs).
async fn fetch(s: &Arc<SegmentStore>, id: ChunkId) -> Result<Vec<u8>, ChunkError> {
    let s2 = s.clone();
    finish(s, tokio::task::spawn_local(async move { s2.read_chunk(id).await })).await
}

/// Runs one seed: Err names the invariant that broke, with the steps before it.
/// Why a seed's run of the segment store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailed {
    /// An invariant broke; the steps that led there, the last first at the bottom.
    #[error("{why}\n  last steps:\n    {}", last_steps.join("\n    "))]
    Violated { why: String, last_steps: Vec<String> },
    #[error("no runtime for the store: {0}")]
    Runtime(std::io::Error),
}

pub fn run(seed: u64) -> Result<Counts, StoreFailed> {
    let mut rng = XorShiftRng::seed_from_u64(seed ^ 0x5e6d_0000_0000_0000);
    let disk = SimDisk::new(rng.random_range(6..20) * SEGMENT);
    let prefill = if rng.random_bool(0.5) { Prefill::Zero } else { Prefill::Allocate };
    let io = if rng.random_bool(0.5) { SegmentIo::Direct } else { SegmentIo::Buffered };
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(StoreFailed::Runtime)?;
    let mut model = Model::default();
    // Disk calls a life made: a cut of the power lands anywhere in about that many.
    let mut calls_per_life = 400;
    for n_life in 0..=LIVES {
        model.note(format!("-- start {n_life}"));
        let store =
            SegmentStore::open_on(Arc::new(disk.clone()), Threads::None, Path::new("/node"), SEGMENT, prefill, io)
                .map_err(|e| model.fail(format!("life {n_life}: the store does not open: {e}")))?;
        let store = Arc::new(store);
        tokio::task::LocalSet::new().block_on(&rt, check(&store, &mut model, &mut rng, n_life))?;
        if n_life == LIVES {
            break;
        }
        if rng.random_bool(0.6) {
            let calls = rng.random_range(0..calls_per_life);
            model.note(format!("the power goes after {calls} more disk calls"));
            disk.power_off_after(calls);
        }
        let calls_before = disk.n_calls();
        // The life's tasks end with its LocalSet, where they stand: the stop.
        tokio::task::LocalSet::new().block_on(&rt, life(&store, &disk, &mut model, &mut rng))?;
        if disk.is_off() {
            model.counts.power_cuts += 1;
        } else {
            calls_per_life = (disk.n_calls() - calls_before).max(50);
        }
        model.note("stop".into());
        drop(store);
        disk.crash(&mut rng);
    }
    model.counts.disk_full = disk.n_full();
    Ok(model.counts)
}

/// The invariants, checked at a start: acknowledged records read back (or their rot is
/// reported, and they are stored again), deleted ones stay deleted, sequence numbers go on.
async fn check(
    s: &Arc<SegmentStore>,
    model: &mut Model,
    rng: &mut XorShiftRng,
    n_life: usize,
) -> Result<(), StoreFailed> {
    let acked: Vec<(ChunkId, Vec<u8>)> = model.acked.iter().map(|(id, b)| (*id, b.clone())).collect();
    for (id, bytes) in acked {
        match fetch(s, id).await {
            Ok(found) if found == bytes => {}
            Ok(found) => {
                return Err(model.fail(format!(
                    "life {n_life}: acknowledged {id} reads back wrong ({} bytes, {} expected)",
                    found.len(),
                    bytes.len()
                )))
            }
            Err(ChunkError::Corrupt(..) | ChunkError::NotFound(..)) if model.rotted.contains(&id) => {
                repair(s, model, rng, id, bytes).await;
            }
            Err(e) => return Err(model.fail(format!("life {n_life}: acknowledged {id} is lost: {e}"))),
        }
    }
    if let Some(id) = model.deleted.iter().find(|id| s.contains(id)) {
        return Err(model.fail(format!("life {n_life}: deleted {id} came back")));
    }
    let (max, next) = s.lsn_bounds();
    if next <= max {
        return Err(
            model.fail(format!("life {n_life}: a record has sequence number {max}, the next record would get {next}"))
        );
    }
    Ok(())
}

/// A record whose loss the node reported is stored again, as repair stores it from another copy.
async fn repair(s: &Arc<SegmentStore>, model: &mut Model, rng: &mut XorShiftRng, id: ChunkId, bytes: Vec<u8>) {
    model.note(format!("repair {id}"));
    model.acked.remove(&id);
    model.rotted.remove(&id);
    if store(s, id, bytes.clone(), rng).await {
        model.acked.insert(id, bytes);
        model.counts.repaired += 1;
    }
}

/// Takes the outcome of every STORE that has ended: acknowledged, or not.
async fn collect(under_way: &mut Vec<Store>, model: &mut Model) {
    let mut i = 0;
    while i < under_way.len() {
        if !under_way[i].task.is_finished() {
            i += 1;
            continue;
        }
        let st = under_way.remove(i);
        if st.task.await.expect("a store task does not panic") {
            model.note(format!("{} acknowledged", st.id));
            model.acked.insert(st.id, Rc::unwrap_or_clone(st.bytes));
            model.counts.acked += 1;
        } else {
            model.note(format!("{} refused", st.id));
        }
    }
}

/// One life: random steps until the step count runs out or the power goes.
async fn life(
    s: &Arc<SegmentStore>,
    disk: &SimDisk,
    model: &mut Model,
    rng: &mut XorShiftRng,
) -> Result<(), StoreFailed> {
    let mut under_way: Vec<Store> = Vec::new();
    let mut scrub: Option<Vec<dfs_node::scrub::Listed>> = None;
    let n_steps = rng.random_range(10..60);
    for _ in 0..n_steps {
        if disk.is_off() {
            model.note("(the power is off)".into());
            break;
        }
        match rng.random_range(0..100) {
            0..=24 => {
                // A STORE, left waiting for its sync half the time (other steps come first).
                let id = model.fresh_id();
                let len = rng.random_range(0..20_000);
                let bytes = random_bytes(rng, len);
                model.note(format!("put {id} ({len} bytes)"));
                let st = spawn_store(s, id, bytes, rng, None);
                if rng.random_bool(0.5) {
                    let ok = finish(s, st.task).await;
                    if ok {
                        model.acked.insert(id, Rc::unwrap_or_clone(st.bytes));
                        model.counts.acked += 1;
                    }
                } else {
                    under_way.push(st);
                }
            }
            25..=34 => {
                model.note("the sync thread runs".into());
                settle().await;
                s.sync_now();
            }
            35..=40 => {
                // A record larger than a segment, held part-way while others are written; with
                // a spare ready half the time, as on a node that is not busy.
                if rng.random_bool(0.5) {
                    let _ = s.make_spare_now();
                }
                let id = model.fresh_id();
                let len = SEGMENT as usize + rng.random_range(0..SEGMENT as usize / 2);
                let bytes = random_bytes(rng, len);
                let at = rng.random_range(1..len);
                model.note(format!("begin large {id} ({len} bytes), held at {at}"));
                under_way.push(spawn_store(s, id, bytes, rng, Some(at)));
            }
            41..=46 => {
                let held: Vec<usize> = (0..under_way.len()).filter(|&i| under_way[i].gate.is_some()).collect();
                let Some(&i) = held.get(rng.random_range(0..held.len().max(1))) else { continue };
                let go = rng.random_bool(0.9);
                let st = &mut under_way[i];
                model.note(if go {
                    format!("the rest of {} arrives", st.id)
                } else {
                    format!("the engine goes away in the middle of {}", st.id)
                });
                let _ = st.gate.take().expect("a held store").send(go);
            }
            47..=54 => {
                let Some(id) = model.random_acked(rng) else { continue };
                model.note(format!("delete {id}"));
                model.acked.remove(&id);
                model.rotted.remove(&id);
                let s2 = s.clone();
                let deleted =
                    finish(s, tokio::task::spawn_local(async move { s2.remove_if_written_before(id, None).await }))
                        .await;
                // A failed delete may or may not have left its tombstone: neither acknowledged
                // nor deleted, nothing is checked of it any more.
                if let Ok(true) = deleted {
                    model.deleted.insert(id);
                    model.counts.deleted += 1;
                }
            }
            55..=60 => {
                let Some(id) = model.random_acked(rng) else { continue };
                model.note(format!("fetch {id}"));
                let bytes = model.acked[&id].clone();
                match fetch(s, id).await {
                    Ok(found) if found == bytes => {}
                    Ok(_) => return Err(model.fail(format!("a FETCH of {id} returned bytes other than those stored"))),
                    Err(ChunkError::Corrupt(..) | ChunkError::NotFound(..)) if model.rotted.contains(&id) => {
                        repair(s, model, rng, id, bytes).await;
                    }
                    Err(ChunkError::Io { .. }) if disk.is_off() => {}
                    Err(e) => return Err(model.fail(format!("a FETCH of acknowledged {id} failed: {e}"))),
                }
            }
            61..=66 => {
                model.note("checkpoint".into());
                if s.write_checkpoint().is_ok() {
                    model.counts.checkpoints += 1;
                }
            }
            67..=73 => {
                model.note("compact".into());
                if let Ok(Some(_)) = s.compact_once(Policy { below: 0.5, bytes_per_sec: None }) {
                    model.counts.compactions += 1;
                }
            }
            74..=78 => {
                let errno = if rng.random_bool(0.8) { libc::EIO } else { libc::ENOSPC };
                let pick = rng.random_range(0..1000usize);
                if disk.fail_writeback(errno, |n| pick % n) {
                    model.note(format!("a writeback fails ({})", std::io::Error::from_raw_os_error(errno)));
                    model.counts.writeback_errors += 1;
                }
            }
            79..=82 => {
                let Some(id) = model.random_acked(rng) else { continue };
                let Some((path, range)) = s.data_place(&id) else { continue };
                if disk.rot(&path, range, rng) {
                    model.note(format!("a sector of {id} rots"));
                    model.rotted.insert(id);
                    model.ever_rotted.insert(id);
                    model.counts.rotted += 1;
                }
            }
            83..=88 if scrub.is_none() => {
                model.note("scrub lists the records".into());
                scrub = Some(dfs_node::scrub::listing(s));
            }
            89..=95 if scrub.is_some() => {
                let listed = scrub.as_mut().expect("a scrub pass under way");
                let n = rng.random_range(1..=listed.len().max(1)).min(listed.len());
                let mut pace = dfs_node::pace::Pace::new(None);
                for one in listed.drain(..n).collect::<Vec<_>>() {
                    let id = one.id();
                    model.note(format!("scrub checks {id}"));
                    if let dfs_node::scrub::Finding::Corrupt(line) = dfs_node::scrub::check_listed(s, &one, &mut pace) {
                        if !model.ever_rotted.contains(&id) && model.acked.contains_key(&id) {
                            return Err(model
                                .fail(format!("scrub found acknowledged {id} corrupt, and it never rotted: {line}")));
                        }
                        if let Some(bytes) = model.acked.get(&id).cloned() {
                            if !s.contains(&id) {
                                repair(s, model, rng, id, bytes).await;
                            }
                        }
                    }
                }
                if scrub.as_ref().is_some_and(|l| l.is_empty()) {
                    scrub = None;
                }
            }
            _ => {}
        }
        settle().await;
        collect(&mut under_way, model).await;
    }
    // The stop comes where everything stands; what ended before it was answered.
    settle().await;
    collect(&mut under_way, model).await;
    Ok(())
}
