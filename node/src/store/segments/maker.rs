//! The maker of segment files: a new segment is made under a temporary name (allocated, and
//! written through with zeros if so configured), its header made durable, then renamed into
//! place; a spare is made ahead of need on a `segment-maker` thread, paced so that its zeros do
//! not crowd out the writes and syncs of the segment being written. A spare made before a
//! record larger than a segment is renumbered before anything is written to it.

use super::disk::{ctx, Disk};
use super::format::{encode_segment_header, segment_name, SEGMENT_HEADER_BYTES};
use super::segment::Segment;
use super::{SegmentStore, Threads, Writer};
use dfs_runtime::aligned::AlignedBuf;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a new segment's space is prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Prefill {
    /// fallocate only: the space is reserved but unwritten, so the first write to each part of
    /// it also converts the extent, a metadata change every fdatasync must then commit.
    Allocate,
    /// fallocate, then write zeros through: every later record write lands in space that is
    /// already written, which ext4 takes inline from io_uring and syncs without metadata.
    Zero,
}

/// Zeros are written into a new segment this much at a time.
const PREFILL_PIECE_BYTES: usize = 1 << 20;
/// The pause before each piece of a prefill that is well ahead of need: 1 MiB per 32 ms, about
/// 32 MiB/s, so the device serves foreground writes and syncs between the pieces.
const PREFILL_PACED_PAUSE: Duration = Duration::from_millis(32);
/// A paced prefill must be done this long before the active segment is expected to fill up.
const PREFILL_MARGIN: Duration = Duration::from_secs(1);

/// Whether the maker may pause before the next piece of zeros: no writer waits for the spare,
/// and at the rate the active segment fills (bytes per second since the spare was begun), its
/// `free` bytes last more than twice as long as the `remaining` zeros take at the paced rate,
/// plus a margin. Otherwise it writes flat out.
fn prefill_can_pace(writer_waiting: bool, free: u64, fill_rate: f64, remaining: u64) -> bool {
    if writer_waiting {
        return false;
    }
    let paced_rate = PREFILL_PIECE_BYTES as f64 / PREFILL_PACED_PAUSE.as_secs_f64();
    let paced_secs = remaining as f64 / paced_rate;
    let secs_until_full = if fill_rate > 0.0 { free as f64 / fill_rate } else { f64::INFINITY };
    secs_until_full > 2.0 * paced_secs + PREFILL_MARGIN.as_secs_f64()
}

/// Makes segment files: on the writer's path when no spare is ready, else on a thread of its
/// own ahead of need.
pub(super) struct SegmentMaker {
    pub(super) dir: PathBuf,
    pub(super) disk: Arc<dyn Disk>,
    pub(super) direct: bool,
    pub(super) prefill: Prefill,
    pub(super) reported: AtomicBool,
}

impl SegmentMaker {
    /// Makes segment `seq` of `size` bytes, prefilled as configured unless `prefill` is false
    /// (a segment made for one record larger than a segment: writing it twice would halve
    /// what the disk gives a large upload).
    ///
    /// Zeros go out one piece at a time. Before each piece `pace(bytes still to write)` says
    /// whether the segment is far enough ahead of need to wait before it: a prefill written flat
    /// out fills the device's queue, and every foreground fdatasync on this disk waits behind it.
    pub(super) fn make(
        &self,
        seq: u64,
        size: u64,
        prefill: bool,
        pace: &dyn Fn(u64) -> bool,
    ) -> io::Result<Arc<Segment>> {
        // Made under a temporary name and renamed into place only once its header is durable,
        // so a crash while it is made leaves nothing that start-up would take for a segment.
        let path = self.dir.join(segment_name(seq));
        let temp = self.dir.join(format!(".{}.tmp", segment_name(seq)));
        let _ = self.disk.remove(&temp);
        let fd = self.disk.open(&temp, true, self.direct).map_err(ctx("cannot create", &temp))?;
        let result = (|| {
            fd.allocate(size)?;
            if prefill && self.prefill == Prefill::Zero {
                let mut zeros = AlignedBuf::zeroed(PREFILL_PIECE_BYTES);
                zeros.set_len(zeros.capacity());
                let mut at = SEGMENT_HEADER_BYTES;
                while at < size {
                    if pace(size - at) {
                        std::thread::sleep(PREFILL_PACED_PAUSE);
                    }
                    let len = (size - at).min(zeros.len() as u64) as usize;
                    fd.write_all_at(&zeros[..len], at)?;
                    at += len as u64;
                }
            }
            fd.write_all_at(&encode_segment_header(seq, size), 0)?;
            fd.datasync()?;
            self.disk.rename(&temp, &path)?;
            self.disk.sync_dir(&self.dir)
        })();
        if let Err(e) = result {
            drop(fd);
            let _ = self.disk.remove(&temp);
            let _ = self.disk.remove(&path);
            return Err(io::Error::new(e.kind(), format!("cannot create segment {}: {e}", path.display())));
        }
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "segments: writing {} with{} O_DIRECT, {} MiB per segment, prefilled: {:?}",
                self.dir.display(),
                if self.direct { "" } else { "out" },
                size >> 20,
                self.prefill
            );
        }
        let buffered = self.disk.open(&path, false, false).map_err(ctx("cannot open", &path))?;
        Ok(Arc::new(Segment::new(seq, fd, buffered, size, path)))
    }
}

