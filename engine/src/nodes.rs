//! The engine's side of engine↔node connections: connect with a timeout, handshake, and turn
//! every failure into a [`NodeError`] that names the node.

use dfs_proto::io_std::Frame;
use dfs_proto::io_uring::Conn;
use dfs_proto::{FrameError, Hello, Msg, Role, Status, VERSION};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct NodeTimeouts {
    pub connect: Duration,
    pub idle: Duration,
}

/// What went wrong talking to one node.
#[derive(Debug)]
pub enum NodeFailure {
    /// Could not connect or the connection broke: the node is down or unreachable.
    Unreachable(String),
    /// The node answered with an error.
    Remote(Status, String),
    /// The node said something that breaks the protocol or our expectations.
    Protocol(String),
}

#[derive(Debug)]
pub struct NodeError {
    pub addr: String,
    pub failure: NodeFailure,
}

impl NodeError {
    pub fn new(addr: impl fmt::Display, failure: NodeFailure) -> NodeError {
        NodeError { addr: addr.to_string(), failure }
    }

    /// The status to report upstream for this failure.
    pub fn status(&self) -> Status {
        match &self.failure {
            NodeFailure::Unreachable(_) => Status::Unavailable,
            NodeFailure::Remote(s, _) => *s,
            NodeFailure::Protocol(_) => Status::Internal,
        }
    }

    pub fn from_frame(addr: impl fmt::Display, e: FrameError) -> NodeError {
        let failure = match e {
            FrameError::Decode(d) => NodeFailure::Protocol(format!("malformed frame: {d}")),
            other => NodeFailure::Unreachable(other.to_string()),
        };
        NodeError::new(addr, failure)
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            NodeFailure::Unreachable(e) => write!(f, "node {} is unreachable: {e}", self.addr),
            NodeFailure::Remote(s, m) => write!(f, "node {} answered {s}: {m}", self.addr),
            NodeFailure::Protocol(m) => write!(f, "node {} broke the protocol: {m}", self.addr),
        }
    }
}

/// A handshaken connection to one node.
pub struct NodeConn {
    pub addr: SocketAddr,
    pub conn: Conn,
}

impl NodeConn {
    pub async fn connect(addr: SocketAddr, t: NodeTimeouts) -> Result<NodeConn, NodeError> {
        let unreachable = |e: String| NodeError::new(addr, NodeFailure::Unreachable(e));
        let stream = match tokio::time::timeout(t.connect, tokio_uring::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("connect timed out after {:?}", t.connect))),
        };
        let _ = stream.set_nodelay(true);
        let node = NodeConn { addr, conn: Conn::new(stream, t.idle) };
        node.send(&Msg::Hello(Hello::new(Role::Engine))).await?;
        match node.recv().await? {
            Msg::HelloOk(h) if h.version == VERSION => Ok(node),
            other => Err(node.unexpected("HelloOk", &other)),
        }
    }

    pub async fn send(&self, msg: &Msg) -> Result<(), NodeError> {
        self.conn.write_msg(msg).await.map_err(|e| NodeError::from_frame(self.addr, e))
    }

    /// Reads one control frame; an Error frame becomes a `Remote` failure.
    pub async fn recv(&self) -> Result<Msg, NodeError> {
        match self.conn.read_frame().await {
            Ok(Frame::Msg(Msg::Error { status, message })) => {
                Err(NodeError::new(self.addr, NodeFailure::Remote(status, message)))
            }
            Ok(Frame::Msg(m)) => Ok(m),
            Ok(Frame::Data(_)) => Err(self.protocol("a data frame where a control frame was expected")),
            Err(e) => Err(NodeError::from_frame(self.addr, e)),
        }
    }

    pub fn protocol(&self, what: impl Into<String>) -> NodeError {
        NodeError::new(self.addr, NodeFailure::Protocol(what.into()))
    }

    pub fn unexpected(&self, wanted: &str, got: &Msg) -> NodeError {
        self.protocol(format!("expected {wanted}, got {}", got.kind().name()))
    }
}
