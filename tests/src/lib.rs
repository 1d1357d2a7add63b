//! The integration-test harness: real `dfs-node` and `dfs-engine` processes on loopback, driven
//! through the real `dfs-client` binary. Each test owns one [`Cluster`], which owns one temp
//! directory (node data, engine metadata, inputs, downloads and process logs) and every process it
//! started. Ports are always picked by the kernel (`127.0.0.1:0`) and learned from the
//! `listening ADDR` line, so tests run in parallel without coordination.
//!
//! When a test panics, dropping its cluster prints every command it ran with its outputs, the tail
//! of every process log and a listing of the test directory, and keeps that directory on disk.
//!
//! The client's JSON output is read in one place, [`json`], so a renamed field is one edit.

use dfs_proto::io_std::{self, Frame};
use dfs_proto::{ChunkId, Chunking, FileId, Msg};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod browser;
pub mod http;
pub mod netns;
pub mod pg;

/// How long a server may take to print its `listening` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one client command may run before it is killed and the test fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to close a connection it was sent garbage on.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of each process log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// Commands printed when a test fails (the most recent ones).
const HISTORY_REPORT_ENTRIES: usize = 80;
/// Bytes of a command's stdout kept in the history.
const HISTORY_STDOUT_BYTES: usize = 400;

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The directory holding `dfs-engine`, `dfs-node` and `dfs-client`: `$DFS_BIN_DIR` if set, else
/// the cargo target profile directory this test executable was built into (`target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DFS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    // The test executable is target/<profile>/deps/<name>-<hash>.
    let deps = exe.parent().expect("test executable has a parent directory");
    deps.parent().expect("deps directory has a parent").to_path_buf()
}

/// Path of one of the workspace binaries; panics with the build command if it is missing or
/// older than its sources (`cargo nextest run -p dfs-tests` does not rebuild other packages'
/// binaries, and a stale one would test yesterday's code).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {} not found: run `cargo build --workspace --bins` first (or set DFS_BIN_DIR)",
        path.display()
    );
    if std::env::var_os("DFS_BIN_DIR").is_none() {
        if let Some(newer) = source_newer_than(name, &path) {
            panic!(
                "binary {} is older than {}: run `cargo build --workspace --bins` first (or set DFS_BIN_DIR)",
                path.display(),
                newer.display()
            );
        }
    }
    path
}

/// A source file of binary `name` modified after `binary` was built, if the sources are here.
fn source_newer_than(name: &str, binary: &Path) -> Option<PathBuf> {
    let crates: &[&str] = match name {
        "dfs-engine" => &["engine", "core", "proto", "runtime", "launch"],
        "dfs-node" => &["node", "proto", "runtime"],
        "dfs-client" => &["client", "proto"],
        _ => &[],
    };
    let built = fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    crates
        .iter()
        .flat_map(|c| walk_files(&workspace.join(c).join("src")))
        .map(|(p, _)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .find(|p| fs::metadata(p).and_then(|m| m.modified()).is_ok_and(|m| m > built))
}

fn command_line(cmd: &Command) -> String {
    let mut s = shell_quote(cmd.get_program());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@".contains(&b)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------------

/// A server process that announced its address. Dropping it kills it (SIGKILL) and reaps it.
struct Proc {
    child: Child,
    addr: String,
}

impl Proc {
    /// Spawns `cmd` with stdout read here (first line: `listening ADDR`, then drained into
    /// `stdout_log`) and stderr written to `stderr_log`. Panics, with the log, if the process does
    /// not announce itself within [`READY_TIMEOUT`].
    fn spawn(label: String, cmd: Command, stdout_log: &Path, stderr_log: &Path) -> Proc {
        Proc::try_spawn(label, cmd, stdout_log, stderr_log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Proc::spawn`], with a process that cannot start, exits or never announces itself as
    /// an error. Started through the launcher every dfs process uses (`dfs_launch`).
    fn try_spawn(label: String, mut cmd: Command, stdout_log: &Path, stderr_log: &Path) -> Result<Proc, String> {
        let stderr_file = fs::File::create(stderr_log).expect("cannot create stderr log");
        let stdout_file = fs::File::create(stdout_log).expect("cannot create stdout log");
        cmd.stderr(stderr_file);
        match dfs_launch::start(&mut cmd, &label, READY_TIMEOUT, dfs_launch::Rest::File(stdout_file)) {
            Ok(started) => Ok(Proc { child: started.child, addr: started.addr.to_string() }),
            Err(e) => Err(format!("{e} (`{}`); stderr:\n{}", command_line(&cmd), log_tail(stderr_log, LOG_TAIL_LINES))),
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_tail(path: &Path, n_lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(n_lines);
            let mut out = String::new();
            if skip > 0 {
                let _ = writeln!(out, "    [... {skip} earlier lines]");
            }
            for l in &lines[skip..] {
                let _ = writeln!(out, "    {l}");
            }
            out
        }
        Err(e) => format!("    [cannot read {}: {e}]\n", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Client runs
// ---------------------------------------------------------------------------------------------

/// What one `dfs-client` run produced.
#[derive(Debug, Clone)]
pub struct ClientOutput {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl ClientOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics, naming `what`, unless the command exited 0.
    #[track_caller]
    pub fn expect_success(&self, what: &str) -> &ClientOutput {
        assert!(self.success(), "{what}: expected exit 0 from `{}`\n{}", self.cmdline, self.describe());
        self
    }

    /// Checks the client's error contract (exit status not 0, exactly one stderr line, starting
    /// with `error:`) and returns that line.
    #[track_caller]
    pub fn expect_error(&self, what: &str) -> String {
        assert!(
            !self.success(),
            "{what}: expected a failure from `{}`, it succeeded\n{}",
            self.cmdline,
            self.describe()
        );
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error:"),
            "{what}: expected exactly one stderr line starting with `error:` from `{}`\n{}",
            self.cmdline,
            self.describe()
        );
        lines[0].to_string()
    }

    pub fn describe(&self) -> String {
        format!(
            "  exit: {}\n  stdout ({} bytes): {}\n  stderr: {}",
            self.status,
            self.stdout.len(),
            preview(&self.stdout, HISTORY_STDOUT_BYTES),
            self.stderr.trim_end().replace('\n', "\n          ")
        )
    }
}

fn preview(bytes: &[u8], max: usize) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
    if bytes.len() > max {
        format!("{:?} [... {} more bytes]", shown, bytes.len() - max)
    } else {
        format!("{shown:?}")
    }
}

/// Runs `cmd` to completion with stdout and stderr captured; kills it after `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let tx2 = tx.clone();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        let _ = tx.send((true, buf));
    });
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let _ = tx2.send((false, buf));
    });
    let deadline = Instant::now() + timeout;
    let (mut out, mut err) = (None, None);
    while out.is_none() || err.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((true, b)) => out = Some(b),
            Ok((false, b)) => err = Some(b),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?} and was killed"));
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cannot wait for it: {e}"))?;
    Ok((status, out.unwrap_or_default(), err.unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// Engine options a test may set.
#[derive(Clone, Debug, Default)]
pub struct ClusterOpts {
    /// `--chunk-size-max`: the dynamic chunking cap.
    pub chunk_size_max_bytes: Option<u64>,
    /// `--buffer-budget`: files larger than this are streamed by GET instead of buffered.
    pub buffer_budget_bytes: Option<u64>,
    /// `--replicas`: copies of each chunk (the engine's default is 2 with 4 nodes or more).
    pub replicas: Option<usize>,
    /// More arguments for the engine, and for every node.
    pub engine_args: Vec<String>,
    /// Environment variables for the engine (e.g. `DFS_FAILPOINTS`).
    pub engine_env: Vec<(String, String)>,
    pub node_args: Vec<String>,
    /// Environment variables for every node (e.g. `DFS_FAILPOINTS`).
    pub node_env: Vec<(String, String)>,
    /// `--idle-timeout-secs` on the engine and every node.
    pub idle_timeout_secs: Option<u64>,
    /// Give the engine `--token-file` with a fresh key, which every client run presents.
    pub access_key: bool,
    /// Give the engine and every node `--cluster-secret-file` with a fresh secret.
    pub cluster_secret: bool,
    /// Keep the metadata in this PostgreSQL server (`--meta URL --meta-password-file FILE`)
    /// instead of the embedded database under the test directory.
    pub postgres: Option<(String, PathBuf)>,
    /// Run every process on a host of its own in this sandbox (`netns`): node i on host
    /// `node<i>`, the engine's n-th start on `engine<n>`, clients on `client`.
    pub net: Option<std::sync::Arc<netns::Net>>,
}

/// Writes a fresh random secret (64 hex digits) to `path` with mode 600.
pub fn write_secret_file(path: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("OS random source");
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).expect("create secret file");
    writeln!(f, "{text}").expect("write secret file");
    text
}

struct NodeSlot {
    proc: Option<Proc>,
    addr: String,
    data_dir: PathBuf,
    n_starts: usize,
}

/// One test's processes and directory.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    opts: ClusterOpts,
    nodes: Vec<NodeSlot>,
    engine: Option<Proc>,
    engine_addr: String,
    /// Engines beyond the first, sharing its metadata (PostgreSQL) and nodes.
    more_engines: Vec<Proc>,
    /// What client runs are given as `--server`: the engine's address unless a test chose.
    server: Option<String>,
    n_engine_starts: usize,
    /// The access key file clients present, once a `--local` engine has made one.
    token_file: Option<PathBuf>,
    /// Every process log as (label, stdout log, stderr log), kept after the process is gone.
    logs: Vec<(String, PathBuf, PathBuf)>,
    history: Mutex<Vec<String>>,
    n_runs: AtomicUsize,
}

fn test_name() -> String {
    let name = thread::current().name().unwrap_or("test").to_string();
    let name = name.rsplit("::").next().unwrap_or("test");
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).take(60).collect()
}

