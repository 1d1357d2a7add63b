//! `dfs-engine`: the coordinator. Clients talk only to it; it cuts uploads into chunks on the
//! storage nodes, keeps the metadata, and reassembles and verifies downloads.

use clap::Parser;
use dfs_engine::cluster::{self, NodeTimeouts};
use dfs_engine::state::{self, EngineConfig, EngineState};
use dfs_engine::{buffer, local, meta, metrics, repair, server};
use dfs_proto::units::parse_bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Nodes an engine needs: one per quarter.
pub const MIN_NODES: usize = 4;
/// Copies of each chunk unless `--replicas` says otherwise.
const DEFAULT_REPLICAS: usize = 2;

/// dfs engine: the coordinator clients talk to.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Read settings from a TOML file: each key a long option's name (`chunk_size_max = "8MiB"`,
    /// `node = ["10.0.0.1:7701", ...]`, `insecure = true`). Options on the command line
    /// override the file's.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for clients (port 0 picks a free port; the bound address is
    /// printed on stdout as `listening ADDR`).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Where the metadata lives: a directory for the embedded database (an engine alone), or
    /// `postgres://USER@HOST:PORT/DB` for PostgreSQL, which several engines over the same nodes
    /// can share (password in --meta-password-file).
    #[arg(long, required_unless_present = "local", value_name = "DIR|URL")]
    meta: Option<meta::MetaSpec>,
    /// File whose first line is the PostgreSQL password (never on the command line or in the
    /// log).
    #[arg(long, value_name = "FILE")]
    meta_password_file: Option<PathBuf>,
    /// With PostgreSQL: seconds an engine's registration, and a cluster-wide pass (repair, gc,
    /// scrub) it holds, outlive its last renewal. After an engine dies, the others take over
    /// its passes, and gc may collect its unfinished uploads, this much later.
    #[arg(long, default_value_t = 15)]
    meta_lease_secs: u64,
    /// A storage node's address; give at least 4.
    #[arg(long = "node", value_name = "ADDR")]
    nodes: Vec<SocketAddr>,
    /// Start N storage nodes as child processes on the next N ports after --listen (or, with
    /// port 0, on free ports of their own), with all data under --data (nodes in node-<i>/,
    /// metadata in meta/).
    #[arg(long, value_name = "N", conflicts_with_all = ["nodes", "meta"], requires = "data")]
    local: Option<usize>,
    /// Data directory for --local.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Largest chunk in dynamic chunking (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    chunk_size_max: u64,
    /// Memory for downloads held whole while they are verified (e.g. 256MiB); a download that
    /// does not fit is streamed block by block instead.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    buffer_budget: u64,
    /// How upload bytes move from client to nodes: `copy` (through one buffer, written to every
    /// copy's node) or `splice` (through kernel pipes with io_uring splice and tee, never
    /// entering user space) [default: splice, which moved 1 GiB uploads about 10% faster than
    /// copy on this project's machines once nodes wrote through the page cache, see perf.md].
    /// Falls back to copy, with a warning, where the kernel refuses splice. With --local, a
    /// value given here is passed on to the nodes too.
    #[arg(long, env = "DFS_DATA_PATH")]
    data_path: Option<dfs_runtime::DataPath>,
    /// Copies of each chunk, on distinct nodes [default: 2]. An upload is acknowledged only
    /// when every copy is durable; a download reads any copy that verifies.
    #[arg(long, env = "DFS_REPLICAS", value_name = "R")]
    replicas: Option<usize>,
    /// File of access keys (one per line, mode 600): only clients presenting one are served.
    /// With --local, defaults to DATA/access.key, created with a random key if missing.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// File holding the cluster secret (mode 600) shared with every node; the engine and each
    /// node prove to each other that they know it. With --local, defaults to
    /// DATA/cluster.secret, created if missing, and given to the nodes it starts.
    #[arg(long, value_name = "FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Listen on a non-loopback address without access keys or without a cluster secret.
    #[arg(long)]
    insecure: bool,
    /// Seconds between health checks of every node.
    #[arg(long, default_value_t = 2)]
    ping_interval_secs: u64,
    /// Seconds between full repair passes, the slow audit that asks every node about every copy
    /// and brings every chunk back to --replicas verified copies (0: never; `dfs-client repair`
    /// runs one on demand). Day to day, the repair queue does the work.
    #[arg(long, default_value_t = 86400)]
    repair_interval_secs: u64,
    /// Seconds between turns of the repair queue, which repairs the chunks that failed reads,
    /// down or replaced nodes and scrubs have shown may be short of copies (0: no queue).
    #[arg(long, default_value_t = 2)]
    repair_queue_secs: u64,
    /// Seconds a node must stay down before the repair queue re-makes its copies elsewhere.
    #[arg(long, default_value_t = 60)]
    repair_after_down_secs: u64,
    /// Bytes per second repair may copy, e.g. 50MiB (0: no limit).
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    repair_bandwidth: u64,
    /// Seconds a chunk that no file references must have existed before `dfs-client gc`
    /// deletes it as an orphan.
    #[arg(long, default_value_t = 3600)]
    gc_grace_secs: u64,
    /// Serve HTTP at ADDR, e.g. 127.0.0.1:9100: the status page (`/`, refreshed in place; the
    /// same as JSON at `/api/status`) and Prometheus metrics (`/metrics`). On a non-loopback
    /// address the status page needs an access key (`Authorization: Bearer KEY`, or the
    /// password a browser asks for) unless --insecure. `--metrics` is the older name.
    #[arg(long = "http", alias = "metrics", value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Serve the S3 API at ADDR, e.g. 127.0.0.1:9000 (path-style; needs --s3-keys). With
    /// --local it is served by default, on the port after the last node's (or a free one when
    /// --listen has port 0).
    #[arg(long, value_name = "ADDR")]
    s3: Option<SocketAddr>,
    /// File of S3 key pairs (one per line: `ACCESS_KEY_ID SECRET`, mode 600): only requests
    /// signed with one of them are served. With --local, defaults to DATA/s3.keys, created with
    /// a random pair if missing.
    #[arg(long, value_name = "FILE")]
    s3_keys: Option<PathBuf>,
    /// Serve virtual-hosted-style S3 requests too: a request to host BUCKET.DOMAIN (any port)
    /// names BUCKET, e.g. --s3-domain s3.example.com with a wildcard DNS record for
    /// *.s3.example.com. Requests to any other host name or address stay path-style.
    #[arg(long, value_name = "DOMAIN")]
    s3_domain: Option<String>,
    /// Serve the S3 API over HTTPS with this certificate (PEM, the chain from the server's own
    /// certificate up), read again whenever the file changes. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds after which an S3 multipart upload that was neither completed nor aborted is
    /// aborted and its parts deleted.
    #[arg(long, default_value_t = 7 * 86400)]
    s3_upload_max_age_secs: u64,
    /// Largest number of open connections (clients, or engine connections for a node); more are
    /// closed as they arrive.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Number of runtime threads (io_uring, or epoll where io_uring is refused), each with its
    /// own listener on the same port.
    #[arg(long, default_value_t = dfs_runtime::default_threads())]
    threads: usize,
    /// Seconds a client connection may stay idle, mid-request or between requests.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Seconds to wait for a node to accept a connection.
    #[arg(long, default_value_t = 5)]
    node_connect_timeout_secs: u64,
    /// Seconds a node may stay silent in the middle of a request before it counts as down.
    #[arg(long, default_value_t = 30)]
    node_idle_timeout_secs: u64,
}

