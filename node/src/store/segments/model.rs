//! Seeded random runs of the segment store against a model of what it acknowledged: small and
//! large records (a large one held open across other writes, checkpoints and compaction),
//! deletes, checkpoints, compaction, a copy set aside and stored again before scrub's late
//! tombstone for it, a sync error received by another caller while a record
//! waits for its own sync (the pages it covered are lost, as a failed writeback loses them),
//! and stops at any point, clean or in the middle of a record. After every restart:
//! - every record acknowledged and not deleted is found, byte for byte;
//! - a deleted record never comes back;
//! - sequence numbers go on above every one found, so none repeats.
//!
//! The store runs on real files, as it ships; only the order of events and the faults come
//! from the seed. A failing seed prints itself: `DFS_MODEL_SEED=S cargo test -p dfs-node model`
//! replays it, `DFS_MODEL_SEEDS=N` runs more.

use super::format::{encode_trailer, Kind, RecordHeader};
use super::tests::{data, wait_for_spare};
use super::*;
use dfs_proto::limits::BLOCK_SIZE_BYTES;
use dfs_proto::FileId;
use dfs_runtime::aligned::AlignedBuf;
use std::collections::{BTreeMap, BTreeSet};

const SEGMENT: u64 = 1 << 20;

/// What the store has acknowledged, and what it was told to forget.
#[derive(Default)]
struct Model {
    acked: BTreeMap<ChunkId, Vec<u8>>,
    deleted: BTreeSet<ChunkId>,
    next_file: u32,
}

impl Model {
    fn fresh_id(&mut self) -> ChunkId {
        self.next_file += 1;
        let mut file_id = [0u8; 16];
        file_id[..4].copy_from_slice(&self.next_file.to_be_bytes());
        ChunkId { file_id: FileId(file_id), chunk_idx: 0 }
    }
}

/// A record whose space is reserved and whose bytes are written, not yet synced or published.
struct Written {
    id: ChunkId,
    bytes: Vec<u8>,
    r: Reservation,
    location: Location,
}

/// Writes a whole chunk record into fresh space, as a STORE does before its sync.
async fn write_record(store: &SegmentStore, id: ChunkId, bytes: Vec<u8>) -> io::Result<Written> {
    let r = store.reserve(record_span(bytes.len() as u64))?;
    let crcs: Vec<u32> = bytes.chunks(BLOCK_SIZE_BYTES as usize).map(crc32fast::hash).collect();
    let header = RecordHeader {
        kind: Kind::Chunk,
        chunk_id: id,
        length: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
        created_unix_ms: 1,
        lsn: r.lsn,
    };
    let encoded = header.encode();
    let mut buf = AlignedBuf::zeroed(r.span as usize);
    buf.extend_from_slice(&encoded);
    buf.extend_from_slice(&bytes);
    buf.extend_from_slice(&encode_trailer(&encoded, &crcs));
    buf.pad_to_alignment();
    let (res, _) = r.segment.fd.clone().write_owned(buf, r.offset).await;
    res?;
    let location = Location {
        segment: r.segment.clone(),
        offset: r.offset,
        length: bytes.len() as u64,
        crc32: header.crc32,
        created_unix_ms: 1,
        lsn: r.lsn,
        block_crcs: crcs.into(),
    };
    Ok(Written { id, bytes, r, location })
}

/// Syncs and publishes a written record; acknowledged if both succeed.
async fn finish(store: &SegmentStore, model: &mut Model, w: Written) {
    if store.sync(&w.r.segment).await.is_ok() && store.publish(w.id, w.location) {
        model.acked.insert(w.id, w.bytes);
    }
}

fn random_bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    data(rng.u8(..), len)
}

