//! `--local N`: the embedded default a newcomer uses. The engine starts N storage nodes as child
//! processes on the N loopback ports after its own, each with its data under the --data
//! directory, and stops them when it exits (they also receive SIGTERM if the engine dies).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a node may take to start listening.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct LocalNode {
    pub addr: SocketAddr,
    child: Child,
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_nodes(
    listen: SocketAddr,
    n_nodes: usize,
    data: &Path,
    data_path: Option<dfs_runtime::DataPath>,
    cluster_secret_file: Option<&Path>,
) -> Result<Vec<LocalNode>, String> {
    // With port 0 every node picks a free port of its own and says which; otherwise the nodes
    // take the ports after the engine's.
    if listen.port() != 0 && listen.port() as usize + n_nodes > u16::MAX as usize {
        return Err(format!("no room for {n_nodes} node ports after port {}", listen.port()));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the engine binary: {e}"))?;
    let node_exe = exe.with_file_name("dfs-node");
    if !node_exe.is_file() {
        return Err(format!("{} not found: build the workspace (cargo build --release)", node_exe.display()));
    }
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let mut nodes = Vec::with_capacity(n_nodes);
    for node_idx in 0..n_nodes {
        let addr = match listen.port() {
            0 => SocketAddr::new(listen.ip(), 0),
            port => SocketAddr::new(listen.ip(), port + 1 + node_idx as u16),
        };
        let dir = data.join(format!("node-{node_idx}"));
        let mut cmd = Command::new(&node_exe);
        cmd.arg("--listen").arg(addr.to_string()).arg("--data").arg(&dir).stdout(Stdio::piped());
        if let Some(path) = data_path {
            cmd.arg("--data-path").arg(path.to_string());
        }
        if let Some(secret) = cluster_secret_file {
            cmd.arg("--cluster-secret-file").arg(secret);
        }
        // SAFETY: set_pdeathsig is a single prctl system call, safe between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", node_exe.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let mut node = LocalNode { addr, child };
        match rx.recv_timeout(NODE_START_TIMEOUT) {
            Ok(Some(Ok(line))) if !line.is_empty() => {
                node.addr = dfs_proto::listening::parse(&line)
                    .ok_or_else(|| format!("node {node_idx} printed {line:?}, not `listening ADDR`"))?;
            }
            _ => {
                let status = node.child.try_wait().ok().flatten();
                return Err(format!(
                    "node {node_idx} did not start on {addr} (exit status: {}); see its log above",
                    status.map(|s| s.to_string()).unwrap_or_else(|| "still running".into())
                ));
            }
        }
        tracing::info!("local node {node_idx} on {}, data in {}", node.addr, dir.display());
        nodes.push(node);
    }
    Ok(nodes)
}
