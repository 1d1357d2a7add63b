//! `dfs-node`: a storage node. It stores chunks durably under `--data` and serves them back,
//! verified, to the engine.

use clap::Parser;
use dfs_node::server::{self, NodeState};
use dfs_node::store::files::sync;
use dfs_node::store::{self, files, segments};
use dfs_node::{identity, metrics, scrub};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// dfs storage node: stores and serves checksummed chunks for a dfs engine.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Read settings from a TOML file: each key a long option's name (`listen =
    /// "10.0.0.2:7701"`, `segment_size = "256MiB"`, `insecure = true`). Options on the command
    /// line override the file's.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// Directory that holds this node's chunks.
    #[arg(long)]
    data: PathBuf,
    /// How FETCH sends chunk bytes: `splice` (each block is read once to verify it, then sent
    /// from the page cache through a kernel pipe with io_uring) or `copy` (sent from the buffer it
    /// was verified in). The default is copy: every block is read to be verified anyway, and
    /// sending it from that buffer measured faster than splicing it again (perf.md). Falls back
    /// to copy, with a warning, where the kernel refuses splice.
    #[arg(long, env = "DFS_DATA_PATH", default_value = "copy")]
    data_path: dfs_runtime::DataPath,
    /// Serve Prometheus metrics over HTTP at ADDR (`GET /metrics`), e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Largest number of open connections (clients, or engine connections for a node); more are
    /// closed as they arrive.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Number of runtime threads (io_uring, or epoll where io_uring is refused), each with its
    /// own listener on the same port.
    #[arg(long, default_value_t = dfs_runtime::default_threads())]
    threads: usize,
    /// File holding the cluster secret (mode 600) shared with the engine: only an engine that
    /// proves it knows it is served. Required to listen on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Listen on a non-loopback address without a cluster secret: anyone who can reach the
    /// port can read, write and delete chunks.
    #[arg(long)]
    insecure: bool,
    /// How a stored chunk is made durable before it is acknowledged: `per-chunk` (fdatasync
    /// the file and fsync its directory) or `grouped` (one syncfs of the data file system
    /// shared by every chunk renamed before it starts; far fewer syncs under load).
    #[arg(long, value_enum, env = "DFS_COMMIT_SYNC", default_value = "grouped")]
    commit_sync: sync::CommitSync,
    /// Seconds between background scrub passes, which re-read every chunk and quarantine the
    /// corrupt ones (0: never; `dfs-client scrub` runs one on demand).
    #[arg(long, default_value_t = 24 * 3600)]
    scrub_interval_secs: u64,
    /// Read rate of a background scrub pass, in MiB/s, so it does not crowd out requests.
    #[arg(long, default_value_t = 32)]
    scrub_rate_mib: u64,
    /// Where chunks live: `segments` (records appended with O_DIRECT to preallocated segment
    /// files under `segments/`, one fdatasync per segment shared by every record written before
    /// it; docs/STORE.md) or `files` (one file per chunk copy under `chunks/`, written through
    /// the page cache: the layout before segments). A data directory holds one kind: a node
    /// refuses the other's directory and says how to move over.
    #[arg(long, value_enum, env = "DFS_STORE", default_value = "segments")]
    store: StoreKind,
    /// Size of each segment file with `--store segments` (a chunk larger than this gets a
    /// segment of its own size).
    #[arg(long, env = "DFS_SEGMENT_SIZE", default_value = "64MiB", value_parser = parse_segment_size)]
    segment_size: u64,
    /// How a new segment's space is prepared, on a thread of its own ahead of need: `zero`
    /// (allocate and write zeros through, so record writes land in written space: no extent
    /// conversion, no metadata to sync) or `allocate` (fallocate only).
    #[arg(long, value_enum, env = "DFS_SEGMENT_PREFILL", default_value = "zero")]
    segment_prefill: segments::Prefill,
    /// How segment records are written and read: `buffered` (through the page cache; each
    /// STORE is still acknowledged only after the fdatasync that covers it) or `direct`
    /// (O_DIRECT). Buffered measured faster on this project's machines: 1 GiB puts about 1.4x,
    /// 1 GiB gets of recent data about 2x (perf.md); direct leaves the page cache to others.
    #[arg(long, value_enum, env = "DFS_SEGMENT_IO", default_value = "buffered")]
    segment_io: segments::SegmentIo,
    /// With `--store segments`: a segment no longer written whose live records fill less than
    /// this share of it is rewritten in the background and its file deleted (0: never).
    #[arg(long, env = "DFS_COMPACT_BELOW", default_value_t = 0.5, value_parser = parse_share)]
    compact_below: f64,
    /// Seconds between compaction rounds.
    #[arg(long, env = "DFS_COMPACT_INTERVAL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    compact_interval_secs: u64,
    /// With `--store segments`: seconds between checkpoints of the index (written only when
    /// records were written since the last), so start-up scans only the segments written after
    /// the last one.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_interval_secs: u64,
    /// Copy rate of compaction, in MiB/s, reads and writes each, so it does not crowd out
    /// requests.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    compact_rate_mib: u64,
    /// Seconds a connection may sit idle in the middle of a request, or between requests,
    /// before it is closed.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Files,
    Segments,
}

