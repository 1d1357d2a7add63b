//! The segment store's disk: every file and directory call the store makes goes through
//! [`Disk`] and [`DiskFile`]. The node runs on [`RealDisk`] (positioned reads and writes,
//! fdatasync, rename, the fsync of a directory; io_uring on the runtimes); the simulator
//! (`dfs-sim`) runs the same store over a disk of its own that tears writes, loses what was
//! not synced at a crash, reports a writeback error once to each open file, fills up and rots
//! sectors.
//!
//! The contract the store relies on, and a simulated disk must keep:
//! - a write that returned is seen by every later read of the file, through any handle;
//! - it survives a crash only once a [`DiskFile::datasync`] of the file that began after it
//!   returned Ok (through any handle of the file);
//! - a file created, renamed or removed keeps that change across a crash only once
//!   [`Disk::sync_dir`] of its directory returned Ok after it;
//! - a failed writeback is reported once to each handle open at the time, by its next
//!   datasync; the data it covered may be lost.

use dfs_runtime::aligned::AlignedBuf;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// A read or write on the runtime: the buffer goes in and comes back with the result.
pub type IoFuture = Pin<Box<dyn Future<Output = (io::Result<()>, AlignedBuf)>>>;

/// The directory calls of the store.
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Opens the file at `path` for reading and writing: a new one with `create` (an error if
    /// it exists), with O_DIRECT when `direct` (an error where the file system refuses it).
    fn open(&self, path: &Path, create: bool, direct: bool) -> io::Result<Arc<dyn DiskFile>>;
    /// Makes `path` and its parents, as directories.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The absolute form of `path` (which exists).
    fn resolve(&self, path: &Path) -> io::Result<PathBuf>;
    fn exists(&self, path: &Path) -> bool;
    /// The names of the entries of directory `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes directory `dir`'s entries durable: files created, renamed or removed in it.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes free for the store on the file system holding `path`.
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
}

/// One open file (one handle: a writeback error is reported to each handle once).
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Reserves `len` bytes of space for the file (fallocate); the file is then at least that
    /// long, and the space reads as zeros until written.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads exactly `len` bytes at `offset` into the front of `buf` (blocking); the buffer's
    /// data is then those bytes.
    fn read_exact_into(&self, buf: &mut AlignedBuf, len: usize, offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` (blocking).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: every write that completed before the call is durable when it returns Ok.
    fn datasync(&self) -> io::Result<()>;
    /// [`DiskFile::write_all_at`] on the runtime, with a buffer it owns until it is done.
    fn write_owned(self: Arc<Self>, buf: AlignedBuf, offset: u64) -> IoFuture;
    /// [`DiskFile::read_exact_into`] on the runtime.
    fn read_owned(self: Arc<Self>, buf: AlignedBuf, len: usize, offset: u64) -> IoFuture;
}

/// The host's file system.
#[derive(Debug, Default)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn open(&self, path: &Path, create: bool, direct: bool) -> io::Result<Arc<dyn DiskFile>> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(true);
        if create {
            o.create_new(true);
        }
        let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
        let file = o.custom_flags(flags).open(path)?;
        Ok(Arc::new(RealFile { fd: Arc::new(file.into()) }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        path.canonicalize()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let vfs = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok(vfs.blocks_available() as u64 * vfs.fragment_size() as u64)
    }
}

/// A file of the host's file system.
#[derive(Debug)]
pub struct RealFile {
    fd: Arc<OwnedFd>,
}

impl DiskFile for RealFile {
    fn allocate(&self, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on a descriptor we own.
        if unsafe { libc::fallocate(self.fd.as_raw_fd(), 0, 0, len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(nix::sys::stat::fstat(self.fd.as_raw_fd()).map_err(io::Error::from)?.st_size as u64)
    }

    fn read_exact_into(&self, buf: &mut AlignedBuf, len: usize, offset: u64) -> io::Result<()> {
        buf.set_len(0);
        let dst = buf.spare_all();
        assert!(len <= dst.len(), "a read of {len} bytes into a buffer of {}", dst.len());
        let mut done = 0;
        while done < len {
            // SAFETY: pread into the buffer's own memory, within its capacity.
            let n = unsafe {
                libc::pread(
                    self.fd.as_raw_fd(),
                    dst[done..].as_mut_ptr().cast(),
                    len - done,
                    (offset + done as u64) as libc::off_t,
                )
            };
            match n {
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment ends early")),
                n => done += n as usize,
            }
        }
        buf.set_len(len);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: pwrite from a buffer we borrow, on a descriptor we keep open.
            let n = unsafe {
                libc::pwrite(
                    self.fd.as_raw_fd(),
                    buf[done..].as_ptr().cast(),
                    buf.len() - done,
                    (offset + done as u64) as libc::off_t,
                )
            };
            match n {
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "segment write wrote nothing")),
                n => done += n as usize,
            }
        }
        Ok(())
    }

    fn datasync(&self) -> io::Result<()> {
        // SAFETY: fdatasync on a descriptor we keep open.
        if unsafe { libc::fdatasync(self.fd.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn write_owned(self: Arc<Self>, buf: AlignedBuf, offset: u64) -> IoFuture {
        Box::pin(async move { dfs_runtime::ops::write_all_at(&self.fd, buf, offset).await })
    }

    fn read_owned(self: Arc<Self>, buf: AlignedBuf, len: usize, offset: u64) -> IoFuture {
        Box::pin(async move { dfs_runtime::ops::read_exact_at(&self.fd, buf, len, offset).await })
    }
}

/// Adds what was done, and to which file, to an error of a file call.
pub(super) fn ctx<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}