/// One life of the store: `n_ops` random operations, then a stop that may cut a large record
/// short.
async fn life(store: &SegmentStore, model: &mut Model, rng: &mut fastrand::Rng, n_ops: usize, trace: &mut Vec<String>) {
    let mut held: Vec<Written> = Vec::new();
    for _ in 0..n_ops {
        match rng.u32(..100) {
            0..=34 => {
                let id = model.fresh_id();
                let len = rng.usize(0..20_000);
                trace.push(format!("put {id} ({len} bytes)"));
                if let Ok(w) = write_record(store, id, random_bytes(rng, len)).await {
                    finish(store, model, w).await;
                }
            }
            35..=44 => {
                // A record larger than a segment, held open while others are written; with a
                // spare ready most of the time, as on a node that is not busy.
                if rng.bool() {
                    wait_for_spare(store);
                }
                let id = model.fresh_id();
                let len = SEGMENT as usize + rng.usize(0..(SEGMENT as usize / 2));
                trace.push(format!("begin large {id} ({len} bytes)"));
                if let Ok(w) = write_record(store, id, random_bytes(rng, len)).await {
                    held.push(w);
                }
            }
            45..=52 if !held.is_empty() => {
                let w = held.remove(rng.usize(..held.len()));
                trace.push(format!("finish large {}", w.id));
                finish(store, model, w).await;
            }
            53..=64 if !model.acked.is_empty() => {
                let id = *model.acked.keys().nth(rng.usize(..model.acked.len())).expect("in range");
                trace.push(format!("delete {id}"));
                if store.remove(id, false).await.is_ok() {
                    model.acked.remove(&id);
                    model.deleted.insert(id);
                }
            }
            65..=74 => {
                trace.push("checkpoint".into());
                store.write_checkpoint().expect("checkpoint");
            }
            75..=84 => {
                trace.push("compact".into());
                let _ = store.compact_once(compact::Policy { below: 0.5, bytes_per_sec: None });
            }
            85..=89 => {
                // A record waits for its sync while compaction's or scrub's sync of the same
                // segment receives the writeback error: the record's pages are lost.
                let id = model.fresh_id();
                trace.push(format!("sync error under {id}"));
                if let Ok(w) = write_record(store, id, random_bytes(rng, 5000)).await {
                    w.r.segment.fail_next_sync_for_tests(libc::EIO);
                    let _ = w.r.segment.datasync();
                    let zeros = vec![0u8; w.bytes.len()];
                    super::tests::overwrite(&w.r.segment.path, w.location.data_offset(), &zeros);
                    finish(store, model, w).await;
                }
            }
            90..=94 if !model.acked.is_empty() => {
                // Scrub lists a copy; a read sets it aside, repair stores it again, and then
                // scrub's late tombstone for the copy it listed lands.
                let id = *model.acked.keys().nth(rng.usize(..model.acked.len())).expect("in range");
                trace.push(format!("set aside {id}, stored again, set aside late"));
                let listed = store.get(&id).expect("an acknowledged chunk is in the index");
                if store.quarantine_record(id, &listed).await.is_ok() {
                    let bytes = model.acked.remove(&id).expect("acknowledged");
                    model.deleted.insert(id);
                    if let Ok(w) = write_record(store, id, bytes).await {
                        finish(store, model, w).await;
                        if model.acked.contains_key(&id) {
                            model.deleted.remove(&id);
                        }
                    }
                    let _ = store.remove_blocking(id, &listed, true);
                }
            }
            _ => {}
        }
    }
    // The stop: a held record is either finished first or cut off where it stands.
    for w in held {
        if rng.bool() {
            trace.push(format!("finish large {} before the stop", w.id));
            finish(store, model, w).await;
        } else {
            trace.push(format!("stop in the middle of {}", w.id));
        }
    }
    trace.push("stop".into());
}

/// Runs one seed; Err: the invariant that broke, with the trace.
fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut model = Model::default();
    let mut trace = Vec::new();
    const LIVES: usize = 3;
    for n_life in 0..=LIVES {
        let store = SegmentStore::open(dir.path(), SEGMENT, Prefill::Allocate)
            .map_err(|e| format!("life {n_life}: cannot open: {e}\n{}", trace.join("\n")))?;
        // Checked at every start, the first one included (nothing to find there).
        for (id, bytes) in &model.acked {
            let Some(loc) = store.get(id) else {
                return Err(format!("life {n_life}: acknowledged {id} is missing\n{}", trace.join("\n")));
            };
            let found = super::tests::read_back(&store, id);
            if found.as_ref() != Some(bytes) {
                return Err(format!(
                    "life {n_life}: acknowledged {id} reads back wrong (segment {}, lsn {})\n{}",
                    loc.segment.seq,
                    loc.lsn,
                    trace.join("\n")
                ));
            }
        }
        if let Some(id) = model.deleted.iter().find(|id| store.contains(id)) {
            return Err(format!("life {n_life}: deleted {id} came back\n{}", trace.join("\n")));
        }
        let next_lsn = store.writer.lock().unwrap_or_else(|e| e.into_inner()).next_lsn;
        if let Some((id, l)) = store.all().into_iter().find(|(_, l)| l.lsn >= next_lsn) {
            return Err(format!(
                "life {n_life}: {id} has lsn {} but the next record would get {next_lsn}\n{}",
                l.lsn,
                trace.join("\n")
            ));
        }
        if n_life == LIVES {
            break;
        }
        trace.push(format!("-- start {n_life}"));
        let n_ops = 10 + rng.usize(..30);
        tokio_uring::start(life(&store, &mut model, &mut rng, n_ops, &mut trace));
    }
    Ok(())
}

#[test]
fn random_lives_of_the_store_keep_what_they_acknowledged() {
    let seeds: Vec<u64> = match std::env::var("DFS_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("DFS_MODEL_SEED is a number")],
        Err(_) => {
            let n = std::env::var("DFS_MODEL_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(40u64);
            (0..n).collect()
        }
    };
    for seed in seeds {
        if let Err(why) = run_seed(seed) {
            panic!("seed {seed} (replay: DFS_MODEL_SEED={seed} cargo test -p dfs-node model): {why}");
        }
    }
}