/// A flag's value the node cannot use (clap prints the message).
#[derive(Debug, thiserror::Error)]
enum BadValue {
    #[error("{0:?}: a share from 0 to 1, such as 0.5")]
    Share(String),
    #[error(transparent)]
    Size(#[from] dfs_proto::units::BadSize),
    #[error("{0} bytes: a segment is 1 MiB to 1 TiB, a multiple of 4 KiB")]
    SegmentSize(u64),
}

fn parse_share(s: &str) -> Result<f64, BadValue> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(BadValue::Share(s.to_string())),
    }
}

fn parse_segment_size(s: &str) -> Result<u64, BadValue> {
    let bytes = dfs_proto::units::parse_bytes(s)?;
    if !(1 << 20..=1 << 40).contains(&bytes) || !bytes.is_multiple_of(dfs_runtime::aligned::ALIGN as u64) {
        return Err(BadValue::SegmentSize(bytes));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    dfs_runtime::main_with_config::<Args, _>(run)
}

fn run(args: Args) -> Result<(), String> {
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let cluster_secret = match &args.cluster_secret_file {
        Some(path) => Some(dfs_proto::auth::ClusterSecret::from_file(path).map_err(|e| e.to_string())?),
        None if args.listen.ip().is_loopback() => {
            tracing::warn!("no --cluster-secret-file: any local process can use this node");
            None
        }
        None if args.insecure => {
            tracing::warn!(
                "no --cluster-secret-file and --insecure: anyone who reaches {} can use this node",
                args.listen
            );
            None
        }
        None => {
            return Err(format!("refusing to listen on {} without --cluster-secret-file (or --insecure)", args.listen))
        }
    };
    // io_uring where the kernel allows it, else epoll (logged once).
    dfs_runtime::backend::select().map_err(|e| e.to_string())?;
    match dfs_runtime::raise_fd_limit() {
        Ok(n) => tracing::debug!("open descriptor limit: {n}"),
        Err(e) => tracing::warn!("cannot raise the open descriptor limit: {e}"),
    }
    let stores = match args.store {
        StoreKind::Files => {
            if args.data.join("segments").exists() {
                return Err(format!(
                    "{} holds a segment store (segments/): start this node with --store segments",
                    args.data.display()
                ));
            }
            store::Stores::Files(Arc::new(files::ChunkStore::open(&args.data).map_err(|e| e.to_string())?))
        }
        StoreKind::Segments => {
            let store = Arc::new(
                segments::SegmentStore::open_with(&args.data, args.segment_size, args.segment_prefill, args.segment_io)
                    .map_err(|e| e.to_string())?,
            );
            let policy = segments::Policy {
                below: args.compact_below,
                bytes_per_sec: Some(args.compact_rate_mib.saturating_mul(1 << 20)),
            };
            segments::start_compactor(store.clone(), policy, Duration::from_secs(args.compact_interval_secs))
                .map_err(|e| format!("cannot start the compaction thread: {e}"))?;
            segments::start_checkpointer(store.clone(), Duration::from_secs(args.checkpoint_interval_secs))
                .map_err(|e| format!("cannot start the checkpoint thread: {e}"))?;
            store::Stores::Segments(store)
        }
    };
    let root = stores.root().to_path_buf();
    let (node_id, new_id) = identity::load_or_create(&root).map_err(|e| e.to_string())?;
    if new_id {
        tracing::info!("this data directory is new: it is node {node_id}");
    }
    if args.scrub_interval_secs > 0 {
        let interval = Duration::from_secs(args.scrub_interval_secs);
        scrub::start_background(stores.clone(), interval, args.scrub_rate_mib.saturating_mul(1 << 20))
            .map_err(|e| format!("cannot start the background scrubber: {e}"))?;
    }
    let listeners = dfs_runtime::bind_reuseport(args.listen, args.threads)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
    tracing::info!("node {node_id} listening on {addr}, data in {}, {} runtime(s)", root.display(), args.threads);
    metrics::init();
    if let Some(metrics_addr) = args.metrics {
        dfs_runtime::metrics::serve(metrics_addr).map_err(|e| e.to_string())?;
    }
    dfs_runtime::announce(addr);
    let data_path = dfs_runtime::choose_data_path(args.data_path);
    let group_sync = match args.commit_sync {
        sync::CommitSync::Grouped => {
            Some(sync::GroupSync::start(&root).map_err(|e| format!("cannot start the group sync thread: {e}"))?)
        }
        sync::CommitSync::PerChunk => None,
    };
    let state = Arc::new(NodeState {
        node_id,
        group_sync,
        stores,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        data_path,
        cluster_secret,
    });
    dfs_runtime::serve_per_core(listeners, args.max_connections, state, server::handle).map_err(|e| e.to_string())
}