fn main() -> ExitCode {
    dfs_runtime::main_with_config::<Args, _>(run)
}

fn run(args: Args) -> Result<(), String> {
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if args.chunk_size_max == 0 {
        return Err("--chunk-size-max must be at least 1 byte".into());
    }
    // io_uring where the kernel allows it, else epoll (logged once).
    dfs_runtime::backend::select().map_err(|e| e.to_string())?;
    // Checked before any local node is started.
    let n_planned = args.local.unwrap_or(args.nodes.len());
    if n_planned < MIN_NODES {
        return Err(match args.local {
            Some(n) => format!("--local needs at least {MIN_NODES} nodes, got {n}"),
            None => format!("at least {MIN_NODES} nodes are needed (--node ADDR, repeated), got {n_planned}"),
        });
    }
    let replicas = args.replicas.unwrap_or(DEFAULT_REPLICAS);
    let max_replicas = n_planned.min(dfs_proto::limits::MAX_REPLICAS as usize);
    if replicas == 0 || replicas > max_replicas {
        return Err(format!(
            "--replicas must be between 1 and {max_replicas} (the number of nodes, at most {}), got {replicas}",
            dfs_proto::limits::MAX_REPLICAS
        ));
    }
    // A local cluster gets its own random access key and cluster secret unless given others.
    let mut token_file = args.token_file.clone();
    let mut secret_file = args.cluster_secret_file.clone();
    if let (Some(_), Some(data)) = (args.local, &args.data) {
        std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        for (file, name) in [(&mut token_file, "access.key"), (&mut secret_file, "cluster.secret")] {
            if file.is_none() {
                let path = data.join(name);
                dfs_proto::auth::ensure_secret_file(&path).map_err(|e| e.to_string())?;
                *file = Some(path);
            }
        }
    }
    // S3: on its own listener, always with key pairs (an unsigned request is refused).
    let mut s3_keys_file = args.s3_keys.clone();
    let mut s3_addr = args.s3;
    if let (Some(n_nodes), Some(data)) = (args.local, &args.data) {
        if s3_keys_file.is_none() {
            let path = data.join("s3.keys");
            if !path.exists() {
                dfs_engine::s3::S3Keys::create(&path).map_err(|e| e.to_string())?;
            }
            s3_keys_file = Some(path);
        }
        if s3_addr.is_none() {
            let port = match args.listen.port() {
                0 => 0,
                p => p.checked_add(n_nodes as u16 + 1).ok_or("no port after the local nodes' for S3")?,
            };
            s3_addr = Some(SocketAddr::new(args.listen.ip(), port));
        }
    }
    let s3 = match s3_addr {
        None => None,
        Some(addr) => {
            let Some(file) = &s3_keys_file else {
                return Err(format!("--s3 {addr} needs --s3-keys FILE: S3 requests must be signed"));
            };
            let keys = dfs_engine::s3::S3Keys::load(file).map_err(|e| e.to_string())?;
            let hosts = args
                .s3_domain
                .as_deref()
                .map(dfs_engine::s3::VirtualHosts::new)
                .transpose()
                .map_err(|e| e.to_string())?;
            let listeners = dfs_runtime::bind_reuseport(addr, args.threads)
                .map_err(|e| format!("cannot listen for S3 on {addr}: {e}"))?;
            Some((listeners, keys, hosts, file.clone()))
        }
    };
    if s3.is_none() && args.tls_cert.is_some() {
        return Err("--tls-cert serves the S3 API over HTTPS: it needs --s3 ADDR (or --local)".into());
    }
    if s3.is_none() && args.s3_domain.is_some() {
        return Err("--s3-domain needs the S3 API served: --s3 ADDR (or --local)".into());
    }
    let access_keys =
        token_file.as_deref().map(dfs_proto::auth::AccessKeys::from_file).transpose().map_err(|e| e.to_string())?;
    let cluster_secret =
        secret_file.as_deref().map(dfs_proto::auth::ClusterSecret::from_file).transpose().map_err(|e| e.to_string())?;
    let open = match (&access_keys, &cluster_secret) {
        (None, None) => Some("no --token-file and no --cluster-secret-file: any client can use this engine, and nodes are not authenticated"),
        (None, Some(_)) => Some("no --token-file: any client that reaches the engine can read, write and delete files"),
        (Some(_), None) => Some("no --cluster-secret-file: nodes are not authenticated"),
        (Some(_), Some(_)) => None,
    };
    if let Some(what) = open {
        if !args.listen.ip().is_loopback() && !args.insecure {
            return Err(format!("refusing to listen on {}: {what} (or pass --insecure)", args.listen));
        }
        tracing::warn!("{what}");
    }
    if let Some(http) = args.http.filter(|a| !a.ip().is_loopback() && !args.insecure) {
        if access_keys.is_none() {
            return Err(format!(
                "refusing to serve the status page on {http}: no --token-file to ask its visitors for (or pass --insecure)"
            ));
        }
    }
    let (meta_dir, nodes, _children) = match (args.local, &args.data) {
        (Some(n_nodes), Some(data)) => {
            let children = local::start_nodes(args.listen, n_nodes, data, args.data_path, secret_file.as_deref())
                .map_err(|e| e.to_string())?;
            let addrs = children.iter().map(|c| c.addr).collect();
            (meta::MetaSpec::Dir(data.join("meta")), addrs, children)
        }
        _ => {
            let meta = args.meta.clone().ok_or("--meta DIR is required")?;
            (meta, args.nodes.clone(), Vec::new())
        }
    };
    assert!(nodes.len() >= MIN_NODES, "the node count was checked before the nodes were started");
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = nodes.iter().find(|a| !seen.insert(**a)) {
        return Err(format!("node {dup} is given twice"));
    }
    let data_path = dfs_runtime::choose_data_path(args.data_path.unwrap_or(dfs_runtime::DataPath::Splice));
    if args.meta_lease_secs == 0 {
        return Err("--meta-lease-secs must be at least 1".into());
    }
    let listeners = dfs_runtime::bind_reuseport(args.listen, args.threads)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let pg = meta::PostgresOptions {
        password_file: args.meta_password_file.clone(),
        lease: Duration::from_secs(args.meta_lease_secs),
        engine_addr: addr.to_string(),
    };
    let meta = meta::MetaStore::open(&meta_dir, &pg).map_err(|e| e.to_string())?;
    tracing::info!(
        "engine listening on {addr}, {}, {} nodes, {replicas} cop{} of each chunk, {} runtime(s)",
        meta.describe(),
        nodes.len(),
        if replicas == 1 { "y" } else { "ies" },
        args.threads
    );
    let links = cluster::Links::new(
        NodeTimeouts {
            connect: Duration::from_secs(args.node_connect_timeout_secs),
            idle: Duration::from_secs(args.node_idle_timeout_secs),
        },
        cluster_secret,
        Arc::new(cluster::Health::new(&nodes)),
    );
    let state = Arc::new(EngineState {
        access_keys,
        config: EngineConfig {
            nodes,
            replicas,
            data_path,
            dynamic_chunk_cap_bytes: args.chunk_size_max,
            client_idle_timeout: Duration::from_secs(args.idle_timeout_secs),
            gc_grace: Duration::from_secs(args.gc_grace_secs),
        },
        uploads_in_progress: state::Uploads::default(),
        gc_claims: state::GcClaims::default(),
        meta,
        links,
        budget: buffer::Budget::new(args.buffer_budget),
        repair_running: Default::default(),
        repair_lock: Default::default(),
        repair_queue: Default::default(),
        repair_pace: dfs_engine::repair_queue::RepairPace::new(args.repair_bandwidth),
        activity: Default::default(),
        errors: Default::default(),
        passes: Default::default(),
    });
    name_nodes(&state).map_err(|e| e.to_string())?;
    if args.ping_interval_secs > 0 {
        cluster::start_pinger(&state.links, Duration::from_secs(args.ping_interval_secs))
            .map_err(|e| format!("cannot start the node pinger: {e}"))?;
    }
    start_background_repair(
        state.clone(),
        Duration::from_secs(args.repair_interval_secs),
        Duration::from_secs(args.repair_queue_secs),
        Duration::from_secs(args.repair_after_down_secs),
    )
    .map_err(|e| e.to_string())?;
    metrics::init();
    if let Some(http_addr) = args.http {
        let open = http_addr.ip().is_loopback() || args.insecure;
        let mut pages = dfs_engine::status::Pages::new(state.clone(), open, addr.to_string())
            .map_err(|e| format!("cannot start the status page's runtime: {e}"))?;
        dfs_runtime::metrics::serve_with(http_addr, Some(Box::new(move |m, u, a| pages.answer(m, u, a))))
            .map_err(|e| e.to_string())?;
    }
    if let Some((listeners, keys, hosts, file)) = s3 {
        let at = listeners[0].local_addr().map_err(|e| format!("S3 listener: {e}"))?;
        let style = match &args.s3_domain {
            Some(domain) => format!("path-style, and virtual-hosted-style under {domain}"),
            None => "path-style".into(),
        };
        let max_age = Duration::from_secs(args.s3_upload_max_age_secs);
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let files = dfs_engine::tls::CertFiles::load(cert, key).map_err(|e| e.to_string())?;
                Some(std::sync::Arc::new(files).server_config(&[b"http/1.1"]).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        dfs_engine::s3::start(state.clone(), listeners, keys, hosts, max_age, tls).map_err(|e| e.to_string())?;
        tracing::info!("S3 API on {scheme}://{at}/ ({style}), key pairs in {}", file.display());
    }
    dfs_runtime::announce(addr);
    dfs_runtime::serve_per_core(listeners, args.max_connections, state, server::handle).map_err(|e| e.to_string())
}

/// What can stop the engine's background work from starting.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot start the {0}: {1}")]
    Thread(&'static str, std::io::Error),
    #[error("the first ping panicked")]
    PingPanicked,
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
}

/// Learns every node's ID (one round of pings, on a thread of its own so that no connection
/// outlives its runtime) and upgrades metadata that still names nodes by address.
fn name_nodes(state: &EngineState) -> Result<(), StartError> {
    let links = state.links.with_idle(state.links.timeouts.connect);
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("first-ping".into())
            .spawn_scoped(s, || dfs_runtime::backend::start(cluster::ping_all(&links)))
            .map_err(|e| StartError::Thread("first ping", e))?
            .join()
            .map_err(|_| StartError::PingPanicked)
    })?;
    match state.meta.name_nodes(&*state.links.health)? {
        (0, 0) => {}
        (named, 0) => tracing::info!("metadata upgraded: {named} file record(s) now name their nodes by ID"),
        (named, left) => tracing::warn!(
            "metadata upgrade: {named} file record(s) now name their nodes by ID; {left} still name a node that \
             has not answered by address only, and are upgraded at a later start once it answers (until then, \
             such a node must not move to another address)"
        ),
    }
    Ok(())
}

