//! `--local N`: the embedded default a newcomer uses. The engine starts N storage nodes as child
//! processes on the N loopback ports after its own, each with its data under the --data
//! directory, and stops them when it exits (they also receive SIGTERM if the engine dies).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
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
        cmd.arg("--listen").arg(addr.to_string()).arg("--data").arg(&dir);
        if let Some(path) = data_path {
            cmd.arg("--data-path").arg(path.to_string());
        }
        if let Some(secret) = cluster_secret_file {
            cmd.arg("--cluster-secret-file").arg(secret);
        }
        dfs_launch::die_with_parent(&mut cmd);
        let what = format!("node {node_idx} (on {addr})");
        let started = dfs_launch::start(&mut cmd, &what, NODE_START_TIMEOUT, dfs_launch::Rest::Discard)
            .map_err(|e| format!("{e}; see its log above"))?;
        let node = LocalNode { addr: started.addr, child: started.child };
        tracing::info!("local node {node_idx} on {}, data in {}", node.addr, dir.display());
        nodes.push(node);
    }
    Ok(nodes)
}