impl Cluster {
    /// Starts `n_nodes` storage nodes, then an engine that knows them all.
    pub fn start(n_nodes: usize, opts: ClusterOpts) -> Cluster {
        let mut c = Cluster::start_nodes_with(n_nodes, opts);
        c.start_engine();
        c
    }

    /// Starts `n_nodes` storage nodes and no engine.
    pub fn start_nodes(n_nodes: usize) -> Cluster {
        Cluster::start_nodes_with(n_nodes, ClusterOpts::default())
    }

    /// Where the cluster secret lives, if the options asked for one.
    pub fn cluster_secret_path(&self) -> Option<PathBuf> {
        self.opts.cluster_secret.then(|| self.root.join("cluster.secret"))
    }

    fn start_nodes_with(n_nodes: usize, opts: ClusterOpts) -> Cluster {
        let mut c = Cluster::empty();
        if opts.cluster_secret {
            write_secret_file(&c.root.join("cluster.secret"));
        }
        if opts.access_key {
            let path = c.root.join("access.key");
            write_secret_file(&path);
            c.token_file = Some(path);
        }
        c.opts = opts;
        for node_idx in 0..n_nodes {
            let data_dir = c.root.join("nodes").join(format!("n{node_idx}"));
            c.nodes.push(NodeSlot { proc: None, addr: String::new(), data_dir, n_starts: 0 });
            let listen = format!("{}:0", c.host_ip(&format!("node{node_idx}")));
            c.spawn_node(node_idx, listen);
        }
        c
    }

