//! io_uring operations tokio-uring does not offer (fsync of a raw descriptor, rename with flags,
//! splice), built with the `io-uring` crate and submitted on the tokio-uring runtime as raw
//! oneshot operations.
//!
//! Each operation is given `keep`: whatever must outlive it (descriptors, path strings). The
//! runtime holds it until the kernel completes the operation, even if the future is dropped
//! first, so no descriptor number or buffer is reused under an operation still in flight.

use std::ffi::CString;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

struct ResultOf<D>(PhantomData<D>);

impl<D> OneshotOutputTransform for ResultOf<D> {
    type Output = io::Result<u32>;
    type StoredData = D;

    fn transform_oneshot_output(self, _keep: D, cqe: io_uring::cqueue::Entry) -> io::Result<u32> {
        if cqe.result() >= 0 {
            Ok(cqe.result() as u32)
        } else {
            Err(io::Error::from_raw_os_error(-cqe.result()))
        }
    }
}

/// Submits `sqe` and waits for its result.
///
/// # Safety
/// Every pointer and descriptor in `sqe` must stay valid while `keep` lives.
pub async unsafe fn submit<D: Unpin + 'static>(keep: D, sqe: io_uring::squeue::Entry) -> io::Result<u32> {
    UnsubmittedOneshot::new(keep, ResultOf(PhantomData), sqe).submit().await
}

/// fsync(2) of a descriptor shared with the rest of the process (a directory, typically).
pub async fn fsync(fd: &Arc<OwnedFd>) -> io::Result<()> {
    if crate::backend::backend() == crate::backend::Backend::Epoll {
        // SAFETY: fsync on a descriptor the Arc keeps open.
        return if unsafe { libc::fsync(fd.as_raw_fd()) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    }
    let sqe = io_uring::opcode::Fsync::new(io_uring::types::Fd(fd.as_raw_fd())).build();
    // SAFETY: the operation holds a clone of the Arc, so the descriptor stays open until it ends.
    unsafe { submit(fd.clone(), sqe) }.await.map(drop)
}

/// renameat2(2) with RENAME_NOREPLACE: moves `old_name` in `old_dir` to `new_name` in `new_dir`,
/// failing with EEXIST instead of replacing an existing file.
pub async fn rename_noreplace(
    old_dir: &Arc<OwnedFd>,
    old_name: &str,
    new_dir: &Arc<OwnedFd>,
    new_name: &str,
) -> io::Result<()> {
    let cstr = |s: &str| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"));
    let (old_c, new_c) = (cstr(old_name)?, cstr(new_name)?);
    if crate::backend::backend() == crate::backend::Backend::Epoll {
        // SAFETY: renameat2 with two descriptors kept open by their Arcs and two NUL-terminated
        // strings that live across the call.
        let rc = unsafe {
            libc::renameat2(
                old_dir.as_raw_fd(),
                old_c.as_ptr(),
                new_dir.as_raw_fd(),
                new_c.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        return if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    }
    let sqe = io_uring::opcode::RenameAt::new(
        io_uring::types::Fd(old_dir.as_raw_fd()),
        old_c.as_ptr(),
        io_uring::types::Fd(new_dir.as_raw_fd()),
        new_c.as_ptr(),
    )
    .flags(libc::RENAME_NOREPLACE)
    .build();
    // SAFETY: the strings and both descriptors move into the operation's kept data; a CString's
    // heap buffer does not move when the CString does.
    unsafe { submit((old_dir.clone(), new_dir.clone(), old_c, new_c), sqe) }.await.map(drop)
}

struct WithKept<D>(PhantomData<D>);

impl<D> OneshotOutputTransform for WithKept<D> {
    type Output = (io::Result<u32>, D);
    type StoredData = D;

    fn transform_oneshot_output(self, keep: D, cqe: io_uring::cqueue::Entry) -> (io::Result<u32>, D) {
        let result =
            if cqe.result() >= 0 { Ok(cqe.result() as u32) } else { Err(io::Error::from_raw_os_error(-cqe.result())) };
        (result, keep)
    }
}

fn short(what: &str, done: usize, wanted: usize) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("short {what}: {done} of {wanted} bytes"))
}

/// Writes all of `buf`'s data at `offset` of a descriptor shared with other threads (a segment
/// file opened with O_DIRECT: the buffer, its length and the offset are aligned). A short write
/// is an error: continuing it would break the alignment.
pub async fn write_all_at(
    fd: &Arc<OwnedFd>,
    buf: crate::aligned::AlignedBuf,
    offset: u64,
) -> (io::Result<()>, crate::aligned::AlignedBuf) {
    let len = buf.len();
    if crate::backend::backend() == crate::backend::Backend::Epoll {
        // SAFETY: pwrite from a buffer we own, on a descriptor the Arc keeps open.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), len, offset as libc::off_t) };
        let result = match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize == len => Ok(()),
            n => Err(short("write", n as usize, len)),
        };
        return (result, buf);
    }
    let sqe = io_uring::opcode::Write::new(io_uring::types::Fd(fd.as_raw_fd()), buf.as_ptr(), len as u32)
        .offset(offset)
        .build();
    // The buffer and a clone of the descriptor's Arc are the operation's kept data, so both
    // stay valid until the kernel is done, even if this future is dropped.
    let (result, (_fd, buf)) = UnsubmittedOneshot::new((fd.clone(), buf), WithKept(PhantomData), sqe).submit().await;
    let result = match result {
        Ok(n) if n as usize == len => Ok(()),
        Ok(n) => Err(short("write", n as usize, len)),
        Err(e) => Err(e),
    };
    (result, buf)
}

/// Reads exactly `len` bytes at `offset` into the front of `buf` (aligned, as for
/// [`write_all_at`]); the buffer's data is then those bytes.
pub async fn read_exact_at(
    fd: &Arc<OwnedFd>,
    mut buf: crate::aligned::AlignedBuf,
    len: usize,
    offset: u64,
) -> (io::Result<()>, crate::aligned::AlignedBuf) {
    assert!(len <= buf.capacity(), "read of {len} bytes into a buffer of {}", buf.capacity());
    buf.set_len(0);
    if crate::backend::backend() == crate::backend::Backend::Epoll {
        let dst = buf.spare_all().as_mut_ptr();
        // SAFETY: pread into the buffer's own capacity, on a descriptor the Arc keeps open.
        let n = unsafe { libc::pread(fd.as_raw_fd(), dst.cast(), len, offset as libc::off_t) };
        let result = match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize == len => {
                buf.set_len(len);
                Ok(())
            }
            n => Err(short("read", n as usize, len)),
        };
        return (result, buf);
    }
    let dst = buf.spare_all().as_mut_ptr();
    let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(fd.as_raw_fd()), dst, len as u32).offset(offset).build();
    // Kept as in write_all_at; the kernel writes only into the buffer's capacity.
    let (result, (_fd, mut buf)) =
        UnsubmittedOneshot::new((fd.clone(), buf), WithKept(PhantomData), sqe).submit().await;
    let result = match result {
        Ok(n) if n as usize == len => {
            buf.set_len(len);
            Ok(())
        }
        Ok(n) => Err(short("read", n as usize, len)),
        Err(e) => Err(e),
    };
    (result, buf)
}