/// On a thread and io_uring runtime of their own: a full repair pass every `audit` and a turn
/// of the repair queue every `queue` (either off at zero).
fn start_background_repair(
    state: Arc<EngineState>,
    audit: Duration,
    queue: Duration,
    after_down: Duration,
) -> Result<(), StartError> {
    if audit.is_zero() && queue.is_zero() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("repair".into())
        .spawn(move || {
            dfs_runtime::backend::start(async move {
                if !audit.is_zero() {
                    let state = state.clone();
                    dfs_runtime::backend::spawn(async move {
                        loop {
                            tokio::time::sleep(audit).await;
                            if let Err(e) = repair::run(&state, None).await {
                                tracing::info!("background repair skipped: {e}");
                            }
                        }
                    });
                }
                if queue.is_zero() {
                    return std::future::pending().await;
                }
                let mut down_queued = std::collections::BTreeSet::new();
                let mut busy = false;
                // The cluster's repair pass, held across turns while this engine has it; with
                // engines sharing PostgreSQL, the others only feed the queue.
                let mut lease: Option<meta::PassLease> = None;
                let mut holder_seen: Option<meta::PassHeld> = None;
                loop {
                    // After a full batch, the next turn follows at once.
                    if !busy {
                        tokio::time::sleep(queue).await;
                    }
                    if lease.as_ref().is_none_or(|l| l.lost()) {
                        lease = match state.meta.take_pass(&state.passes, meta::Pass::Repair).await {
                            Ok(Ok(l)) => Some(l),
                            Ok(Err(holder)) => {
                                if holder_seen.as_ref() != Some(&holder) {
                                    tracing::info!("repair queue: {holder}; this engine feeds the queue");
                                    holder_seen = Some(holder);
                                }
                                None
                            }
                            Err(e) => {
                                tracing::warn!("repair queue: cannot take the repair pass: {e}");
                                None
                            }
                        };
                    }
                    busy = match repair::run_queue(&state, after_down, &mut down_queued, lease.as_ref()).await {
                        Ok(turn) => turn.n_tried as usize == repair::QUEUE_BATCH,
                        Err(e) => {
                            tracing::warn!("repair queue: turn failed: {e}");
                            false
                        }
                    };
                }
            })
        })
        .map(drop)
        .map_err(|e| StartError::Thread("background repair thread", e))
}