    /// A cluster with its directory and nothing running.
    pub fn empty() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("dfs-{}-", test_name()))
            .tempdir()
            .expect("cannot create the test directory");
        let root = dir.path().to_path_buf();
        for sub in ["logs", "inputs", "gets", "meta", "nodes", "scratch"] {
            fs::create_dir_all(root.join(sub)).expect("cannot create test subdirectory");
        }
        Cluster {
            dir: Some(dir),
            root,
            opts: ClusterOpts::default(),
            nodes: Vec::new(),
            engine: None,
            engine_addr: String::new(),
            more_engines: Vec::new(),
            server: None,
            n_engine_starts: 0,
            token_file: None,
            logs: Vec::new(),
            history: Mutex::new(Vec::new()),
            n_runs: AtomicUsize::new(0),
        }
    }

    fn record(&self, entry: String) {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }

    fn spawn_server(&mut self, label: String, file_stem: String, cmd: Command) -> Proc {
        let stdout_log = self.root.join("logs").join(format!("{file_stem}.stdout"));
        let stderr_log = self.root.join("logs").join(format!("{file_stem}.stderr"));
        let cmdline = command_line(&cmd);
        self.record(format!("$ {cmdline} &   # {label}"));
        self.logs.push((label.clone(), stdout_log.clone(), stderr_log.clone()));
        let proc = Proc::spawn(label.clone(), cmd, &stdout_log, &stderr_log);
        self.record(format!("  {label} listening on {}", proc.addr));
        proc
    }

    fn spawn_node(&mut self, node_idx: usize, listen: String) {
        self.nodes[node_idx].n_starts += 1;
        let n_starts = self.nodes[node_idx].n_starts;
        let mut cmd = self.process("dfs-node", &format!("node{node_idx}"));
        cmd.arg("--listen").arg(&listen).arg("--data").arg(&self.nodes[node_idx].data_dir).current_dir(&self.root);
        if self.opts.cluster_secret {
            cmd.arg("--cluster-secret-file").arg(self.root.join("cluster.secret"));
        }
        if let Some(secs) = self.opts.idle_timeout_secs {
            cmd.arg("--idle-timeout-secs").arg(secs.to_string());
        }
        cmd.args(&self.opts.node_args);
        cmd.envs(self.opts.node_env.iter().map(|(k, v)| (k, v)));
        let proc =
            self.spawn_server(format!("node {node_idx} (start {n_starts})"), format!("node{node_idx}.{n_starts}"), cmd);
        self.nodes[node_idx].addr = proc.addr.clone();
        self.nodes[node_idx].proc = Some(proc);
    }

    fn start_engine(&mut self) {
        let proc = self.spawn_engine();
        self.engine_addr = proc.addr.clone();
        self.engine = Some(proc);
    }

    /// Starts one more engine over the same metadata and nodes (the options must name a
    /// PostgreSQL server) and returns its address. It is killed with the cluster.
    pub fn start_another_engine(&mut self) -> String {
        assert!(self.opts.postgres.is_some(), "engines share metadata only in PostgreSQL");
        let proc = self.spawn_engine();
        let addr = proc.addr.clone();
        self.more_engines.push(proc);
        addr
    }

    /// SIGKILLs the engine at `addr`, the first or another.
    pub fn kill_engine_at(&mut self, addr: &str) {
        self.record(format!("# kill -9 engine at {addr}"));
        if self.engine.as_ref().is_some_and(|p| p.addr == addr) {
            self.engine.take().expect("checked").kill();
        } else {
            let i = self.more_engines.iter().position(|p| p.addr == addr).expect("no engine at that address");
            self.more_engines.remove(i).kill();
        }
    }

    /// Makes client runs use `--server SERVER` (one address, or a comma-separated list); None
    /// goes back to the engine's address.
    pub fn use_server(&mut self, server: Option<&str>) {
        self.record(format!("# clients now use --server {}", server.unwrap_or(&self.engine_addr)));
        self.server = server.map(str::to_string);
    }

    /// A command running `program` (a dfs binary) on host `host`: in the sandbox if the
    /// options give one, else here.
    fn process(&self, program: &str, host: &str) -> Command {
        match &self.opts.net {
            Some(net) => net.command(host, bin(program)),
            None => Command::new(bin(program)),
        }
    }

    /// The address processes on `host` listen on.
    fn host_ip(&self, host: &str) -> String {
        match &self.opts.net {
            Some(net) => net.host(host),
            None => "127.0.0.1".into(),
        }
    }

    fn server(&self) -> &str {
        self.server.as_deref().unwrap_or(&self.engine_addr)
    }

    fn spawn_engine(&mut self) -> Proc {
        self.n_engine_starts += 1;
        let n_starts = self.n_engine_starts;
        let host = format!("engine{n_starts}");
        let mut cmd = self.process("dfs-engine", &host);
        cmd.arg("--listen").arg(format!("{}:0", self.host_ip(&host))).current_dir(&self.root);
        match &self.opts.postgres {
            Some((url, password_file)) => cmd.arg("--meta").arg(url).arg("--meta-password-file").arg(password_file),
            None => cmd.arg("--meta").arg(self.root.join("meta")),
        };
        for node in &self.nodes {
            cmd.arg("--node").arg(&node.addr);
        }
        if let Some(cap) = self.opts.chunk_size_max_bytes {
            cmd.arg("--chunk-size-max").arg(cap.to_string());
        }
        if let Some(budget) = self.opts.buffer_budget_bytes {
            cmd.arg("--buffer-budget").arg(budget.to_string());
        }
        if let Some(replicas) = self.opts.replicas {
            cmd.arg("--replicas").arg(replicas.to_string());
        }
        if self.opts.cluster_secret {
            cmd.arg("--cluster-secret-file").arg(self.root.join("cluster.secret"));
        }
        if self.opts.access_key {
            cmd.arg("--token-file").arg(self.root.join("access.key"));
        }
        if let Some(secs) = self.opts.idle_timeout_secs {
            cmd.arg("--idle-timeout-secs").arg(secs.to_string());
        }
        // The repair queue runs only in tests that ask for it: the others check what a repair
        // pass they run finds, which a queue working in the background would get to first.
        if !self.opts.engine_args.iter().any(|a| a == "--repair-queue-secs") {
            cmd.arg("--repair-queue-secs").arg("0");
        }
        cmd.args(&self.opts.engine_args);
        cmd.envs(self.opts.engine_env.iter().map(|(k, v)| (k, v)));
        self.spawn_server(format!("engine (start {n_starts})"), format!("engine.{n_starts}"), cmd)
    }

    /// Starts an engine from a command the test built itself (its own flags), as this cluster's
    /// engine: logged, recorded, and killed with the cluster.
    pub fn adopt_engine(&mut self, mut cmd: Command) {
        self.n_engine_starts += 1;
        let n_starts = self.n_engine_starts;
        cmd.current_dir(&self.root);
        let proc = self.spawn_server(format!("engine (start {n_starts})"), format!("engine.{n_starts}"), cmd);
        self.engine_addr = proc.addr.clone();
        self.engine = Some(proc);
    }

    /// Starts `dfs-engine --local N --data DIR --listen 127.0.0.1:PORT`, which spawns its own
    /// nodes on the N ports after PORT. Returns the engine's pid, or the start-up error (a port
    /// may have been taken meanwhile; the caller can retry with others).
    pub fn try_start_local_engine(&mut self, n_nodes: usize, data_dir: &Path, port: u16) -> Result<u32, String> {
        self.n_engine_starts += 1;
        let n_starts = self.n_engine_starts;
        let mut cmd = Command::new(bin("dfs-engine"));
        cmd.arg("--local")
            .arg(n_nodes.to_string())
            .arg("--data")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(&self.root);
        let label = format!("local engine (start {n_starts})");
        let stdout_log = self.root.join("logs").join(format!("engine.{n_starts}.stdout"));
        let stderr_log = self.root.join("logs").join(format!("engine.{n_starts}.stderr"));
        self.record(format!("$ {} &   # {label}", command_line(&cmd)));
        self.logs.push((label.clone(), stdout_log.clone(), stderr_log.clone()));
        let proc = Proc::try_spawn(label.clone(), cmd, &stdout_log, &stderr_log)
            .inspect_err(|e| self.record(format!("  {e}")))?;
        self.record(format!("  {label} listening on {}", proc.addr));
        self.engine_addr = proc.addr.clone();
        // A local cluster protects itself with a random access key in its data directory.
        self.token_file = Some(data_dir.join("access.key"));
        let pid = proc.child.id();
        self.engine = Some(proc);
        Ok(pid)
    }

    /// The test directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn engine_addr(&self) -> &str {
        &self.engine_addr
    }

    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn node_addr(&self, node_idx: usize) -> &str {
        &self.nodes[node_idx].addr
    }

    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Index of the node listening on `addr`.
    pub fn node_idx_of(&self, addr: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    pub fn node_data_dir(&self, node_idx: usize) -> &Path {
        &self.nodes[node_idx].data_dir
    }

    /// Whether the engine process is still running (it has not crashed).
    pub fn engine_alive(&mut self) -> bool {
        self.engine.as_mut().is_some_and(Proc::is_running)
    }

    /// The stderr log of node `node_idx`'s latest start, and of the engine's.
    pub fn node_stderr_log(&self, node_idx: usize) -> PathBuf {
        self.root.join("logs").join(format!("node{node_idx}.{}.stderr", self.nodes[node_idx].n_starts))
    }

    pub fn engine_stderr_log(&self) -> PathBuf {
        self.root.join("logs").join(format!("engine.{}.stderr", self.n_engine_starts))
    }

    /// Process IDs of the engine and of each running node.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self.engine.iter().map(|p| ("engine".to_string(), p.child.id())).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(p) = &n.proc {
                out.push((format!("node {i}"), p.child.id()));
            }
        }
        out
    }

    pub fn node_alive(&mut self, node_idx: usize) -> bool {
        self.nodes[node_idx].proc.as_mut().is_some_and(Proc::is_running)
    }

    /// SIGKILLs storage node `node_idx` and reaps it.
    pub fn kill_node(&mut self, node_idx: usize) {
        let label = format!("node {node_idx} at {}", self.nodes[node_idx].addr);
        self.record(format!("# kill -9 {label}"));
        let mut proc = self.nodes[node_idx].proc.take().unwrap_or_else(|| panic!("{label} is not running"));
        proc.kill();
    }

    /// Starts node `node_idx` again on its old address and data directory, so the engine, which
    /// knows nodes by address, finds it again.
    pub fn restart_node(&mut self, node_idx: usize) {
        assert!(self.nodes[node_idx].proc.is_none(), "node {node_idx} is still running");
        let addr = self.nodes[node_idx].addr.clone();
        self.spawn_node(node_idx, addr.clone());
        assert_eq!(self.nodes[node_idx].addr, addr, "node {node_idx} came back on another address");
    }

    /// Starts node `node_idx` again with its data directory but on a new address, as an
    /// operator moving a node to another port or host would. The engine learns the new address
    /// only when it is restarted (its `--node` list).
    pub fn move_node(&mut self, node_idx: usize) {
        assert!(self.nodes[node_idx].proc.is_none(), "node {node_idx} is still running");
        let old = self.nodes[node_idx].addr.clone();
        self.spawn_node(node_idx, "127.0.0.1:0".to_string());
        assert_ne!(self.nodes[node_idx].addr, old, "node {node_idx} came back on its old address");
        self.record(format!("# node {node_idx} moved from {old} to {}", self.nodes[node_idx].addr));
    }

    /// Replaces the extra arguments every node is started with from now on (restarts included).
    /// Sets the environment engines started from now on get (e.g. `DFS_FAILPOINTS`).
    pub fn set_engine_env(&mut self, env: &[(&str, &str)]) {
        self.opts.engine_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Sets the environment nodes started from now on get (e.g. `DFS_FAILPOINTS`).
    pub fn set_node_env(&mut self, env: &[(&str, &str)]) {
        self.opts.node_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    pub fn set_node_args(&mut self, args: &[&str]) {
        self.opts.node_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Starts node `node_idx` again on its old address with another data directory (a new,
    /// or a differently mounted, disk).
    pub fn restart_node_with_data(&mut self, node_idx: usize, data_dir: PathBuf) {
        self.nodes[node_idx].data_dir = data_dir;
        self.restart_node(node_idx);
    }

    /// SIGKILLs the engine and starts it again on the same `--meta` (on a new port).
    pub fn restart_engine(&mut self) {
        self.kill_engine();
        self.start_engine();
    }

    /// Starts the engine again after [`Cluster::kill_engine`], on the same metadata.
    pub fn start_engine_again(&mut self) {
        assert!(self.engine.is_none(), "the engine is still running");
        self.start_engine();
    }

    pub fn kill_engine(&mut self) {
        self.record(format!("# kill -9 engine at {}", self.engine_addr));
        let mut proc = self.engine.take().expect("the engine is not running");
        proc.kill();
    }

    fn next_run(&self) -> usize {
        self.n_runs.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `dfs-client --server ENGINE ARGS...` and records it.
    pub fn client<I, S>(&self, args: I) -> ClientOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut full: Vec<OsString> = vec!["--server".into(), self.server().into()];
        full.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self.client_raw(&full)
    }

    /// Runs `dfs-client ARGS...` exactly as given (no `--server` added).
    pub fn client_raw(&self, args: &[OsString]) -> ClientOutput {
        let mut cmd = self.process("dfs-client", "client");
        cmd.args(args).current_dir(self.root.join("scratch"));
        if let Some(key) = &self.token_file {
            cmd.env("DFS_TOKEN_FILE", key);
        }
        let cmdline = command_line(&cmd);
        let started = Instant::now();
        let res = run_bounded(cmd, CLIENT_TIMEOUT);
        match res {
            Ok((status, stdout, stderr)) => {
                let out = ClientOutput {
                    cmdline: cmdline.clone(),
                    status,
                    stdout,
                    stderr: String::from_utf8_lossy(&stderr).into_owned(),
                };
                self.record(format!("$ {cmdline}   # {:.2?}\n{}", started.elapsed(), out.describe()));
                out
            }
            Err(e) => {
                self.record(format!("$ {cmdline}\n  {e}"));
                panic!("dfs-client {e}: `{cmdline}`")
            }
        }
    }

    /// Starts `dfs-client --server ENGINE ARGS...` in the background with stdout piped and
    /// stderr sent to a log under `logs/`, for tests that act while a request is in flight.
    /// The caller waits for it.
    pub fn spawn_client<I, S>(&self, args: I) -> std::process::Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let run = self.next_run();
        let stderr_log = self.root.join("logs").join(format!("client-{run}.stderr"));
        let stderr = fs::File::create(&stderr_log).expect("cannot create client stderr log");
        let mut cmd = self.process("dfs-client", "client");
        cmd.arg("--server").arg(self.server()).args(args).current_dir(self.root.join("scratch"));
        if let Some(key) = &self.token_file {
            cmd.env("DFS_TOKEN_FILE", key);
        }
        cmd.stdout(Stdio::piped()).stderr(stderr);
        self.record(format!("$ {} &   # stderr in {}", command_line(&cmd), stderr_log.display()));
        cmd.spawn().expect("cannot start dfs-client")
    }

    /// Temp files anywhere in node `node_idx`'s data directory, on either store: chunks being
    /// received (`chunks/<xx>/.<chunk id>.<nonce>.tmp`) or segments being made
    /// (`segments/.<seq>.seg.tmp`). A segment node receives chunks into records, not temp
    /// files: see [`Cluster::partial_copies`] for those.
    pub fn temp_files(&self, node_idx: usize) -> Vec<PathBuf> {
        walk_files(&self.nodes[node_idx].data_dir)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
            .collect()
    }

    /// Copies node `node_idx` has begun to receive and not finished, as found on disk, on either
    /// store: the temp files of chunks being received (files), or chunk records whose header is
    /// on disk and whose seal is not (segments: the record is being written, or was abandoned
    /// without the pad header a node writes over one, or torn by a crash).
    pub fn partial_copies(&self, node_idx: usize) -> Vec<ChunkId> {
        let data_dir = &self.nodes[node_idx].data_dir;
        match self.node_store(node_idx) {
            Store::Files => walk_files(&data_dir.join("chunks"))
                .into_iter()
                .filter_map(|(p, _)| {
                    let name = p.file_name()?.to_str()?;
                    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
                    let id = inner.get(..41).and_then(|s| s.parse::<ChunkId>().ok());
                    Some(id.unwrap_or_else(|| panic!("temp file {} is not named .<chunk id>.<nonce>.tmp", p.display())))
                })
                .collect(),
            Store::Segments => segment_oracle::scan_dir(&data_dir.join("segments"))
                .into_iter()
                .filter(|r| r.kind == segment_oracle::Kind::Chunk && !r.sealed)
                .map(|r| r.chunk_id)
                .collect(),
        }
    }

    /// Writes `data` to a fresh input file and returns its path.
    pub fn write_input(&self, data: &[u8]) -> PathBuf {
        let path = self.root.join("inputs").join(format!("input-{}", self.next_run()));
        fs::write(&path, data).expect("cannot write input file");
        path
    }

    /// `put`: the file ID on success, the client's output on failure.
    pub fn try_put_file(
        &self,
        path: &Path,
        name: Option<&str>,
        chunking: Option<Chunking>,
    ) -> Result<String, ClientOutput> {
        let mut args: Vec<OsString> = vec!["put".into(), path.into()];
        if let Some(name) = name {
            args.push("--name".into());
            args.push(name.into());
        }
        if let Some(chunking) = chunking {
            args.push("--chunking".into());
            args.push(chunking.to_string().into());
        }
        let out = self.client(&args);
        if !out.success() {
            return Err(out);
        }
        let id = out.stdout_text().trim().to_string();
        assert!(
            id.parse::<FileId>().is_ok() && out.stdout_text() == format!("{id}\n"),
            "put must print the 32-hex file ID alone on stdout, got: `{}`\n{}",
            out.cmdline,
            out.describe()
        );
        Ok(id)
    }

    pub fn try_put_bytes(&self, data: &[u8], name: &str, chunking: Chunking) -> Result<String, ClientOutput> {
        let path = self.write_input(data);
        let res = self.try_put_file(&path, Some(name), Some(chunking));
        let _ = fs::remove_file(&path);
        res
    }

    /// Uploads `data` under `name`; panics if the upload fails.
    #[track_caller]
    pub fn put_bytes(&self, data: &[u8], name: &str, chunking: Chunking) -> String {
        match self.try_put_bytes(data, name, chunking) {
            Ok(id) => id,
            Err(out) => panic!(
                "put of {} bytes as {name:?} ({chunking}) failed: `{}`\n{}",
                data.len(),
                out.cmdline,
                out.describe()
            ),
        }
    }

    /// Downloads `id` into a fresh directory with `-o PATH`. On success, checks the directory holds
    /// only the output file and returns its bytes. On failure, checks the error contract (one
    /// `error:` line, exit not 0) and that neither the output file nor any temp file was left,
    /// and returns the error line.
    #[track_caller]
    pub fn get(&self, id: &str) -> Result<Vec<u8>, String> {
        let dir = self.root.join("gets").join(format!("get-{}", self.next_run()));
        fs::create_dir_all(&dir).expect("cannot create download directory");
        let out_path = dir.join("out.bin");
        let out = self.client([OsStr::new("get"), OsStr::new(id), OsStr::new("-o"), out_path.as_os_str()]);
        let left: Vec<String> = fs::read_dir(&dir)
            .expect("read download dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        if out.success() {
            assert_eq!(
                left,
                ["out.bin"],
                "get {id} succeeded: the download directory must hold exactly the output file\n{}",
                out.describe()
            );
            let data = fs::read(&out_path).expect("read downloaded file");
            fs::remove_dir_all(&dir).expect("remove download dir");
            Ok(data)
        } else {
            let line = out.expect_error(&format!("get {id}"));
            assert!(
                left.is_empty(),
                "get {id} failed but left files behind in {}: {left:?} (expected no output file and no temp files)\n{}",
                dir.display(),
                out.describe()
            );
            Err(line)
        }
    }

    /// Downloads `id` with `-o -` (to stdout).
    #[track_caller]
    pub fn get_stdout(&self, id: &str) -> Result<Vec<u8>, String> {
        let out = self.client(["get", id, "-o", "-"]);
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(out.expect_error(&format!("get {id} -o -")))
        }
    }

    /// Runs `dfs-client ARGS... --json` and returns whether it succeeded and the JSON it printed
    /// (panicking if it printed none).
    #[track_caller]
    pub fn client_json(&self, args: &[&str]) -> (bool, Value) {
        let mut full: Vec<&str> = args.to_vec();
        full.push("--json");
        let out = self.client(&full);
        let value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {}", args.join(" "), out.describe()));
        (out.success(), value)
    }

    /// `stat ID --json`, parsed; the error line on failure.
    #[track_caller]
    pub fn stat(&self, id: &str) -> Result<json::StatInfo, String> {
        let out = self.client(["stat", id, "--json"]);
        if !out.success() {
            return Err(out.expect_error(&format!("stat {id}")));
        }
        let value: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stat {id} --json printed invalid JSON ({e})\n{}", out.describe()));
        Ok(json::StatInfo::from_json(&value).unwrap_or_else(|e| panic!("stat {id} --json: {e}\n{}", out.describe())))
    }

    /// `ls --json`, parsed; panics if it fails.
    #[track_caller]
    pub fn ls(&self) -> Vec<json::ListEntry> {
        let out = self.client(["ls", "--json"]);
        out.expect_success("ls --json");
        let value: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ls --json printed invalid JSON ({e})\n{}", out.describe()));
        json::ListEntry::from_json_list(&value).unwrap_or_else(|e| panic!("ls --json: {e}\n{}", out.describe()))
    }

    /// `rm ID`; the error line on failure.
    #[track_caller]
    pub fn rm(&self, id: &str) -> Result<(), String> {
        let out = self.client(["rm", id]);
        if out.success() {
            Ok(())
        } else {
            Err(out.expect_error(&format!("rm {id}")))
        }
    }

    /// Which store node `node_idx` keeps its chunks in, from its data directory: `segments/`
    /// (`--store segments`, the default) or `chunks/` (`--store files`, or `DFS_STORE=files` in
    /// the environment the node inherits). Panics if it holds neither.
    pub fn node_store(&self, node_idx: usize) -> Store {
        let data_dir = &self.nodes[node_idx].data_dir;
        store_of(data_dir).unwrap_or_else(|| {
            panic!("node {node_idx}'s data directory {} holds neither chunks/ nor segments/", data_dir.display())
        })
    }

    /// Every committed chunk file on node `node_idx`, sorted by chunk ID. A node running the
    /// segment store has no chunk files: its chunks are those of [`Cluster::stored_chunk_ids`],
    /// each with the path `segments/<chunk id>`, which names no file, so a test that would delete
    /// or damage it fails loudly instead of doing something else (use [`Cluster::delete_copy`]
    /// and [`Cluster::corrupt_copy`], which work on both stores).
    pub fn chunk_files(&self, node_idx: usize) -> Vec<(ChunkId, PathBuf)> {
        let slot = &self.nodes[node_idx];
        match self.node_store(node_idx) {
            Store::Files => chunk_files_under(&slot.data_dir.join("chunks")),
            Store::Segments => {
                let segments = slot.data_dir.join("segments");
                self.stored_chunk_ids(node_idx).into_iter().map(|id| (id, segments.join(id.to_string()))).collect()
            }
        }
    }

    /// Every chunk node `node_idx` holds a committed copy of, sorted, on either store, running or
    /// stopped: its chunk files (files); for a running segment node, what it answers to
    /// ChunkList; for a stopped one, the live records its segments hold ([`segment_oracle`]).
    pub fn stored_chunk_ids(&self, node_idx: usize) -> Vec<ChunkId> {
        let slot = &self.nodes[node_idx];
        match (self.node_store(node_idx), &slot.proc) {
            (Store::Segments, Some(_)) => {
                assert!(
                    !self.opts.cluster_secret,
                    "node {node_idx}: asking a segment node for its chunks needs a node without a cluster secret"
                );
                let mut ids = node_chunk_ids(&slot.addr);
                ids.sort();
                ids
            }
            _ => stored_chunk_ids_in(&slot.data_dir),
        }
    }

    /// Where the chunk `chunk_idx` of file `file_id` lies on disk: (node index, path), on every
    /// node. On a segment node the path names no file (see [`Cluster::chunk_files`]); use
    /// [`Cluster::find_copies`] with the store-neutral helpers instead.
    pub fn find_chunk_file(&self, file_id: &str, chunk_idx: u32) -> Vec<(usize, PathBuf)> {
        let want = chunk_id(file_id, chunk_idx);
        (0..self.nodes.len())
            .flat_map(|n| self.chunk_files(n).into_iter().filter(|(c, _)| *c == want).map(move |(_, p)| (n, p)))
            .collect()
    }

    /// The nodes, by index, that hold a committed copy of chunk `chunk_idx` of `file_id`, on
    /// either store.
    pub fn find_copies(&self, file_id: &str, chunk_idx: u32) -> Vec<usize> {
        let want = chunk_id(file_id, chunk_idx);
        (0..self.nodes.len()).filter(|&n| self.stored_chunk_ids(n).contains(&want)).collect()
    }

    /// Deletes node `node_idx`'s copy of `chunk_id` behind the engine's back, on either store:
    /// the chunk file is removed (files, running or stopped); a running segment node is sent
    /// ChunkDelete directly, which writes a tombstone (a stopped segment node panics: start it
    /// first).
    /// Stores `data` as `chunk_id` straight into running node `node_idx` (a STORE as the engine
    /// sends it), behind the engine's back: a copy no file records there.
    pub fn store_copy(&self, node_idx: usize, chunk_id: ChunkId, data: &[u8]) {
        let slot = &self.nodes[node_idx];
        assert!(!self.opts.cluster_secret, "store_copy needs nodes without a cluster secret");
        let mut s = node_conn(&slot.addr);
        let store = Msg::Store { chunk_id, length: data.len() as u64, crc32: dfs_proto::layout::crc32(data) };
        io_std::write_msg(&mut s, &store)
            .and_then(|()| std::io::Write::write_all(&mut s, data))
            .unwrap_or_else(|e| panic!("node {node_idx} ({}): cannot send STORE of {chunk_id}: {e}", slot.addr));
        match io_std::read_frame(&mut s) {
            Ok(Frame::Msg(Msg::StoreOk { .. })) => {}
            other => panic!("node {node_idx} ({}) answered STORE of {chunk_id} with {other:?}", slot.addr),
        }
        self.note(&format!("stored a copy of {chunk_id} on node {node_idx} behind the engine's back"));
    }

    pub fn delete_copy(&self, node_idx: usize, chunk_id: ChunkId) {
        let slot = &self.nodes[node_idx];
        match self.node_store(node_idx) {
            Store::Files => {
                let path = chunk_files_under(&slot.data_dir.join("chunks"))
                    .into_iter()
                    .find(|(c, _)| *c == chunk_id)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| {
                        panic!("node {node_idx} has no chunk file of {chunk_id} under {}", slot.data_dir.display())
                    });
                fs::remove_file(&path).unwrap_or_else(|e| {
                    panic!("node {node_idx}: cannot delete the chunk file of {chunk_id}, {}: {e}", path.display())
                });
                self.note(&format!("deleted node {node_idx}'s copy of {chunk_id}: {}", path.display()));
            }
            Store::Segments => {
                assert!(
                    slot.proc.is_some(),
                    "node {node_idx} runs the segment store and is stopped: its copy of {chunk_id} can only be deleted by a running node"
                );
                assert!(
                    !self.opts.cluster_secret,
                    "node {node_idx}: deleting a segment node's copy of {chunk_id} needs a node without a cluster secret"
                );
                let mut s = node_conn(&slot.addr);
                io_std::write_msg(&mut s, &Msg::ChunkDelete { chunk_id, written_before_unix_ms: None }).unwrap_or_else(
                    |e| panic!("node {node_idx} ({}): cannot send ChunkDelete of {chunk_id}: {e}", slot.addr),
                );
                match io_std::read_frame(&mut s) {
                    Ok(Frame::Msg(Msg::Ok)) => {}
                    other => {
                        panic!("node {node_idx} ({}) answered ChunkDelete of {chunk_id} with {other:?}", slot.addr)
                    }
                }
                self.note(&format!("deleted node {node_idx}'s copy of {chunk_id} with ChunkDelete"));
            }
        }
    }

    /// Damages node `node_idx`'s copy of `chunk_id` on disk by flipping one bit of one byte, on
    /// either store and whether the node runs or not, and returns the copy's bytes as they are
    /// now on disk: the whole chunk file (files), or the record's data (segments). On a segment
    /// node every record with the live copy's lsn is damaged (a record and any compacted copy of
    /// it, which are the same copy). A segment node checks [`Damage::Seal`] only when it starts.
    pub fn corrupt_copy(&self, node_idx: usize, chunk_id: ChunkId, damage: Damage) -> Vec<u8> {
        const MASK: u8 = 0x40;
        let data_dir = &self.nodes[node_idx].data_dir;
        match self.node_store(node_idx) {
            Store::Files => {
                let path = chunk_files_under(&data_dir.join("chunks"))
                    .into_iter()
                    .find(|(c, _)| *c == chunk_id)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| {
                        panic!("node {node_idx} has no chunk file of {chunk_id} under {}", data_dir.display())
                    });
                let mut bytes = fs::read(&path).unwrap_or_else(|e| {
                    panic!("node {node_idx}: cannot read the chunk file of {chunk_id}, {}: {e}", path.display())
                });
                let at = match damage {
                    Damage::Data(offset) => offset as usize,
                    Damage::Seal => bytes.len().saturating_sub(1),
                };
                assert!(
                    at < bytes.len(),
                    "node {node_idx}: byte {at} is outside the chunk file of {chunk_id}, {} ({} bytes)",
                    path.display(),
                    bytes.len()
                );
                bytes[at] ^= MASK;
                fs::write(&path, &bytes).unwrap_or_else(|e| {
                    panic!("node {node_idx}: cannot write the chunk file of {chunk_id}, {}: {e}", path.display())
                });
                self.note(&format!(
                    "flipped byte {at} of {} (node {node_idx}, {chunk_id}, {damage:?})",
                    path.display()
                ));
                bytes
            }
            Store::Segments => {
                let segments = data_dir.join("segments");
                let records = segment_oracle::live(&segment_oracle::scan_dir(&segments)).remove(&chunk_id);
                let records = records.unwrap_or_else(|| {
                    panic!("node {node_idx} has no live record of {chunk_id} in {}", segments.display())
                });
                for r in &records {
                    let at = match damage {
                        Damage::Data(offset) => {
                            assert!(
                                offset < r.length,
                                "node {node_idx}: data byte {offset} is outside {chunk_id} ({} bytes) at {} of {}",
                                r.length,
                                r.offset,
                                r.segment.display()
                            );
                            r.data_offset() + offset
                        }
                        Damage::Seal => r.seal_offset() + 3,
                    };
                    segment_oracle::flip_byte(&r.segment, at, MASK);
                    self.note(&format!(
                        "flipped byte {at} of {} (node {node_idx}, {chunk_id} recorded at {}, {damage:?})",
                        r.segment.display(),
                        r.offset
                    ));
                }
                segment_oracle::read_data(&records[0])
            }
        }
    }

    /// The copies node `node_idx` has set aside as corrupt, with their bytes as on disk, sorted:
    /// the files in `quarantine/` (files); the records a tombstone superseded (segments: scrub
    /// writes one over a corrupt copy, but so does a delete, so a test that deletes must tell
    /// them apart itself), with their data.
    pub fn set_aside_copies(&self, node_idx: usize) -> Vec<(ChunkId, Vec<u8>)> {
        let data_dir = &self.nodes[node_idx].data_dir;
        let mut out: Vec<(ChunkId, Vec<u8>)> = match self.node_store(node_idx) {
            Store::Files => walk_files(&data_dir.join("quarantine"))
                .into_iter()
                .map(|(p, _)| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let id = name.get(..41).and_then(|s| s.parse::<ChunkId>().ok()).unwrap_or_else(|| {
                        panic!("node {node_idx}: quarantined file {} is not named <chunk id>.<time>", p.display())
                    });
                    let bytes = fs::read(&p)
                        .unwrap_or_else(|e| panic!("node {node_idx}: cannot read quarantined {}: {e}", p.display()));
                    (id, bytes)
                })
                .collect(),
            Store::Segments => segment_oracle::superseded(&segment_oracle::scan_dir(&data_dir.join("segments")))
                .iter()
                .map(|r| (r.chunk_id, segment_oracle::read_data(r)))
                .collect(),
        };
        out.sort();
        out
    }

    /// The engine's dynamic chunking cap, if this test set one.
    pub fn chunk_size_max_bytes(&self) -> Option<u64> {
        self.opts.chunk_size_max_bytes
    }

    /// Checks that `stat` describes `data` uploaded as `name` with `chunking`: name, size and
    /// chunking as given; chunks numbered 0.., contiguous, tiling the file in a multiple of four
    /// equal parts (exactly the protocol's layout when the cap is known), each under the dynamic
    /// cap; each chunk's crc32 that of the local bytes; and each non-empty chunk held by known
    /// nodes whose chunk file starts with exactly those bytes.
    #[track_caller]
    pub fn assert_stat_describes(&self, id: &str, stat: &json::StatInfo, data: &[u8], name: &str, chunking: Chunking) {
        let ctx = format!("stat {id} (uploaded as {name:?}, {} bytes, {chunking})", data.len());
        assert_eq!(stat.name, name, "{ctx}: name");
        assert_eq!(stat.size, data.len() as u64, "{ctx}: size");
        assert_eq!(stat.chunking, chunking.to_string(), "{ctx}: chunking");
        if let Some(shown) = &stat.id {
            assert_eq!(shown, id, "{ctx}: id");
        }
        let n_chunks = stat.chunks.len();
        assert!(
            n_chunks >= 4 && n_chunks.is_multiple_of(4),
            "{ctx}: {n_chunks} chunks is not a positive multiple of 4"
        );
        if chunking == Chunking::Equal {
            assert_eq!(n_chunks, 4, "{ctx}: equal chunking must give exactly 4 chunks");
        }
        let part = (data.len() as u64).div_ceil(n_chunks as u64);
        let mut next_offset = 0u64;
        for (i, c) in stat.chunks.iter().enumerate() {
            let cctx = format!("{ctx}: chunk {i}");
            assert_eq!(c.index as usize, i, "{cctx}: chunk index out of order");
            assert_eq!(c.offset, next_offset, "{cctx}: offset does not follow the previous chunk");
            assert_eq!(c.length, part.min(data.len() as u64 - c.offset), "{cctx}: length is not the equal share");
            if chunking == Chunking::Dynamic {
                if let Some(cap) = self.opts.chunk_size_max_bytes {
                    assert!(c.length <= cap, "{cctx}: length {} is over the cap {cap}", c.length);
                }
            }
            let bytes = &data[c.offset as usize..(c.offset + c.length) as usize];
            assert_eq!(c.crc32, dfs_proto::layout::crc32(bytes), "{cctx}: crc32 does not match the uploaded bytes");
            if c.length > 0 {
                assert!(!c.nodes.is_empty(), "{cctx}: no node holds this non-empty chunk");
            }
            for addr in &c.nodes {
                let node_idx = self
                    .node_idx_of(addr)
                    .unwrap_or_else(|| panic!("{cctx}: node {addr} is not one of {:?}", self.node_addrs()));
                let file_id: FileId = id.parse().expect("well-formed file ID");
                let want = ChunkId { file_id, chunk_idx: c.index };
                if c.length == 0 {
                    continue;
                }
                let path = self.chunk_files(node_idx).into_iter().find(|(cid, _)| *cid == want).map(|(_, p)| p);
                let path = path.unwrap_or_else(|| panic!("{cctx}: node {node_idx} ({addr}) has no chunk file {want}"));
                if self.node_store(node_idx) == Store::Segments {
                    // The node lists it; its live record on disk holds exactly those bytes.
                    let segments = self.nodes[node_idx].data_dir.join("segments");
                    let records = segment_oracle::live(&segment_oracle::scan_dir(&segments)).remove(&want);
                    let records = records.unwrap_or_else(|| {
                        panic!("{cctx}: node {node_idx} lists {want}, its segments have no record of it")
                    });
                    for r in &records {
                        let what = format!("{cctx}: data of the record at {} of {}", r.offset, r.segment.display());
                        assert_bytes_eq(&segment_oracle::read_data(r), bytes, &what);
                    }
                    continue;
                }
                let on_disk = fs::read(&path).expect("read chunk file");
                assert!(
                    on_disk.len() as u64 > c.length,
                    "{cctx}: chunk file {} is shorter than data + footer",
                    path.display()
                );
                assert_bytes_eq(
                    &on_disk[..c.length as usize],
                    bytes,
                    &format!("{cctx}: data part of {}", path.display()),
                );
            }
            next_offset += c.length;
        }
        assert_eq!(next_offset, data.len() as u64, "{ctx}: chunk lengths do not add up to the file size");
        // The cap only matters to dynamic chunking; equal chunking is the same for any cap.
        let cap = match chunking {
            Chunking::Equal => Some(1),
            Chunking::Dynamic => self.opts.chunk_size_max_bytes,
        };
        if let Some(cap) = cap {
            let spans = dfs_proto::layout::chunk_spans(data.len() as u64, chunking, cap).expect("layout");
            let shown: Vec<(u64, u64)> = stat.chunks.iter().map(|c| (c.offset, c.length)).collect();
            let expected: Vec<(u64, u64)> = spans.iter().map(|s| (s.offset, s.length)).collect();
            assert_eq!(shown, expected, "{ctx}: chunk table differs from the protocol layout");
        }
    }

    /// Records a note in the command history (shown if the test fails).
    pub fn note(&self, text: &str) {
        self.record(format!("# {text}"));
    }

    fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "\n======== dfs test report: {} (kept) ========", self.root.display());
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let skip = history.len().saturating_sub(HISTORY_REPORT_ENTRIES);
        let _ = writeln!(
            r,
            "---- commands run ({} in all{}) ----",
            history.len(),
            if skip > 0 { ", oldest left out" } else { "" }
        );
        for entry in &history[skip..] {
            let _ = writeln!(r, "{entry}");
        }
        for (label, stdout_log, stderr_log) in &self.logs {
            let _ = writeln!(r, "---- {label}: stdout {} ----", stdout_log.display());
            r.push_str(&log_tail(stdout_log, 5));
            let _ = writeln!(r, "---- {label}: stderr {} ----", stderr_log.display());
            r.push_str(&log_tail(stderr_log, LOG_TAIL_LINES));
        }
        let _ = writeln!(r, "---- files under {} (empty directories left out) ----", self.root.display());
        for (path, len) in walk_files(&self.root).into_iter().take(400) {
            let _ = writeln!(r, "    {:>12}  {}", len, path.strip_prefix(&self.root).unwrap_or(&path).display());
        }
        r
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if let Some(mut e) = self.engine.take() {
            e.kill();
        }
        for mut e in self.more_engines.drain(..) {
            e.kill();
        }
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill();
            }
        }
        if panicking {
            eprintln!("{}", self.report());
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("test directory kept: {}", kept.display());
            }
        }
    }
}

