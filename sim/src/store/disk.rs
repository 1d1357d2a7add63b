//! A simulated disk under the node's real segment store (`dfs_node::store::segments`). It
//! keeps, for every file, what reads see now and what a crash would leave, sector by sector:
//! - a write is seen at once, and is durable only after a datasync of its file that began
//!   after it; at a crash each sector written since its file's last sync is kept or lost on
//!   its own (a write larger than a sector is torn);
//! - a file created, renamed or removed keeps that change across a crash only after a sync of
//!   its directory; at a crash the changes since then survive as a prefix, in order, as a
//!   journal commits them;
//! - a failed writeback ([`SimDisk::fail_writeback`]) drops the sectors not yet synced from
//!   what a crash leaves while reads still see them, and reports the error once to every
//!   handle open on the file, at that handle's next datasync (as Linux reports it, once per
//!   open file);
//! - the disk holds `capacity` bytes, then refuses to grow a file with ENOSPC;
//! - a sector can rot ([`SimDisk::rot`]): one of its bytes flips, now and after a crash;
//! - the power can go after a given number of calls ([`SimDisk::power_off_after`]): every call
//!   from then on fails, so a crash lands between any two calls the store makes.

use dfs_node::store::segments::disk::{Disk, DiskFile, IoFuture};
use dfs_runtime::aligned::AlignedBuf;
use rand::RngExt;
use rand_xorshift::XorShiftRng;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const SECTOR: usize = 512;

#[derive(Debug, Default)]
struct Inode {
    /// What reads see.
    data: Vec<u8>,
    /// What a crash leaves.
    durable: Vec<u8>,
    /// Sectors written since the last sync (or failed writeback).
    dirty: BTreeSet<usize>,
    /// Bumped by each failed writeback; a handle reports it once.
    errseq: u64,
    errno: i32,
}

/// A change to the directory not yet made durable.
#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Debug, Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Names as the running system sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as a crash leaves them when none of `pending` survives.
    durable_names: BTreeMap<PathBuf, u64>,
    pending: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    capacity: u64,
    /// Calls until the power goes.
    power_left: Option<u64>,
    off: bool,
    /// Calls made, for the trace.
    n_calls: u64,
    /// Writes and allocations refused for want of space.
    n_full: u64,
}

impl State {
    /// Counts a call, and fails it once the power is off.
    fn call(&mut self) -> io::Result<()> {
        self.n_calls += 1;
        if let Some(left) = self.power_left.as_mut() {
            if *left == 0 {
                self.off = true;
            } else {
                *left -= 1;
            }
        }
        if self.off {
            return Err(io::Error::other("the simulated disk lost power"));
        }
        Ok(())
    }

    fn used(&self) -> u64 {
        let named: BTreeSet<u64> = self.names.values().copied().collect();
        named.iter().filter_map(|ino| self.inodes.get(ino)).map(|i| i.data.len() as u64).sum()
    }