impl SegmentMaker {
    /// Gives `spare` (made ahead of need, nothing written to it yet) the number `seq`: its
    /// header is rewritten and made durable, then the file is renamed and the directory synced.
    /// A crash in between leaves a segment whose header and name disagree and which holds no
    /// record: start-up removes it.
    pub(super) fn renumber(&self, spare: &Segment, seq: u64) -> io::Result<Arc<Segment>> {
        let path = self.dir.join(segment_name(seq));
        if self.disk.exists(&path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists already", path.display())));
        }
        spare.fd.write_all_at(&encode_segment_header(seq, spare.size), 0)?;
        spare.fd.datasync()?;
        self.disk.rename(&spare.path, &path)?;
        self.disk.sync_dir(&self.dir)?;
        Ok(Arc::new(spare.renumbered(seq, path)))
    }
}

impl SegmentStore {
    /// Starts making the next segment on a thread of its own, unless one is ready or under way.
    pub(super) fn prepare_spare(&self, w: &mut Writer) {
        if w.spare.is_some() || w.preparing || self.threads == Threads::None {
            return;
        }
        w.preparing = true;
        let seq = w.next_seq;
        w.next_seq += 1;
        let (maker, writer, size) = (self.maker.clone(), self.writer.clone(), self.segment_bytes);
        let ready = self.spare_ready.clone();
        let made = std::thread::Builder::new().name("segment-maker".into()).spawn(move || {
            let started = std::time::Instant::now();
            let (first_active, first_offset) = {
                let w = writer.lock().unwrap_or_else(|e| e.into_inner());
                (w.active.as_ref().map(|s| s.seq), w.next_offset)
            };
            let pace = |remaining: u64| {
                let w = writer.lock().unwrap_or_else(|e| e.into_inner());
                let still_active = w.active.as_ref().filter(|s| Some(s.seq) == first_active);
                let Some(active) = still_active else { return false };
                let fill_rate = (w.next_offset - first_offset) as f64 / started.elapsed().as_secs_f64().max(1e-3);
                prefill_can_pace(w.waiting > 0, active.size.saturating_sub(w.next_offset), fill_rate, remaining)
            };
            let made = maker.make(seq, size, true, &pace);
            let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
            w.preparing = false;
            match made {
                Ok(segment) => w.spare = Some(segment),
                Err(e) => tracing::warn!("segments: cannot make a spare segment ahead of need: {e}"),
            }
            ready.notify_all();
        });
        if let Err(e) = made {
            w.preparing = false;
            tracing::warn!("segments: cannot start the segment maker thread: {e}");
        }
    }
}

impl SegmentStore {
    /// Makes the spare segment now, on this thread, unless one is ready: for a store opened
    /// with [`Threads::None`], where no segment-maker thread makes it ahead of need (the
    /// simulator calls this where the thread would have run).
    pub fn make_spare_now(&self) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.spare.is_some() || w.preparing {
            return Ok(());
        }
        let seq = w.next_seq;
        w.next_seq += 1;
        w.spare = Some(self.maker.make(seq, self.segment_bytes, true, &|_| false)?);
        Ok(())
    }
}

/// Deletes a segment no record was ever written to (a spare made before a stop).
pub(super) fn remove_unused(disk: &dyn Disk, segment: &Segment) {
    match disk.remove(&segment.path) {
        Ok(()) => tracing::info!("segments: removed {}, which holds no record", segment.path.display()),
        Err(e) => tracing::warn!("segments: cannot remove unused {}: {e}", segment.path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefill_paces_only_while_well_ahead_of_need() {
        const MIB: u64 = 1 << 20;
        // Nothing is being written: plenty of time.
        assert!(prefill_can_pace(false, 60 * MIB, 0.0, 63 * MIB));
        // Small records at 8 MiB/s: 7.5 s of room, the paced rest takes about 2 s.
        assert!(prefill_can_pace(false, 60 * MIB, 8.0 * MIB as f64, 63 * MIB));
        // A writer is already waiting for the spare.
        assert!(!prefill_can_pace(true, 60 * MIB, 0.0, 63 * MIB));
        // Large records at 100 MiB/s fill the active segment in 0.6 s.
        assert!(!prefill_can_pace(false, 60 * MIB, 100.0 * MIB as f64, 63 * MIB));
        // The active segment is nearly full.
        assert!(!prefill_can_pace(false, 4 * MIB, 8.0 * MIB as f64, 10 * MIB));
        assert!(!prefill_can_pace(false, 0, 1.0, MIB));
    }
}
