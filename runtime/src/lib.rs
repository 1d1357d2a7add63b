//! What the engine and the node share outside the protocol: the io_uring probe, one tokio-uring
//! runtime per core each with its own SO_REUSEPORT listener on the same port, the accept loop,
//! and logging set-up.

pub mod aligned;
pub mod backend;
pub mod config;
pub mod conn;
pub mod failpoint;
pub mod metrics;
pub mod ops;
pub mod splice;

use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// The wall clock in Unix milliseconds (0 before 1970): what records, listings and the node
/// table stamp times with.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Listen backlog of each per-core listener.
pub const LISTEN_BACKLOG: i32 = 1024;

/// The body of a server binary's `main`: sets up logging, runs `run`, and turns its error into
/// one `error: ...` line on stderr and a failing exit status.
pub fn main_with<E: std::fmt::Display>(run: impl FnOnce() -> Result<(), E>) -> std::process::ExitCode {
    init_logging();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// [`main_with`] for a binary whose arguments may also come from `--config FILE`: the file's
/// settings go in front of the command line, which overrides them.
pub fn main_with_config<A: clap::Parser, E: std::fmt::Display>(
    run: impl FnOnce(A) -> Result<(), E>,
) -> std::process::ExitCode {
    dfs_proto::env::forget_empty_settings();
    let argv = match config::args_with_config(&A::command()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {}", dfs_proto::error::error_chain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    let args = A::parse_from(argv);
    main_with(|| run(args))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Binds `n` listeners to `addr` with SO_REUSEPORT so the kernel spreads connections across
/// them. With port 0 the first bind picks the port and the others join it.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    assert!(n >= 1, "at least one listener");
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Default number of per-core runtimes: one per available core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs one tokio-uring runtime per listener, each on its own thread, calling `handle` for every
/// accepted connection on that thread. Returns only if every runtime stops.
pub fn serve_per_core<S, H, Fut>(
    listeners: Vec<std::net::TcpListener>,
    max_connections: usize,
    state: S,
    handle: H,
) -> io::Result<()>
where
    S: Clone + Send + 'static,
    H: Fn(S, backend::net::TcpStream, SocketAddr) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut threads = Vec::new();
    // Each runtime takes its share of the connection limit (at least one).
    let per_thread = max_connections.div_ceil(listeners.len().max(1)).max(1);
    for (core_idx, listener) in listeners.into_iter().enumerate() {
        let state = state.clone();
        let t = std::thread::Builder::new().name(format!("runtime-{core_idx}")).spawn(move || {
            backend::start(async move {
                let listener = match backend::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("cannot use the listener: {e}");
                        return;
                    }
                };
                let open = std::rc::Rc::new(std::cell::Cell::new(0usize));
                let mut refusing = false;
                loop {
                    match listener.accept().await {
                        Ok((stream, peer)) if open.get() >= per_thread => {
                            // Over the limit: close at once, and say so once per burst.
                            if !refusing {
                                tracing::warn!("connection limit ({per_thread} per thread) reached: closing new connections, {peer} first");
                                refusing = true;
                            }
                            drop(stream);
                        }
                        Ok((stream, peer)) => {
                            refusing = false;
                            let _ = stream.set_nodelay(true);
                            open.set(open.get() + 1);
                            let open = open.clone();
                            let conn = handle(state.clone(), stream, peer);
                            backend::spawn(async move {
                                conn.await;
                                open.set(open.get() - 1);
                            });
                        }
                        Err(e) => {
                            // Running out of descriptors is transient: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })?;
        threads.push(t);
    }
    for t in threads {
        if t.join().is_err() {
            return Err(io::Error::other("a runtime thread panicked"));
        }
    }
    Ok(())
}

/// Raises this process's soft limit on open descriptors to its hard limit, and returns the
/// limit now in force. A node keeps two descriptors open per segment and one per connection;
/// the usual soft limit of 1,024 would stop a node holding a few hundred segments.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// Prints the bound address on stdout as `listening <addr>` ([`dfs_proto::listening`]) so
/// scripts and tests that asked for port 0 learn the port.
pub fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", dfs_proto::listening::line(addr));
    let _ = out.flush();
}

/// How bulk bytes move through a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPath {
    /// Through a user-space buffer: read, then write.
    Copy,
    /// Through a kernel pipe with io_uring splice: the bytes never enter user space.
    Splice,
}

/// A data path name other than `splice` or `copy`; holds the name given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown data path {0:?}: expected splice or copy")]
pub struct UnknownDataPath(pub String);

impl std::str::FromStr for DataPath {
    type Err = UnknownDataPath;
    fn from_str(s: &str) -> Result<DataPath, UnknownDataPath> {
        match s {
            "copy" => Ok(DataPath::Copy),
            "splice" => Ok(DataPath::Splice),
            _ => Err(UnknownDataPath(s.to_string())),
        }
    }
}

impl std::fmt::Display for DataPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataPath::Copy => "copy",
            DataPath::Splice => "splice",
        })
    }
}

/// The data path to use: `requested`, unless it is splice and the kernel cannot do it, in which
/// case copy. Logs the choice once.
pub fn choose_data_path(requested: DataPath) -> DataPath {
    if requested == DataPath::Splice && backend::backend() == backend::Backend::Epoll {
        tracing::warn!("data path: copy, because splice needs io_uring and the epoll backend is in use");
        return DataPath::Copy;
    }
    if requested == DataPath::Copy {
        tracing::info!("data path: copy (as requested)");
        return DataPath::Copy;
    }
    let refused = match splice::probe_splice() {
        Ok(true) => match splice::Pipe::new() {
            Ok(_) => None,
            Err(e) => Some(format!("cannot create a pipe: {e}")),
        },
        Ok(false) => Some("this kernel's io_uring has no IORING_OP_SPLICE".to_string()),
        Err(e) => Some(format!("io_uring probe failed: {e}")),
    };
    match refused {
        None => {
            tracing::info!("data path: splice (io_uring IORING_OP_SPLICE)");
            DataPath::Splice
        }
        Some(why) => {
            tracing::warn!("data path: copy, because splice is unavailable: {why}");
            DataPath::Copy
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_path_names_round_trip_and_an_unknown_one_is_named_in_the_error() {
        use super::{DataPath, UnknownDataPath};
        for path in [DataPath::Copy, DataPath::Splice] {
            assert_eq!(path.to_string().parse::<DataPath>(), Ok(path));
        }
        let e = "zerocopy".parse::<DataPath>().unwrap_err();
        assert_eq!(e, UnknownDataPath("zerocopy".into()));
        assert_eq!(e.to_string(), "unknown data path \"zerocopy\": expected splice or copy");
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit on structs we own.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            let lowered = libc::rlimit { rlim_cur: lim.rlim_max.min(512), rlim_max: lim.rlim_max };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lowered), 0);
        }
        assert_eq!(super::raise_fd_limit().unwrap(), lim.rlim_max);
        let mut now = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, lim.rlim_max);
    }
}