/// Every regular file under `dir`, recursively, with its size, sorted by path.
pub fn walk_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => out.push((path, entry.metadata().map(|m| m.len()).unwrap_or(0))),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Which store a node keeps its chunks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// One file per chunk copy under `chunks/` (`--store files`).
    Files,
    /// Records in segment files under `segments/` (`--store segments`, docs/STORE.md).
    Segments,
}

/// Where [`Cluster::corrupt_copy`] flips a byte.
#[derive(Clone, Copy, Debug)]
pub enum Damage {
    /// The byte at this offset of the chunk's data.
    Data(u64),
    /// The last byte of the copy's seal: the chunk file's last byte, its footer's seal (files),
    /// or the record's seal after the block crc32s (segments).
    Seal,
}

/// The store a node's data directory holds, if it holds one.
pub fn store_of(data_dir: &Path) -> Option<Store> {
    if data_dir.join("segments").is_dir() {
        Some(Store::Segments)
    } else if data_dir.join("chunks").is_dir() {
        Some(Store::Files)
    } else {
        None
    }
}

/// Every chunk a node's data directory holds a committed copy of, read from disk, sorted: its
/// chunk files, or the live records of its segments ([`segment_oracle::live`], which checks
/// seals but not data blocks, as a node starting up does for all but its newest segments).
pub fn stored_chunk_ids_in(data_dir: &Path) -> Vec<ChunkId> {
    match store_of(data_dir) {
        Some(Store::Files) => chunk_files_under(&data_dir.join("chunks")).into_iter().map(|(c, _)| c).collect(),
        Some(Store::Segments) => {
            segment_oracle::live(&segment_oracle::scan_dir(&data_dir.join("segments"))).into_keys().collect()
        }
        None => panic!("{} holds neither chunks/ nor segments/", data_dir.display()),
    }
}

