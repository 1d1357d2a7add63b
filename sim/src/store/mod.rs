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

use dfs_node::store::segments::{Policy, Prefill, SegmentIo, SegmentStore, Threads};
use dfs_node::store::ChunkError;
use dfs_proto::{ChunkId, FileId};
use disk::SimDisk;
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

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

    fn fail(&self, why: String) -> String {
        let tail = self.trace.len().saturating_sub(60);
        format!("{why}\n  last steps:\n    {}", self.trace[tail..].join("\n    "))
    }

    fn random_acked(&self, rng: &mut XorShiftRng) -> Option<ChunkId> {
        (!self.acked.is_empty()).then(|| *self.acked.keys().nth(rng.random_range(0..self.acked.len())).expect("in range"))
    }
}

/// A STORE whose body has not all arrived.
struct Held<'a> {
    id: ChunkId,
    bytes: Vec<u8>,
    pos: usize,
    incoming: dfs_node::store::segments::Incoming<'a>,
}

/// Feeds `bytes[*pos..upto]` to a STORE in pieces of random sizes, as a socket delivers them.
async fn feed(incoming: &mut dfs_node::store::segments::Incoming<'_>, bytes: &[u8], pos: &mut usize, upto: usize, rng: &mut XorShiftRng) {
    while *pos < upto {
        let (mut stage, begin, end) = incoming.next_piece((upto - *pos) as u64);
        let n = (end - begin).min(rng.random_range(1..=256 << 10));
        stage.spare_all()[begin..begin + n].copy_from_slice(&bytes[*pos..*pos + n]);
        // As a read from the socket leaves it: the bytes received count as data.
        stage.set_len(begin + n);
        *pos += n;
        incoming.received(stage, begin, begin + n).await;
    }
}

/// A whole STORE: Ok if the node acknowledged it.
async fn store(s: &SegmentStore, id: ChunkId, bytes: &[u8], rng: &mut XorShiftRng) -> Result<(), ChunkError> {
    let mut incoming = s.receive(id, bytes.len() as u64, crc32fast::hash(bytes));
    let mut pos = 0;
    feed(&mut incoming, bytes, &mut pos, bytes.len(), rng).await;
    incoming.finish().await.map(|_| ())
}

fn random_bytes(rng: &mut XorShiftRng, len: usize) -> Vec<u8> {
    let seed = rng.random_range(0..=255u8);
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).rotate_left((i / 4096) as u32 % 8)).collect()
}

/// Runs one seed: Err names the invariant that broke, with the steps before it.
pub fn run(seed: u64) -> Result<Counts, String> {
    let mut rng = XorShiftRng::seed_from_u64(seed ^ 0x5e6d_0000_0000_0000);
    let disk = SimDisk::new(rng.random_range(6..20) * SEGMENT);
    let prefill = if rng.random_bool(0.5) { Prefill::Zero } else { Prefill::Allocate };
    let io = if rng.random_bool(0.5) { SegmentIo::Direct } else { SegmentIo::Buffered };
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| format!("no runtime: {e}"))?;
    let mut model = Model::default();
    // Disk calls a life made: a cut of the power lands anywhere in about that many.
    let mut calls_per_life = 400;
    for n_life in 0..=LIVES {
        model.note(format!("-- start {n_life}"));
        let store = SegmentStore::open_on(Arc::new(disk.clone()), Threads::None, Path::new("/node"), SEGMENT, prefill, io)
            .map_err(|e| model.fail(format!("life {n_life}: the store does not open: {e}")))?;
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
    Ok(model.counts)
}

