//! The I/O backend of engine and node: io_uring through tokio-uring where the kernel allows
//! it, or, where io_uring is disabled (`/proc/sys/kernel/io_uring_disabled`, a container's
//! seccomp profile) or `DFS_IO=epoll` asks for it, plain epoll sockets and positioned file
//! system calls on tokio's current-thread runtime. The choice is made once at start-up and
//! logged once; both backends run the same code above this module, with the same owned-buffer
//! calls (a buffer goes in and comes back with the result), one runtime per core and tasks
//! that stay on their thread.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::OnceLock;
use tokio_uring::buf::{BoundedBuf, BoundedBufMut};

/// The I/O backend in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring, through tokio-uring.
    Uring,
    /// epoll sockets and blocking positioned file calls, through tokio.
    Epoll,
}

static BACKEND: OnceLock<Backend> = OnceLock::new();

/// The environment variable that forces the fallback: `DFS_IO=epoll`.
pub const IO_ENV: &str = "DFS_IO";

/// `DFS_IO` names no backend.
#[derive(Debug, thiserror::Error)]
pub enum BadBackend {
    #[error("{IO_ENV}={0:?}: expected `uring` or `epoll`")]
    Unknown(String),
    #[error("{IO_ENV}: {0}")]
    Unreadable(std::env::VarError),
}

/// Chooses the backend (once; later calls return the first choice) and logs the choice.
/// Err: `DFS_IO` holds something other than `uring` or `epoll`.
pub fn select() -> Result<Backend, BadBackend> {
    match std::env::var(IO_ENV).as_deref() {
        Ok("epoll") | Ok("uring") | Err(std::env::VarError::NotPresent) => {}
        Ok(other) => return Err(BadBackend::Unknown(other.to_string())),
        Err(e) => return Err(BadBackend::Unreadable(e.clone())),
    }
    Ok(*BACKEND.get_or_init(|| {
        if std::env::var(IO_ENV).as_deref() == Ok("epoll") {
            tracing::warn!("I/O backend: epoll, as {IO_ENV}=epoll asks (io_uring not used)");
            return Backend::Epoll;
        }
        match io_uring::IoUring::new(8) {
            Ok(_) => {
                tracing::info!("I/O backend: io_uring");
                Backend::Uring
            }
            Err(e) => {
                tracing::warn!(
                    "I/O backend: epoll, because io_uring is not available to this process ({e}); \
                     check /proc/sys/kernel/io_uring_disabled and the container's seccomp profile"
                );
                Backend::Epoll
            }
        }
    }))
}

/// The backend chosen by [`select`] (io_uring if nothing was chosen yet, as in unit tests).
pub fn backend() -> Backend {
    BACKEND.get().copied().unwrap_or(Backend::Uring)
}

/// Runs `future` to completion on a runtime of the chosen backend, on this thread.
pub fn start<F: Future>(future: F) -> F::Output {
    match backend() {
        Backend::Uring => tokio_uring::start(future),
        Backend::Epoll => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread tokio runtime builds");
            tokio::task::LocalSet::new().block_on(&rt, future)
        }
    }
}

/// Spawns a task on the current thread's runtime (either backend).
pub fn spawn<T: 'static>(task: impl Future<Output = T> + 'static) -> tokio::task::JoinHandle<T> {
    // tokio-uring's own spawn is a LocalSet spawn as well.
    tokio::task::spawn_local(task)
}

/// A result with the buffer handed back, as io_uring operations return it.
pub type BufResult<T, B> = (io::Result<T>, B);

pub mod net {
    use super::*;

    pub enum TcpStream {
        Uring(tokio_uring::net::TcpStream),
        Epoll(tokio::net::TcpStream),
    }

    impl TcpStream {
        pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
            match backend() {
                Backend::Uring => tokio_uring::net::TcpStream::connect(addr).await.map(TcpStream::Uring),
                Backend::Epoll => tokio::net::TcpStream::connect(addr).await.map(TcpStream::Epoll),
            }
        }

        pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
            match self {
                TcpStream::Uring(s) => s.set_nodelay(on),
                TcpStream::Epoll(s) => s.set_nodelay(on),
            }
        }

        /// Reads into the buffer (slice) from its start, as tokio-uring does; returns how many
        /// bytes came.
        pub async fn read<T: BoundedBufMut>(&self, mut buf: T) -> BufResult<usize, T> {
            match self {
                TcpStream::Uring(s) => s.read(buf).await,
                TcpStream::Epoll(s) => {
                    let len = buf.bytes_total();
                    loop {
                        if let Err(e) = s.readable().await {
                            return (Err(e), buf);
                        }
                        // SAFETY: the buffer owns `bytes_total` bytes from its stable pointer,
                        // and no one else touches them while we hold it.
                        let dst = unsafe { std::slice::from_raw_parts_mut(buf.stable_mut_ptr(), len) };
                        match s.try_read(dst) {
                            Ok(n) => {
                                // SAFETY: the first `n` bytes were just written.
                                unsafe { buf.set_init(n) };
                                return (Ok(n), buf);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) => return (Err(e), buf),
                        }
                    }
                }
            }
        }

        /// Writes the whole buffer (slice).
        pub async fn write_all<T: BoundedBuf>(&self, buf: T) -> BufResult<(), T> {
            match self {
                TcpStream::Uring(s) => s.write_all(buf).await,
                TcpStream::Epoll(s) => {
                    // SAFETY: the buffer's first `bytes_init` bytes are initialized.
                    let src = unsafe { std::slice::from_raw_parts(buf.stable_ptr(), buf.bytes_init()) };
                    let mut sent = 0;
                    while sent < src.len() {
                        if let Err(e) = s.writable().await {
                            return (Err(e), buf);
                        }
                        match s.try_write(&src[sent..]) {
                            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                            Ok(n) => sent += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) => return (Err(e), buf),
                        }
                    }
                    (Ok(()), buf)
                }
            }
        }
    }

    impl TcpStream {
        /// Shuts both directions down now (best effort), whatever operations are still in
        /// flight on the descriptor; the peer sees the connection end.
        pub fn shutdown(&self) {
            // SAFETY: shutdown(2) on a descriptor this stream owns; it frees nothing.
            unsafe { libc::shutdown(self.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    impl AsRawFd for TcpStream {
        fn as_raw_fd(&self) -> RawFd {
            match self {
                TcpStream::Uring(s) => s.as_raw_fd(),
                TcpStream::Epoll(s) => s.as_raw_fd(),
            }
        }
    }

    pub enum TcpListener {
        Uring(tokio_uring::net::TcpListener),
        Epoll(tokio::net::TcpListener),
    }

    impl TcpListener {
        /// Takes over a bound, listening std listener (must be called on a runtime).
        pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
            match backend() {
                Backend::Uring => Ok(TcpListener::Uring(tokio_uring::net::TcpListener::from_std(listener))),
                Backend::Epoll => {
                    listener.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(listener).map(TcpListener::Epoll)
                }
            }
        }

        pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
            match self {
                TcpListener::Uring(l) => l.accept().await.map(|(s, a)| (TcpStream::Uring(s), a)),
                TcpListener::Epoll(l) => l.accept().await.map(|(s, a)| (TcpStream::Epoll(s), a)),
            }
        }
    }
}

pub mod fs {
    use super::*;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    pub enum File {
        Uring(tokio_uring::fs::File),
        Epoll(std::fs::File),
    }

    /// The options the node uses, for both backends.
    #[derive(Clone, Default)]
    pub struct OpenOptions {
        read: bool,
        write: bool,
        create_new: bool,
        custom_flags: i32,
    }

    impl OpenOptions {
        pub fn new() -> OpenOptions {
            OpenOptions::default()
        }
        pub fn read(&mut self, on: bool) -> &mut OpenOptions {
            self.read = on;
            self
        }
        pub fn write(&mut self, on: bool) -> &mut OpenOptions {
            self.write = on;
            self
        }
        pub fn create_new(&mut self, on: bool) -> &mut OpenOptions {
            self.create_new = on;
            self
        }
        pub fn custom_flags(&mut self, flags: i32) -> &mut OpenOptions {
            self.custom_flags = flags;
            self
        }

        pub async fn open(&self, path: &Path) -> io::Result<File> {
            match backend() {
                Backend::Uring => {
                    use tokio_uring::fs::OpenOptions as U;
                    let mut o = U::new();
                    o.read(self.read).write(self.write).create_new(self.create_new);
                    o.custom_flags(self.custom_flags);
                    o.open(path).await.map(File::Uring)
                }
                Backend::Epoll => {
                    let mut o = std::fs::OpenOptions::new();
                    o.read(self.read).write(self.write).create_new(self.create_new);
                    o.custom_flags(self.custom_flags);
                    o.open(path).map(File::Epoll)
                }
            }
        }
    }

    impl File {
        pub async fn read_exact_at<T: BoundedBufMut>(&self, buf: T, pos: u64) -> BufResult<(), T> {
            match self {
                File::Uring(f) => f.read_exact_at(buf, pos).await,
                File::Epoll(f) => {
                    let mut buf = buf;
                    let len = buf.bytes_total();
                    // SAFETY: the buffer owns `bytes_total` bytes from its stable pointer; they
                    // are all written before they are marked initialized.
                    let dst = unsafe { std::slice::from_raw_parts_mut(buf.stable_mut_ptr(), len) };
                    match f.read_exact_at(dst, pos) {
                        Ok(()) => {
                            // SAFETY: all `len` bytes were read.
                            unsafe { buf.set_init(len) };
                            (Ok(()), buf)
                        }
                        Err(e) => (Err(e), buf),
                    }
                }
            }
        }

        pub async fn write_all_at<T: BoundedBuf>(&self, buf: T, pos: u64) -> BufResult<(), T> {
            match self {
                File::Uring(f) => f.write_all_at(buf, pos).await,
                File::Epoll(f) => {
                    // SAFETY: the first `bytes_init` bytes are initialized.
                    let src = unsafe { std::slice::from_raw_parts(buf.stable_ptr(), buf.bytes_init()) };
                    (f.write_all_at(src, pos), buf)
                }
            }
        }

        pub async fn sync_data(&self) -> io::Result<()> {
            match self {
                File::Uring(f) => f.sync_data().await,
                File::Epoll(f) => f.sync_data(),
            }
        }

        pub async fn len(&self) -> io::Result<u64> {
            match self {
                File::Uring(f) => f.statx().await.map(|s| s.stx_size),
                File::Epoll(f) => f.metadata().map(|m| m.len()),
            }
        }

        pub async fn close(self) -> io::Result<()> {
            match self {
                File::Uring(f) => f.close().await,
                File::Epoll(f) => {
                    drop(f);
                    Ok(())
                }
            }
        }
    }

    impl AsRawFd for File {
        fn as_raw_fd(&self) -> RawFd {
            match self {
                File::Uring(f) => f.as_raw_fd(),
                File::Epoll(f) => f.as_raw_fd(),
            }
        }
    }

    pub async fn remove_file(path: &Path) -> io::Result<()> {
        match backend() {
            Backend::Uring => tokio_uring::fs::remove_file(path).await,
            Backend::Epoll => std::fs::remove_file(path),
        }
    }
}