/// Chunk `chunk_idx` of the file with ID `file_id` (32 hex digits).
pub fn chunk_id(file_id: &str, chunk_idx: u32) -> ChunkId {
    let file_id: FileId = file_id.parse().unwrap_or_else(|e| panic!("{file_id:?} is not a file ID: {e}"));
    ChunkId { file_id, chunk_idx }
}

/// A connection to a node (on loopback, no cluster secret), past its handshake.
fn node_conn(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to node {addr}: {e}"));
    s.set_read_timeout(Some(READY_TIMEOUT)).expect("set read timeout");
    io_std::write_msg(&mut s, &Msg::Hello(dfs_proto::Hello::new(dfs_proto::Role::Engine))).expect("send Hello");
    match io_std::read_frame(&mut s) {
        Ok(Frame::Msg(Msg::HelloOk(_))) => {}
        other => panic!("node {addr} answered Hello with {other:?}"),
    }
    s
}

/// What the node at `addr` reports about its store now (NodeStat).
pub fn node_report(addr: &str) -> dfs_proto::StoreReport {
    let mut s = node_conn(addr);
    io_std::write_msg(&mut s, &Msg::NodeStat).expect("send NodeStat");
    match io_std::read_frame(&mut s) {
        Ok(Frame::Msg(Msg::NodeStatOk(report))) => report,
        other => panic!("node {addr} answered NodeStat with {other:?}"),
    }
}