    /// Grows inode `ino` to `len` bytes, within the capacity.
    fn grow(&mut self, ino: u64, len: u64) -> io::Result<()> {
        let have = self.inodes[&ino].data.len() as u64;
        if len <= have {
            return Ok(());
        }
        if self.used() + (len - have) > self.capacity {
            self.n_full += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inodes.get_mut(&ino).expect("an open file's inode").data.resize(len as usize, 0);
        Ok(())
    }

    fn apply(names: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
        match op {
            DirOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            DirOp::Unlink(p) => {
                names.remove(p);
            }
            DirOp::Rename(from, to) => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }

    fn change(&mut self, op: DirOp) {
        State::apply(&mut self.names, &op);
        self.pending.push(op);
    }
}

/// The simulated disk; cheap to clone (clones share the disk).
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    pub fn new(capacity: u64) -> SimDisk {
        SimDisk { state: Arc::new(Mutex::new(State { capacity, next_ino: 1, ..State::default() })) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The power goes after `calls` more calls.
    pub fn power_off_after(&self, calls: u64) {
        self.lock().power_left = Some(calls);
    }

    pub fn is_off(&self) -> bool {
        self.lock().off
    }

    pub fn n_calls(&self) -> u64 {
        self.lock().n_calls
    }

    /// Writes and allocations refused so far because the disk was full.
    pub fn n_full(&self) -> u64 {
        self.lock().n_full
    }

    /// A crash and a restart: every sector not synced is kept or lost at random, the directory
    /// changes not synced survive as a random prefix, handles are gone, and the power is back.
    pub fn crash(&self, rng: &mut XorShiftRng) {
        let mut s = self.lock();
        for inode in s.inodes.values_mut() {
            for &sector in &inode.dirty {
                if rng.random_bool(0.5) {
                    let from = sector * SECTOR;
                    let to = ((sector + 1) * SECTOR).min(inode.data.len());
                    if inode.durable.len() < to {
                        inode.durable.resize(to, 0);
                    }
                    inode.durable[from..to].copy_from_slice(&inode.data[from..to]);
                }
            }
            inode.dirty.clear();
            inode.data = inode.durable.clone();
        }
        let kept = rng.random_range(0..=s.pending.len());
        let mut names = s.durable_names.clone();
        for op in &s.pending[..kept] {
            State::apply(&mut names, op);
        }
        s.pending.clear();
        s.durable_names = names.clone();
        s.names = names;
        let named: BTreeSet<u64> = s.names.values().copied().collect();
        s.inodes.retain(|ino, _| named.contains(ino));
        s.power_left = None;
        s.off = false;
    }

    /// The kernel's writeback of a file with sectors not yet synced fails (EIO, or ENOSPC on a
    /// thin device): those sectors are lost to a crash although reads still see them, and every
    /// handle open on the file reports the error once. The file is picked by `pick` among the
    /// candidates; false if none has unsynced sectors.
    pub fn fail_writeback(&self, errno: i32, pick: impl FnOnce(usize) -> usize) -> bool {
        let mut s = self.lock();
        let candidates: Vec<u64> = s.inodes.iter().filter(|(_, i)| !i.dirty.is_empty()).map(|(ino, _)| *ino).collect();
        if candidates.is_empty() {
            return false;
        }
        let ino = candidates[pick(candidates.len())];
        let inode = s.inodes.get_mut(&ino).expect("a candidate inode");
        inode.dirty.clear();
        inode.errseq += 1;
        inode.errno = errno;
        true
    }

    /// Flips one byte in a sector of `path` within `range`, now and after any crash.
    pub fn rot(&self, path: &Path, range: std::ops::Range<u64>, rng: &mut XorShiftRng) -> bool {
        let mut s = self.lock();
        let Some(&ino) = s.names.get(path) else { return false };
        if range.is_empty() {
            return false;
        }
        let at = rng.random_range(range) as usize;
        let inode = s.inodes.get_mut(&ino).expect("a named inode");
        if at >= inode.data.len() {
            return false;
        }
        inode.data[at] ^= 0x5a;
        if at < inode.durable.len() && !inode.dirty.contains(&(at / SECTOR)) {
            inode.durable[at] ^= 0x5a;
        }
        true
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, create: bool, _direct: bool) -> io::Result<Arc<dyn DiskFile>> {
        let mut s = self.lock();
        s.call()?;
        let ino = match (s.names.get(path).copied(), create) {
            (Some(_), true) => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            (Some(ino), false) => ino,
            (None, false) => return Err(io::Error::from(io::ErrorKind::NotFound)),
            (None, true) => {
                let parent = path.parent().unwrap_or(Path::new("/"));
                if !s.dirs.contains(parent) {
                    return Err(io::Error::from(io::ErrorKind::NotFound));
                }
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.change(DirOp::Link(path.to_path_buf(), ino));
                ino
            }
        };
        let seen = s.inodes[&ino].errseq;
        Ok(Arc::new(SimFile { state: self.state.clone(), ino, seen: AtomicU64::new(seen) }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        for p in path.ancestors() {
            s.dirs.insert(p.to_path_buf());
        }
        Ok(())
    }

    fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        s.names.contains_key(path) || s.dirs.contains(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        s.call()?;
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        if !s.names.contains_key(from) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        s.change(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        if !s.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        s.change(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        s.durable_names = s.names.clone();
        s.pending.clear();
        Ok(())
    }

    fn free_bytes(&self, _path: &Path) -> io::Result<u64> {
        let s = self.lock();
        Ok(s.capacity.saturating_sub(s.used()))
    }
}

/// One open handle of a simulated file.
#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    /// The writeback errors this handle has reported.
    seen: AtomicU64,
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, dst: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        let inode = &s.inodes[&self.ino];
        let end = offset as usize + dst.len();
        if end > inode.data.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment ends early"));
        }
        dst.copy_from_slice(&inode.data[offset as usize..end]);
        Ok(())
    }

    fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        let end = offset + buf.len() as u64;
        s.grow(self.ino, end)?;
        let inode = s.inodes.get_mut(&self.ino).expect("an open file's inode");
        inode.data[offset as usize..end as usize].copy_from_slice(buf);
        if !buf.is_empty() {
            inode.dirty.extend(offset as usize / SECTOR..=(end as usize - 1) / SECTOR);
        }
        Ok(())
    }
}

impl DiskFile for SimFile {
    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        s.grow(self.ino, len)?;
        let inode = s.inodes.get_mut(&self.ino).expect("an open file's inode");
        // The space itself is reserved at once; it reads as zeros either way.
        if inode.durable.len() < len as usize {
            inode.durable.resize(len as usize, 0);
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let mut s = self.lock();
        s.call()?;
        Ok(s.inodes[&self.ino].data.len() as u64)
    }

    fn read_exact_into(&self, buf: &mut AlignedBuf, len: usize, offset: u64) -> io::Result<()> {
        buf.set_len(0);
        self.read(&mut buf.spare_all()[..len], offset)?;
        buf.set_len(len);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset)
    }

    fn datasync(&self) -> io::Result<()> {
        let mut s = self.lock();
        s.call()?;
        let inode = s.inodes.get_mut(&self.ino).expect("an open file's inode");
        if self.seen.load(Ordering::Acquire) < inode.errseq {
            self.seen.store(inode.errseq, Ordering::Release);
            return Err(io::Error::from_raw_os_error(inode.errno));
        }
        if inode.durable.len() < inode.data.len() {
            inode.durable.resize(inode.data.len(), 0);
        }
        for &sector in &inode.dirty {
            let from = sector * SECTOR;
            let to = ((sector + 1) * SECTOR).min(inode.data.len());
            inode.durable[from..to].copy_from_slice(&inode.data[from..to]);
        }
        inode.dirty.clear();
        Ok(())
    }

    fn write_owned(self: Arc<Self>, buf: AlignedBuf, offset: u64) -> IoFuture {
        let res = self.write(&buf, offset);
        Box::pin(std::future::ready((res, buf)))
    }

    fn read_owned(self: Arc<Self>, mut buf: AlignedBuf, len: usize, offset: u64) -> IoFuture {
        let res = self.read_exact_into(&mut buf, len, offset);
        Box::pin(std::future::ready((res, buf)))
    }
}
