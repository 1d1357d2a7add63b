//! The blocking file calls of the segment store, for the threads outside the runtimes (start-up,
//! the segment maker, compaction, checkpoints, scrub): open a segment file, positioned reads and
//! writes of whole buffers, fdatasync, and the fsync of the directory after a rename.

use dfs_runtime::aligned::AlignedBuf;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub(super) fn ctx<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Opens a segment file for direct I/O if the file system allows it.
pub(super) fn open_segment_file(path: &Path, create: bool, direct: bool) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create_new(true);
    }
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 };
    o.custom_flags(flags).open(path)
}

/// Blocking positioned read of exactly `len` bytes, for start-up.
pub(super) fn pread_exact(fd: &OwnedFd, buf: &mut AlignedBuf, len: usize, offset: u64) -> io::Result<()> {
    buf.set_len(0);
    let dst = buf.spare_all();
    let mut done = 0;
    while done < len {
        // SAFETY: pread into the buffer's own memory, within its capacity.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                dst[done..].as_mut_ptr().cast(),
                len - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match n {
            n if n < 0 => return Err(io::Error::last_os_error()),
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment ends early")),
            n => done += n as usize,
        }
    }
    buf.set_len(len);
    Ok(())
}

/// Blocking positioned write of all of `buf` (for threads outside the runtimes).
pub(super) fn pwrite_all(fd: &OwnedFd, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: pwrite from a buffer we borrow, on a descriptor the caller keeps open.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
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

/// Makes a directory's entries durable (after a file in it was renamed or removed).
pub(super) fn fsync_dir(dir_fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fsync on a descriptor the caller keeps open.
    if unsafe { libc::fsync(dir_fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn fdatasync(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fdatasync on a descriptor the caller keeps open.
    if unsafe { libc::fdatasync(fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