/// Every chunk the node at `addr` holds, asked of the node (ChunkList).
pub fn node_chunk_ids(addr: &str) -> Vec<ChunkId> {
    let mut s = node_conn(addr);
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        io_std::write_msg(&mut s, &Msg::ChunkList { after, limit: 1000, min_age_secs: 0 }).expect("send ChunkList");
        match io_std::read_frame(&mut s) {
            Ok(Frame::Msg(Msg::ChunkListOk { chunk_ids, more, .. })) => {
                after = chunk_ids.last().copied();
                ids.extend(chunk_ids);
                if !more {
                    return ids;
                }
            }
            other => panic!("node {addr} answered ChunkList with {other:?}"),
        }
    }
}

/// Every file under a node's `chunks/` directory whose name is a chunk ID in its fan-out directory
/// (temp files of chunks being received are skipped).
/// Panics on any other file: chunk files are named from IDs only.
pub fn chunk_files_under(chunks_dir: &Path) -> Vec<(ChunkId, PathBuf)> {
    let mut out = Vec::new();
    for (path, _) in walk_files(chunks_dir) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // A chunk being received lives next to its final place as `.<chunk id>.<nonce>.tmp`;
        // tests that care about leftovers look for those themselves.
        if name.starts_with('.') && name.ends_with(".tmp") {
            continue;
        }
        let chunk_id: ChunkId = name.parse().unwrap_or_else(|_| {
            panic!("{} under a node's chunks/ is not named <file id>.<chunk index>", path.display())
        });
        let parent = path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("");
        assert_eq!(parent, chunk_id.fanout_dir(), "chunk file {} is in the wrong fan-out directory", path.display());
        assert_eq!(
            path.parent().and_then(Path::parent),
            Some(chunks_dir),
            "chunk file {} is nested too deep",
            path.display()
        );
        out.push((chunk_id, path));
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Data and assertions
// ---------------------------------------------------------------------------------------------

/// `len` pseudo-random bytes from `seed` (xorshift64*): fast, deterministic, incompressible.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    out
}

/// Asserts two byte strings are identical; on failure names `what`, both lengths and the first
/// differing offset with the bytes around it, instead of printing megabytes.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first_diff = actual.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(actual.len().min(expected.len()));
    let window = |b: &[u8]| {
        let from = first_diff.saturating_sub(8);
        let to = (first_diff + 8).min(b.len());
        if from >= to {
            String::from("(nothing)")
        } else {
            b[from..to].iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
        }
    };
    panic!(
        "{what}: bytes differ: got {} bytes, expected {} bytes; first difference at offset {first_diff}\n  got      [{}..]: {}\n  expected [{}..]: {}",
        actual.len(),
        expected.len(),
        first_diff.saturating_sub(8),
        window(actual),
        first_diff.saturating_sub(8),
        window(expected)
    );
}

/// Whether an error message names chunk `chunk_idx` of `file_id`: `chunk 2`, `chunk #2`,
/// `chunk index 2`, `chunk_idx 2`, `chunk=2`, or the chunk ID `<file id>.00000002`.
pub fn mentions_chunk(message: &str, file_id: &str, chunk_idx: u32) -> bool {
    let lower = message.to_lowercase();
    if lower.contains(&format!("{file_id}.{chunk_idx:08x}")) {
        return true;
    }
    let idx = chunk_idx.to_string();
    ["chunk ", "chunk #", "chunk index ", "chunk_idx ", "chunk_idx=", "chunk=", "chunk: ", "chunk index: "].iter().any(
        |prefix| {
            let needle = format!("{prefix}{idx}");
            lower.match_indices(&needle).any(|(at, _)| {
                let next = lower[at + needle.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric())
            })
        },
    )
}

/// A fresh, well-formed file ID that no server has handed out.
pub fn random_file_id() -> String {
    FileId::random().expect("OS random source").to_string()
}

// ---------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------

/// How a server ended a connection it was sent garbage on.
#[derive(Debug)]
pub enum Closed {
    /// Clean EOF, after these bytes (possibly an Error frame).
    Eof(Vec<u8>),
    /// Connection reset (the server closed with unread input).
    Reset(Vec<u8>),
    /// An Error frame arrived and the connection was still open when the wait ended.
    ErrorFrame(String),
}

/// Connects with read and write timeouts set.
pub fn raw_connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(250))).expect("set read timeout");
    s.set_write_timeout(Some(CLOSE_TIMEOUT)).expect("set write timeout");
    s
}

/// Sends `bytes` (a write failure is fine: the server may already have closed), optionally
/// half-closes, then waits up to [`CLOSE_TIMEOUT`] for the server to close the connection or
/// answer with an Error frame. Panics, naming `what`, if neither happens.
#[track_caller]
pub fn send_and_expect_close(addr: &str, bytes: &[u8], half_close: bool, what: &str) -> Closed {
    let mut s = raw_connect(addr);
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    expect_closed(&mut s, what)
}

