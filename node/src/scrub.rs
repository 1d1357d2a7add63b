//! Scrub: re-reads every committed chunk and checks it against its own footer (the footer's
//! seal, then every block's crc32). A chunk that fails is moved to `quarantine/`, where no
//! request can reach it, so the engine sees the copy as missing and repair replaces it from a
//! good one. Runs on its own thread, one pass at a time: on request (SCRUB) at full speed, and
//! in the background on an interval at a bounded read rate.

use crate::pace::Pace;
use crate::store::files::footer::{Footer, FOOTER_FIXED_BYTES};
use crate::store::files::ChunkStore;
use crate::store::segments::SegmentStore;
use crate::store::Stores;
use dfs_proto::layout::{block_len, check_block};
use dfs_proto::limits::{BLOCK_SIZE_BYTES, MAX_LIST_ENTRIES};
use dfs_proto::{ChunkId, Msg};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Outcome {
    pub n_checked: u64,
    pub n_corrupt: u64,
    pub lines: Vec<String>,
}

/// Why a chunk file failed verification.
enum Bad {
    Corrupt(String),
    Io(io::Error),
}

impl From<io::Error> for Bad {
    fn from(e: io::Error) -> Bad {
        Bad::Io(e)
    }
}

/// Checks one chunk file against its footer, reading at most `rate` bytes per second.
fn verify(store: &ChunkStore, id: &ChunkId, pace: &mut Pace) -> Result<(), Bad> {
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(store.chunk_path(id))?;
    let file_len = file.metadata()?.len();
    if file_len < FOOTER_FIXED_BYTES as u64 {
        return Err(Bad::Corrupt(format!("file is {file_len} bytes, too short for a chunk footer")));
    }
    let mut tail = vec![0u8; FOOTER_FIXED_BYTES];
    file.seek(SeekFrom::Start(file_len - FOOTER_FIXED_BYTES as u64))?;
    file.read_exact(&mut tail)?;
    let (length, _) = Footer::parse_tail(&tail, file_len).map_err(|e| Bad::Corrupt(e.to_string()))?;
    let mut footer_bytes = vec![0u8; Footer::encoded_len(length) as usize];
    file.seek(SeekFrom::Start(length))?;
    file.read_exact(&mut footer_bytes)?;
    let footer = Footer::decode(&footer_bytes, *id).map_err(|e| Bad::Corrupt(e.to_string()))?;
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; BLOCK_SIZE_BYTES as usize];
    for (block_idx, &expected) in footer.block_crcs.iter().enumerate() {
        let len = block_len(length, block_idx as u64) as usize;
        file.read_exact(&mut buf[..len])?;
        check_block(block_idx as u64, &buf[..len], expected).map_err(|e| Bad::Corrupt(e.to_string()))?;
        pace.account(len as u64);
    }
    Ok(())
}

