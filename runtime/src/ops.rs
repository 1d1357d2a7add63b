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