#[track_caller]
pub fn expect_closed(s: &mut TcpStream, what: &str) -> Closed {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Closed::Eof(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Closed::Reset(got),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{what}: unexpected read error {e}"),
        }
        if Instant::now() >= deadline {
            if let Some(message) = error_frame_in(&got) {
                return Closed::ErrorFrame(message);
            }
            panic!(
                "{what}: the server neither closed the connection nor sent an Error frame within {CLOSE_TIMEOUT:?} (received {} bytes: {})",
                got.len(),
                preview(&got, 200)
            );
        }
    }
}

/// The message of the first frame in `bytes` if it is an Error frame.
pub fn error_frame_in(bytes: &[u8]) -> Option<String> {
    match io_std::read_frame(&mut &bytes[..]) {
        Ok(Frame::Msg(Msg::Error { status, message })) => Some(format!("{status}: {message}")),
        _ => None,
    }
}

/// A frame header: body length (big-endian), then kind.
pub fn frame_header(body_len: u32, kind: u8) -> Vec<u8> {
    let mut h = body_len.to_be_bytes().to_vec();
    h.push(kind);
    h
}

// ---------------------------------------------------------------------------------------------
// Client JSON
// ---------------------------------------------------------------------------------------------

/// The client's `--json` output, read tolerantly: each field is looked up under every name it
/// has been given, so the tests do not break on a rename.
pub mod json {
    use super::Value;

