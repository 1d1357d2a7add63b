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

/// Why `--local` could not start its nodes.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no room for {n_nodes} node ports after port {port}")]
    NoPorts { n_nodes: usize, port: u16 },
    #[error("cannot locate the engine binary: {0}")]
    OwnBinary(std::io::Error),
    #[error("{} not found: build the workspace (cargo build --release)", .0.display())]
    NoNodeBinary(std::path::PathBuf),
    #[error("cannot create {}: {source}", path.display())]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}; see its log above")]
    NodeStart(dfs_launch::LaunchError),
}

pub fn start_nodes(
    listen: SocketAddr,
    n_nodes: usize,
    data: &Path,
    data_path: Option<dfs_runtime::DataPath>,
    cluster_secret_file: Option<&Path>,
) -> Result<Vec<LocalNode>, LocalError> {
    // With port 0 every node picks a free port of its own and says which; otherwise the nodes
    // take the ports after the engine's.
    if listen.port() != 0 && listen.port() as usize + n_nodes > u16::MAX as usize {
        return Err(LocalError::NoPorts { n_nodes, port: listen.port() });
    }
    let exe = std::env::current_exe().map_err(LocalError::OwnBinary)?;
    let node_exe = exe.with_file_name("dfs-node");
    if !node_exe.is_file() {
        return Err(LocalError::NoNodeBinary(node_exe));
    }
    std::fs::create_dir_all(data).map_err(|source| LocalError::DataDir { path: data.to_path_buf(), source })?;
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
            .map_err(LocalError::NodeStart)?;
        let node = LocalNode { addr: started.addr, child: started.child };
        tracing::info!("local node {node_idx} on {}, data in {}", node.addr, dir.display());
        nodes.push(node);
    }
    Ok(nodes)
}