/// The invariants, checked at a start: acknowledged records read back (or their rot is
/// reported, and they are stored again), deleted ones stay deleted, sequence numbers go on.
async fn check(s: &SegmentStore, model: &mut Model, rng: &mut XorShiftRng, n_life: usize) -> Result<(), String> {
    let acked: Vec<(ChunkId, Vec<u8>)> = model.acked.iter().map(|(id, b)| (*id, b.clone())).collect();
    for (id, bytes) in acked {
        match s.read_chunk(id).await {
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
        return Err(model.fail(format!("life {n_life}: a record has sequence number {max}, the next record would get {next}")));
    }
    Ok(())
}

/// A record whose loss the node reported is stored again, as repair stores it from another copy.
async fn repair(s: &SegmentStore, model: &mut Model, rng: &mut XorShiftRng, id: ChunkId, bytes: Vec<u8>) {
    model.note(format!("repair {id}"));
    model.acked.remove(&id);
    model.rotted.remove(&id);
    if store(s, id, &bytes, rng).await.is_ok() {
        model.acked.insert(id, bytes);
        model.counts.repaired += 1;
    }
}

/// A scrub pass between its listing and its last check.
struct HeldScrub {
    listed: Vec<dfs_node::scrub::Listed>,
}

/// One life: random steps until the step count runs out or the power goes.
async fn life(s: &SegmentStore, disk: &SimDisk, model: &mut Model, rng: &mut XorShiftRng) -> Result<(), String> {
    let mut held: Vec<Held<'_>> = Vec::new();
    let mut scrub: Option<HeldScrub> = None;
    let n_steps = rng.random_range(10..60);
    for _ in 0..n_steps {
        if disk.is_off() {
            model.note("(the power is off)".into());
            break;
        }
        match rng.random_range(0..100) {
            0..=29 => {
                let id = model.fresh_id();
                let len = rng.random_range(0..20_000);
                let bytes = random_bytes(rng, len);
                model.note(format!("put {id} ({} bytes)", bytes.len()));
                if store(s, id, &bytes, rng).await.is_ok() {
                    model.acked.insert(id, bytes);
                    model.counts.acked += 1;
                }
            }
            30..=37 => {
                // A record larger than a segment, held open while others are written; with a
                // spare ready half the time, as on a node that is not busy.
                if rng.random_bool(0.5) {
                    let _ = s.make_spare_now();
                }
                let id = model.fresh_id();
                let len = SEGMENT as usize + rng.random_range(0..SEGMENT as usize / 2);
                let bytes = random_bytes(rng, len);
                model.note(format!("begin large {id} ({len} bytes)"));
                let mut incoming = s.receive(id, len as u64, crc32fast::hash(&bytes));
                let mut pos = 0;
                let upto = rng.random_range(1..len);
                feed(&mut incoming, &bytes, &mut pos, upto, rng).await;
                held.push(Held { id, bytes, pos, incoming });
            }
            38..=44 if !held.is_empty() => {
                let mut h = held.remove(rng.random_range(0..held.len()));
                model.note(format!("finish large {}", h.id));
                let len = h.bytes.len();
                feed(&mut h.incoming, &h.bytes, &mut h.pos, len, rng).await;
                if h.incoming.finish().await.is_ok() {
                    model.acked.insert(h.id, h.bytes);
                    model.counts.acked += 1;
                }
            }
            45 if !held.is_empty() => {
                let h = held.remove(rng.random_range(0..held.len()));
                model.note(format!("the engine goes away in the middle of {}", h.id));
                h.incoming.abandon().await;
            }
            46..=55 => {
                let Some(id) = model.random_acked(rng) else { continue };
                model.note(format!("delete {id}"));
                model.acked.remove(&id);
                model.rotted.remove(&id);
                match s.remove_if_written_before(id, None).await {
                    Ok(true) => {
                        model.deleted.insert(id);
                        model.counts.deleted += 1;
                    }
                    // Neither acknowledged nor deleted: a failed delete may or may not have
                    // left its tombstone, so nothing is checked of it any more.
                    _ => {}
                }
            }
            56..=62 => {
                let Some(id) = model.random_acked(rng) else { continue };
                model.note(format!("fetch {id}"));
                let bytes = model.acked[&id].clone();
                match s.read_chunk(id).await {
                    Ok(found) if found == bytes => {}
                    Ok(_) => return Err(model.fail(format!("a FETCH of {id} returned bytes other than those stored"))),
                    Err(ChunkError::Corrupt(..) | ChunkError::NotFound(..)) if model.rotted.contains(&id) => {
                        repair(s, model, rng, id, bytes).await;
                    }
                    Err(ChunkError::Io { .. }) if disk.is_off() => {}
                    Err(e) => return Err(model.fail(format!("a FETCH of acknowledged {id} failed: {e}"))),
                }
            }
            63..=69 => {
                model.note("checkpoint".into());
                if s.write_checkpoint().is_ok() {
                    model.counts.checkpoints += 1;
                }
            }
            70..=76 => {
                model.note("compact".into());
                if let Ok(Some(_)) = s.compact_once(Policy { below: 0.5, bytes_per_sec: None }) {
                    model.counts.compactions += 1;
                }
            }
            77..=80 => {
                let errno = if rng.random_bool(0.8) { libc::EIO } else { libc::ENOSPC };
                let pick = rng.random_range(0..1000usize);
                if disk.fail_writeback(errno, |n| pick % n) {
                    model.note(format!("a writeback fails ({})", std::io::Error::from_raw_os_error(errno)));
                    model.counts.writeback_errors += 1;
                }
            }
            81..=84 => {
                let Some(id) = model.random_acked(rng) else { continue };
                let Some((path, range)) = s.data_place(&id) else { continue };
                if disk.rot(&path, range, rng) {
                    model.note(format!("a sector of {id} rots"));
                    model.rotted.insert(id);
                    model.ever_rotted.insert(id);
                    model.counts.rotted += 1;
                }
            }
            85..=90 if scrub.is_none() => {
                model.note("scrub lists the records".into());
                scrub = Some(HeldScrub { listed: dfs_node::scrub::listing(s) });
            }
            91..=97 if scrub.is_some() => {
                let pass = scrub.as_mut().expect("a scrub pass under way");
                let n = rng.random_range(1..=pass.listed.len().max(1)).min(pass.listed.len());
                let mut pace = dfs_node::pace::Pace::new(None);
                for listed in pass.listed.drain(..n).collect::<Vec<_>>() {
                    let id = listed.id();
                    model.note(format!("scrub checks {id}"));
                    match dfs_node::scrub::check_listed(s, &listed, &mut pace) {
                        dfs_node::scrub::Finding::Sound => {}
                        dfs_node::scrub::Finding::Corrupt(line) => {
                            if !model.ever_rotted.contains(&id) && model.acked.contains_key(&id) {
                                return Err(model.fail(format!("scrub found acknowledged {id} corrupt, and it never rotted: {line}")));
                            }
                            if let Some(bytes) = model.acked.get(&id).cloned() {
                                if !s.contains(&id) {
                                    repair(s, model, rng, id, bytes).await;
                                }
                            }
                        }
                        dfs_node::scrub::Finding::Unreadable(_) => {}
                    }
                }
                if scrub.as_ref().is_some_and(|p| p.listed.is_empty()) {
                    scrub = None;
                }
            }
            _ => {}
        }
    }
    // The stop: a held record is either finished first or cut off where it stands.
    for mut h in held {
        if rng.random_bool(0.5) && !disk.is_off() {
            model.note(format!("finish large {} before the stop", h.id));
            let len = h.bytes.len();
            feed(&mut h.incoming, &h.bytes, &mut h.pos, len, rng).await;
            if h.incoming.finish().await.is_ok() {
                model.acked.insert(h.id, h.bytes);
                model.counts.acked += 1;
            }
        } else {
            model.note(format!("stop in the middle of {}", h.id));
        }
    }
    Ok(())
}