    /// One chunk as `stat --json` shows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ChunkStat {
        pub index: u32,
        pub offset: u64,
        pub length: u64,
        pub crc32: u32,
        /// Addresses of the nodes holding a copy.
        pub nodes: Vec<String>,
    }

    /// `stat ID --json`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct StatInfo {
        pub id: Option<String>,
        pub name: String,
        pub size: u64,
        pub chunking: String,
        pub chunks: Vec<ChunkStat>,
        pub raw: Value,
    }

    /// One entry of `ls --json`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ListEntry {
        pub id: String,
        pub name: String,
        pub size: u64,
    }

    fn field<'a>(obj: &'a Value, names: &[&str]) -> Option<&'a Value> {
        names.iter().find_map(|n| obj.get(*n))
    }

    fn req<'a>(obj: &'a Value, names: &[&str]) -> Result<&'a Value, String> {
        field(obj, names).ok_or_else(|| format!("no field {} in {obj}", names.join("|")))
    }

    fn as_u64(v: &Value, what: &str) -> Result<u64, String> {
        match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| format!("{what} is not an unsigned integer: {v}"))
    }

    fn as_string(v: &Value, what: &str) -> Result<String, String> {
        v.as_str().map(str::to_string).ok_or_else(|| format!("{what} is not a string: {v}"))
    }

    /// A crc32 as a number or as hex text (`"0a1b2c3d"` or `"0x0a1b2c3d"`).
    fn as_crc32(v: &Value) -> Result<u32, String> {
        let parsed = match v {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => u32::from_str_radix(s.trim_start_matches("0x"), 16).ok(),
            _ => None,
        };
        parsed.ok_or_else(|| format!("crc32 is neither a u32 nor hex text: {v}"))
    }

    impl StatInfo {
        pub fn from_json(v: &Value) -> Result<StatInfo, String> {
            let v = field(v, &["file"]).filter(|f| f.is_object()).unwrap_or(v);
            let top_nodes: Vec<String> = field(v, &["nodes", "node_addrs"])
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let chunks = req(v, &["chunks", "chunk_table"])?
                .as_array()
                .ok_or("chunks is not an array")?
                .iter()
                .map(|c| chunk(c, &top_nodes))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(StatInfo {
                id: field(v, &["id", "file_id"]).and_then(Value::as_str).map(str::to_string),
                name: as_string(req(v, &["name", "file_name"])?, "name")?,
                size: as_u64(req(v, &["size", "size_bytes"])?, "size")?,
                chunking: as_string(req(v, &["chunking"])?, "chunking")?.to_lowercase(),
                chunks,
                raw: v.clone(),
            })
        }
    }

    fn chunk(c: &Value, top_nodes: &[String]) -> Result<ChunkStat, String> {
        let index = as_u64(req(c, &["index", "chunk_idx", "chunk_index", "idx"])?, "chunk index")?;
        let nodes_value = req(c, &["nodes", "node", "placement", "replicas", "node_addrs"])?;
        let items: Vec<&Value> = match nodes_value {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        let nodes = items
            .into_iter()
            .map(|n| match n {
                Value::String(s) => Ok(s.clone()),
                Value::Number(i) => i
                    .as_u64()
                    .and_then(|i| top_nodes.get(i as usize).cloned())
                    .ok_or_else(|| format!("chunk {index}: node index {i} does not name a node in {top_nodes:?}")),
                Value::Object(_) => field(n, &["addr", "address", "node"])
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("chunk {index}: node entry without an address: {n}")),
                other => Err(format!("chunk {index}: unreadable node entry {other}")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ChunkStat {
            index: u32::try_from(index).map_err(|_| format!("chunk index {index} is over u32"))?,
            offset: as_u64(req(c, &["offset", "offset_bytes"])?, "chunk offset")?,
            length: as_u64(req(c, &["length", "len", "length_bytes", "size"])?, "chunk length")?,
            crc32: as_crc32(req(c, &["crc32", "crc"])?)?,
            nodes,
        })
    }

    impl ListEntry {
        pub fn from_json_list(v: &Value) -> Result<Vec<ListEntry>, String> {
            let v = field(v, &["files"]).unwrap_or(v);
            v.as_array()
                .ok_or_else(|| format!("ls --json is not an array: {v}"))?
                .iter()
                .map(|e| {
                    Ok(ListEntry {
                        id: as_string(req(e, &["id", "file_id"])?, "id")?,
                        name: as_string(req(e, &["name", "file_name"])?, "name")?,
                        size: as_u64(req(e, &["size", "size_bytes"])?, "size")?,
                    })
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_chunk_matches_whole_indices_only() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(mentions_chunk("error: corrupt: chunk 2 is corrupt on node 127.0.0.1:1", id, 2));
        assert!(mentions_chunk("chunk #2 failed", id, 2));
        assert!(mentions_chunk(&format!("chunk {id}.00000002: block 0"), id, 2));
        assert!(mentions_chunk(&format!("chunk {id}.0000000a"), id, 10));
        assert!(!mentions_chunk("chunk 20 is corrupt", id, 2));
        assert!(!mentions_chunk("chunk 12 is corrupt", id, 2));
        assert!(!mentions_chunk(&format!("chunk {id}.00000003"), id, 2));
    }

    #[test]
    fn pseudo_random_bytes_are_deterministic_and_differ_by_seed() {
        assert_eq!(pseudo_random_bytes(7, 1001), pseudo_random_bytes(7, 1001));
        assert_ne!(pseudo_random_bytes(7, 64), pseudo_random_bytes(8, 64));
        assert_eq!(pseudo_random_bytes(7, 13), pseudo_random_bytes(7, 1001)[..13]);
        let data = pseudo_random_bytes(1, 1 << 16);
        let n_zero = data.iter().filter(|&&b| b == 0).count();
        assert!(n_zero < 1000, "{n_zero} zero bytes in 64 KiB: not random-looking");
    }

    #[test]
    fn assert_bytes_eq_reports_the_first_differing_offset() {
        let a = vec![1u8; 100];
        let mut b = a.clone();
        b[42] = 9;
        let err = std::panic::catch_unwind(|| assert_bytes_eq(&b, &a, "sample")).expect_err("must panic");
        let msg = err.downcast_ref::<String>().expect("a formatted panic message");
        assert!(msg.contains("first difference at offset 42"), "{msg}");
        let err = std::panic::catch_unwind(|| assert_bytes_eq(&a[..50], &a, "short")).expect_err("must panic");
        let msg = err.downcast_ref::<String>().expect("a formatted panic message");
        assert!(msg.contains("got 50 bytes, expected 100 bytes") && msg.contains("offset 50"), "{msg}");
    }

    #[test]
    fn client_json_is_read_as_documented() {
        let stat: Value = serde_json::json!({
            "id": "abababababababababababababababab",
            "name": "f",
            "size": 3,
            "chunking": "dynamic",
            "created_unix_ms": 5,
            "n_chunks": 1,
            "chunks": [{"chunk_idx": 0, "offset": 0, "length": 3, "crc32": "0000beef", "nodes": ["n1:2", "n0:1"]}]
        });
        let info = json::StatInfo::from_json(&stat).expect("parse stat");
        assert_eq!(info.name, "f");
        assert_eq!(info.chunking, "dynamic");
        assert_eq!(
            info.chunks,
            [json::ChunkStat {
                index: 0,
                offset: 0,
                length: 3,
                crc32: 0xbeef,
                nodes: vec!["n1:2".into(), "n0:1".into()]
            }]
        );
        let ls = serde_json::json!([{"id": "ab", "name": "x y", "size": 7, "chunking": "equal"}]);
        let entries = json::ListEntry::from_json_list(&ls).expect("parse ls");
        assert_eq!(entries, [json::ListEntry { id: "ab".into(), name: "x y".into(), size: 7 }]);
        assert!(json::StatInfo::from_json(&serde_json::json!({"name": "f"})).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Segment store oracle
// ---------------------------------------------------------------------------------------------

/// A reader of a segment node's files (`DATA/segments/*.seg`), written from docs/STORE.md
/// (format version 2) and nothing else, so the tests can find, damage and count what a segment
/// node holds on disk without asking the node. It is a test oracle: it follows the spec, not the
/// node's code, and panics on anything the spec does not allow, naming the file and offset.
pub mod segment_oracle {
    use dfs_proto::{ChunkId, FileId};
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    /// Every offset and length on disk is a multiple of this.
    pub const ALIGN: u64 = 4096;
    /// Bytes of a record header; the data follows it.
    pub const HEADER_BYTES: u64 = 64;
    /// Blocks of a chunk's data, each with its crc32 in the record's trailer.
    const BLOCK_BYTES: u64 = 1 << 20;
    /// Bytes read at once while looking for the next header after a gap.
    const WINDOW_BYTES: u64 = 1 << 20;
    const SEGMENT_MAGIC: &[u8; 8] = b"DFSSEG01";
    const RECORD_MAGIC: &[u8; 8] = b"DFSREC02";
    const FORMAT_VERSION: u32 = 2;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Chunk,
        Tombstone,
        Pad,
    }

    /// One record whose header is sound (magic, kind and the header's own crc32).
    #[derive(Clone, Debug)]
    pub struct Record {
        pub segment: PathBuf,
        /// Offset of the header in its segment.
        pub offset: u64,
        pub kind: Kind,
        pub chunk_id: ChunkId,
        /// Data bytes (chunk), 0 (tombstone), the whole span (pad).
        pub length: u64,
        pub lsn: u64,
        /// Whether the seal after the block crc32s holds (chunks and tombstones; never for a
        /// pad, which has none). A chunk record whose header is on disk but whose seal is not
        /// is being written (or was torn by a crash).
        pub sealed: bool,
    }

    impl Record {
        /// Offset of the data's first byte in the segment.
        pub fn data_offset(&self) -> u64 {
            self.offset + HEADER_BYTES
        }

        /// Offset of the seal: after the data and one crc32 per block.
        pub fn seal_offset(&self) -> u64 {
            self.data_offset() + self.length + 4 * n_blocks(self.length)
        }

        /// Bytes the record takes in its segment, padding included.
        pub fn span(&self) -> u64 {
            match self.kind {
                Kind::Pad => self.length,
                _ => align_up(HEADER_BYTES + self.length + 4 * n_blocks(self.length) + 4),
            }
        }
    }

    fn n_blocks(length: u64) -> u64 {
        length.div_ceil(BLOCK_BYTES)
    }

    fn align_up(n: u64) -> u64 {
        n.div_ceil(ALIGN) * ALIGN
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b.try_into().expect("4 bytes"))
    }

    fn be64(b: &[u8]) -> u64 {
        u64::from_be_bytes(b.try_into().expect("8 bytes"))
    }

    /// The segment files under `segments_dir`, in seq order (`<16 hex digits>.seg`; segments
    /// being made, `.<seq>.seg.tmp`, are not segments yet).
    pub fn segment_files(segments_dir: &Path) -> Vec<PathBuf> {
        let entries = fs::read_dir(segments_dir)
            .unwrap_or_else(|e| panic!("cannot list the segments in {}: {e}", segments_dir.display()));
        let mut out: Vec<(u64, PathBuf)> = entries
            .map(|e| e.unwrap_or_else(|e| panic!("cannot list {}: {e}", segments_dir.display())).path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let hex = name.strip_suffix(".seg").filter(|h| h.len() == 16)?;
                Some((u64::from_str_radix(hex, 16).ok()?, p))
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, p)| p).collect()
    }

    /// The header of the record at the start of `block`, if it is a sound one.
    fn parse_header(block: &[u8]) -> Option<(Kind, ChunkId, u64, u64)> {
        let h = block.get(..HEADER_BYTES as usize)?;
        if &h[0..8] != RECORD_MAGIC || dfs_proto::layout::crc32(&h[..60]) != be32(&h[60..64]) {
            return None;
        }
        let kind = match h[8] {
            1 => Kind::Chunk,
            2 => Kind::Tombstone,
            3 => Kind::Pad,
            _ => return None,
        };
        let chunk_id = ChunkId { file_id: FileId(h[12..28].try_into().ok()?), chunk_idx: be32(&h[28..32]) };
        Some((kind, chunk_id, be64(&h[32..40]), be64(&h[52..60])))
    }

    /// Every record with a sound header in one segment, in order; nothing if the segment is
    /// gone (a running node's compaction deletes segments it has rewritten).
    pub fn scan_segment(path: &Path) -> Vec<Record> {
        let file = match fs::File::open(path) {
            Ok(f) => f,
            // Deleted by compaction since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("cannot open segment {}: {e}", path.display()),
        };
        let size = file.metadata().unwrap_or_else(|e| panic!("cannot stat segment {}: {e}", path.display())).len();
        let read = |offset: u64, len: u64| -> Vec<u8> {
            let len = len.min(size.saturating_sub(offset)) as usize;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .unwrap_or_else(|e| panic!("cannot read {len} bytes at {offset} of segment {}: {e}", path.display()));
            buf
        };
        let head = read(0, ALIGN);
        assert!(
            head.len() == ALIGN as usize
                && &head[0..8] == SEGMENT_MAGIC
                && dfs_proto::layout::crc32(&head[..32]) == be32(&head[32..36]),
            "{} is not a sound dfs segment (magic or header crc32)",
            path.display()
        );
        assert_eq!(be32(&head[8..12]), FORMAT_VERSION, "{}: segment format version", path.display());
        assert_eq!(u64::from(be32(&head[12..16])), ALIGN, "{}: segment alignment", path.display());
        let mut out = Vec::new();
        let mut offset = ALIGN;
        while offset < size {
            let window = read(offset, WINDOW_BYTES);
            let found = (0..window.len() as u64)
                .step_by(ALIGN as usize)
                .find_map(|at| parse_header(&window[at as usize..]).map(|h| (offset + at, h)));
            let Some((at, (kind, chunk_id, length, lsn))) = found else {
                // A gap: space reserved and never written, or the unused end.
                offset += window.len().max(1) as u64;
                continue;
            };
            let mut record =
                Record { segment: path.to_path_buf(), offset: at, kind, chunk_id, length, lsn, sealed: false };
            if kind != Kind::Pad {
                let crcs_at = record.data_offset() + length;
                let trailer = read(crcs_at, 4 * n_blocks(length) + 4);
                if trailer.len() as u64 == 4 * n_blocks(length) + 4 {
                    let (crcs, seal) = trailer.split_at(trailer.len() - 4);
                    let mut sealed_bytes = read(at, HEADER_BYTES);
                    sealed_bytes.extend_from_slice(crcs);
                    record.sealed = dfs_proto::layout::crc32(&sealed_bytes) == be32(seal);
                }
            }
            assert!(
                kind != Kind::Pad || (length > 0 && length % ALIGN == 0),
                "{}: pad at {at} spans {length} bytes, not a positive multiple of {ALIGN}",
                path.display()
            );
            offset = at + record.span();
            out.push(record);
        }
        out
    }

    /// Every record of every segment under `segments_dir`, in seq and offset order.
    pub fn scan_dir(segments_dir: &Path) -> Vec<Record> {
        segment_files(segments_dir).iter().flat_map(|p| scan_segment(p)).collect()
    }

    /// Each chunk's live copy: of its sealed chunk records and tombstones, those with the
    /// highest lsn, unless one of them is a tombstone (a tombstone carries the lsn of the record
    /// it deletes; then the chunk is deleted). More than one record of a chunk with that lsn
    /// are one record and its compacted copies.
    pub fn live(records: &[Record]) -> BTreeMap<ChunkId, Vec<Record>> {
        let mut newest: BTreeMap<ChunkId, (u64, Vec<&Record>)> = BTreeMap::new();
        for r in records.iter().filter(|r| r.sealed && r.kind != Kind::Pad) {
            let entry = newest.entry(r.chunk_id).or_insert((r.lsn, Vec::new()));
            if r.lsn > entry.0 {
                *entry = (r.lsn, Vec::new());
            }
            if r.lsn == entry.0 {
                entry.1.push(r);
            }
        }
        newest
            .into_iter()
            .filter(|(_, (_, rs))| rs.iter().all(|r| r.kind == Kind::Chunk))
            .map(|(id, (_, rs))| (id, rs.into_iter().cloned().collect()))
            .collect()
    }

    /// Sealed chunk records that a tombstone of their chunk superseded (one carrying their lsn
    /// or a later one): copies deleted, or set aside by scrub (the two look the same on disk),
    /// whose bytes compaction has not reclaimed yet.
    pub fn superseded(records: &[Record]) -> Vec<Record> {
        records
            .iter()
            .filter(|r| r.sealed && r.kind == Kind::Chunk)
            .filter(|r| {
                records
                    .iter()
                    .any(|t| t.sealed && t.kind == Kind::Tombstone && t.chunk_id == r.chunk_id && t.lsn >= r.lsn)
            })
            .cloned()
            .collect()
    }

    /// The data bytes of a chunk record.
    pub fn read_data(record: &Record) -> Vec<u8> {
        let file = fs::File::open(&record.segment)
            .unwrap_or_else(|e| panic!("cannot open segment {}: {e}", record.segment.display()));
        let mut buf = vec![0u8; record.length as usize];
        file.read_exact_at(&mut buf, record.data_offset()).unwrap_or_else(|e| {
            panic!("cannot read chunk {} at {} of {}: {e}", record.chunk_id, record.offset, record.segment.display())
        });
        buf
    }

    /// Flips `mask` into the byte at `offset` of a segment with a plain positioned write (a node
    /// reading with O_DIRECT sees it: the kernel writes dirty page-cache pages back before a
    /// direct read of their range).
    pub fn flip_byte(segment: &Path, offset: u64, mask: u8) {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment)
            .unwrap_or_else(|e| panic!("cannot open segment {} for writing: {e}", segment.display()));
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, offset)
            .unwrap_or_else(|e| panic!("cannot read byte {offset} of {}: {e}", segment.display()));
        byte[0] ^= mask;
        file.write_all_at(&byte, offset)
            .unwrap_or_else(|e| panic!("cannot write byte {offset} of {}: {e}", segment.display()));
    }
}