/// One full pass over the store.
pub fn pass(store: &ChunkStore, bytes_per_sec: Option<u64>) -> io::Result<Outcome> {
    let _one_at_a_time = store.scrubbing.lock().unwrap_or_else(|e| e.into_inner());
    let running = store.scrub.start();
    let mut pace = Pace::new(bytes_per_sec);
    let mut out = Outcome::default();
    let mut after = None;
    loop {
        let (ids, more) = store.list(after, MAX_LIST_ENTRIES as usize, None)?;
        for id in &ids {
            match verify(store, id, &mut pace) {
                Ok(()) => out.n_checked += 1,
                // Deleted since it was listed.
                Err(Bad::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(Bad::Io(e)) => {
                    out.n_checked += 1;
                    tracing::warn!("scrub: cannot read chunk {id}: {e}");
                    dfs_proto::msg::push_report_line(&mut out.lines, format!("chunk {id}: cannot be read: {e}"));
                }
                Err(Bad::Corrupt(why)) => {
                    out.n_checked += 1;
                    out.n_corrupt += 1;
                    let line = match store.quarantine(id) {
                        Ok(to) => format!("chunk {id} is corrupt ({why}); moved to {}", to.display()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => format!("chunk {id} is corrupt ({why}); cannot quarantine it: {e}"),
                    };
                    tracing::warn!("scrub: {line}");
                    dfs_proto::msg::push_report_line(&mut out.lines, line);
                }
            }
            running.checked(out.n_checked);
        }
        match (more, ids.last()) {
            (true, Some(last)) => after = Some(*last),
            _ => break,
        }
    }
    tracing::info!("scrub: {} chunk(s) checked, {} corrupt", out.n_checked, out.n_corrupt);
    running.finish(out.n_checked, out.n_corrupt);
    Ok(out)
}

/// One full pass over a segment store: every live record's blocks are read and checked; a
/// corrupt record is set aside with a tombstone (its bytes stay until compaction) and counted as
/// quarantined.
pub fn pass_segments(store: &SegmentStore, bytes_per_sec: Option<u64>) -> io::Result<Outcome> {
    let _one_at_a_time = store.scrubbing.lock().unwrap_or_else(|e| e.into_inner());
    let running = store.scrub.start();
    let mut pace = Pace::new(bytes_per_sec);
    let mut out = Outcome::default();
    for listed in listing(store) {
        out.n_checked += 1;
        running.checked(out.n_checked);
        match check_listed(store, &listed, &mut pace) {
            Finding::Sound => {}
            Finding::Corrupt(line) => {
                out.n_corrupt += 1;
                dfs_proto::msg::push_report_line(&mut out.lines, line);
            }
            Finding::Unreadable(line) => dfs_proto::msg::push_report_line(&mut out.lines, line),
        }
    }
    tracing::info!("scrub: {} chunk(s) checked, {} corrupt", out.n_checked, out.n_corrupt);
    running.finish(out.n_checked, out.n_corrupt);
    Ok(out)
}

/// A live record as a scrub pass listed it, checked later by [`check_listed`]: meanwhile it may
/// be deleted, set aside by a read, or stored again.
pub struct Listed {
    id: ChunkId,
    loc: crate::store::segments::Location,
}

/// What checking one listed record found; with a report line unless sound.
#[derive(Debug)]
pub enum Finding {
    Sound,
    Corrupt(String),
    Unreadable(String),
}

/// The records a scrub pass of a segment store goes through.
pub fn listing(store: &SegmentStore) -> Vec<Listed> {
    store.all().into_iter().map(|(id, loc)| Listed { id, loc }).collect()
}

/// Reads one listed record and checks every block; a corrupt record is set aside with a
/// tombstone (its bytes stay until compaction) and counted as quarantined, unless the index no
/// longer holds it.
pub fn check_listed(store: &SegmentStore, listed: &Listed, pace: &mut Pace) -> Finding {
    let Listed { id, loc } = listed;
    match store.verify(loc, |n| pace.account(n)) {
        Ok(Ok(())) => Finding::Sound,
        Ok(Err(why)) => {
            // Tests hold the pass here, between its listing and the tombstone, while a read
            // sets the copy aside and repair stores a fresh one.
            dfs_runtime::failpoint::pause_blocking("scrub-before-set-aside");
            let line = match store.remove_blocking(*id, loc, true) {
                Ok(true) => format!("chunk {id} is corrupt ({why}); set aside"),
                Ok(false) => format!("chunk {id} was corrupt ({why}); already set aside or deleted meanwhile"),
                Err(e) => format!("chunk {id} is corrupt ({why}); cannot set it aside: {e}"),
            };
            tracing::warn!("scrub: {line}");
            Finding::Corrupt(line)
        }
        Err(e) => {
            tracing::warn!("scrub: cannot read chunk {id}: {e}");
            Finding::Unreadable(format!("chunk {id}: cannot be read: {e}"))
        }
    }
}

impl Listed {
    pub fn id(&self) -> ChunkId {
        self.id
    }
}

fn pass_any(stores: &Stores, bytes_per_sec: Option<u64>) -> io::Result<Outcome> {
    match stores {
        Stores::Files(files) => pass(files, bytes_per_sec),
        Stores::Segments(segs) => pass_segments(segs, bytes_per_sec),
    }
}

/// A full-speed pass on a thread of its own, answered as a ScrubOk.
pub async fn scrub_now(stores: &Stores) -> io::Result<Msg> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stores = stores.clone();
    std::thread::Builder::new().name("scrub".into()).spawn(move || {
        let _ = tx.send(pass_any(&stores, None));
    })?;
    let out = rx.await.map_err(|_| io::Error::other("the scrub thread died"))??;
    Ok(Msg::ScrubOk { n_checked: out.n_checked, n_corrupt: out.n_corrupt, corrupt: out.lines })
}

/// Starts the background scrubber: a pass every `interval`, reading at most `bytes_per_sec`.
pub fn start_background(stores: Stores, interval: Duration, bytes_per_sec: u64) -> io::Result<()> {
    std::thread::Builder::new().name("scrub-bg".into()).spawn(move || loop {
        std::thread::sleep(interval);
        if let Err(e) = pass_any(&stores, Some(bytes_per_sec)) {
            tracing::warn!("background scrub failed: {e}");
        }
    })?;
    Ok(())
}
