//! The cluster: finding the workspace binaries, starting and killing the server processes (engine,
//! nodes), the options a test may set, and the report printed when a test fails.

use crate::{netns, walk_files, HISTORY_REPORT_ENTRIES, LOG_TAIL_LINES, READY_TIMEOUT};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

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

pub(crate) fn command_line(cmd: &Command) -> String {
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
pub(crate) struct Proc {
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

pub(crate) struct NodeSlot {
    pub(crate) proc: Option<Proc>,
    pub(crate) addr: String,
    pub(crate) data_dir: PathBuf,
    n_starts: usize,
}

/// One test's processes and directory.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    pub(crate) root: PathBuf,
    pub(crate) opts: ClusterOpts,
    pub(crate) nodes: Vec<NodeSlot>,
    engine: Option<Proc>,
    engine_addr: String,
    /// Engines beyond the first, sharing its metadata (PostgreSQL) and nodes.
    more_engines: Vec<Proc>,
    /// What client runs are given as `--server`: the engine's address unless a test chose.
    server: Option<String>,
    n_engine_starts: usize,
    /// The access key file clients present, once a `--local` engine has made one.
    pub(crate) token_file: Option<PathBuf>,
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

    pub(crate) fn record(&self, entry: String) {
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
    pub(crate) fn process(&self, program: &str, host: &str) -> Command {
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

    pub(crate) fn server(&self) -> &str {
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

    pub(crate) fn next_run(&self) -> usize {
        self.n_runs.fetch_add(1, Ordering::Relaxed)
    }

    /// The engine's dynamic chunking cap, if this test set one.
    pub fn chunk_size_max_bytes(&self) -> Option<u64> {
        self.opts.chunk_size_max_bytes
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
