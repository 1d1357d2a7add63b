//! The engine's side of engine↔node connections: connect with a timeout, handshake, and turn
//! every failure into a [`NodeError`] that names the node.

use super::Health;
use dfs_proto::auth::ClusterSecret;
use dfs_proto::io_std::Frame;
use dfs_proto::{FrameError, Hello, Msg, NodeId, Role, Status, VERSION};
use dfs_runtime::conn::Conn;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct NodeTimeouts {
    pub connect: Duration,
    pub idle: Duration,
}

/// What every connection to a node needs: the timeouts, the cluster secret to prove (None:
/// nodes are open), and the node table, which learns each node's ID from its handshake.
/// Cheap to clone; one per engine, made at start-up.
#[derive(Clone)]
pub struct Links {
    pub timeouts: NodeTimeouts,
    secret: Option<Arc<ClusterSecret>>,
    pub health: Arc<Health>,
}

impl Links {
    pub fn new(timeouts: NodeTimeouts, secret: Option<ClusterSecret>, health: Arc<Health>) -> Links {
        Links { timeouts, secret: secret.map(Arc::new), health }
    }

    /// The same links, waiting at most `idle` for each answer.
    pub fn with_idle(&self, idle: Duration) -> Links {
        Links { timeouts: NodeTimeouts { idle, ..self.timeouts }, ..self.clone() }
    }
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

    /// The node did not answer: it may be down.
    pub fn is_unreachable(&self) -> bool {
        matches!(self.failure, NodeFailure::Unreachable(_))
    }

    /// The status to report upstream for this failure.
    pub fn status(&self) -> Status {
        match &self.failure {
            NodeFailure::Unreachable(_) => Status::Unavailable,
            NodeFailure::Remote(s, _) => *s,
            NodeFailure::Protocol(_) => Status::Internal,
        }
    }

    /// The node answered a request with a frame that is not its answer.
    pub fn unexpected(addr: impl fmt::Display, wanted: &str, got: &Msg) -> NodeError {
        NodeError::new(addr, NodeFailure::Protocol(format!("expected {wanted}, got {}", got.kind().name())))
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

/// A failure after which a request is worth one more try on a new connection.
pub trait Retryable: fmt::Display {
    /// The node seemed not to answer: on a pooled connection this may only mean that the node
    /// closed it while it sat idle, or that the process behind it was restarted since.
    fn connection_broke(&self) -> bool;
}

impl Retryable for NodeError {
    fn connection_broke(&self) -> bool {
        self.is_unreachable()
    }
}

/// Runs `attempt` on a connection to `addr` from the pool (or a new one), and, if that was a
/// pooled connection and it broke, once more on a new connection before the failure counts.
/// The one home of that rule: every request that can simply be sent again goes through here
/// (one-frame requests, FETCH, copies). A STORE of an upload cannot, since its bytes come from
/// the client once: `put` deals with a failed STORE itself.
pub async fn with_connection<T, E, F, Fut>(addr: SocketAddr, links: &Links, mut attempt: F) -> Result<T, E>
where
    F: FnMut(NodeConn) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Retryable + From<NodeError>,
{
    let node = NodeConn::checkout(addr, links).await?;
    let reused = node.reused;
    match attempt(node).await {
        Err(e) if reused && e.connection_broke() => {
            tracing::debug!("{e} on a pooled connection to {addr}; trying once more on a new one");
            attempt(NodeConn::connect(addr, links).await?).await
        }
        done => done,
    }
}

/// The engine's Hello to a node: with the cluster secret, it carries a fresh challenge nonce.
fn engine_hello(secret: Option<&ClusterSecret>) -> std::io::Result<(Hello, Option<dfs_proto::auth::Nonce>)> {
    match secret {
        None => Ok((Hello::new(Role::Engine), None)),
        Some(_) => {
            let nonce = dfs_proto::auth::nonce()?;
            let hello =
                Hello { auth_method: dfs_proto::auth::AUTH_CLUSTER, auth: nonce.to_vec(), ..Hello::new(Role::Engine) };
            Ok((hello, Some(nonce)))
        }
    }
}

/// The engine's answer to a node's AuthChallenge: checks the node's proof and returns the
/// engine's, or why the node is not trusted.
fn answer_challenge(
    secret: Option<&ClusterSecret>,
    engine_nonce: Option<dfs_proto::auth::Nonce>,
    node_nonce: &dfs_proto::auth::Nonce,
    node_id: &NodeId,
    node_proof: &dfs_proto::auth::Proof,
) -> Result<Msg, Untrusted> {
    let (Some(secret), Some(engine_nonce)) = (secret, engine_nonce) else {
        return Err(Untrusted::NoSecretHere);
    };
    if !secret.check_node(&engine_nonce, node_nonce, node_id, node_proof) {
        return Err(Untrusted::WrongProof);
    }
    Ok(Msg::AuthProof { proof: secret.engine_proof(&engine_nonce, node_nonce) })
}

/// Why the engine does not trust a node's answer to its challenge.
#[derive(Debug, thiserror::Error)]
enum Untrusted {
    #[error("the node asked for a cluster secret this engine does not have (--cluster-secret-file)")]
    NoSecretHere,
    #[error("the node's proof of the cluster secret is wrong: it does not share this engine's secret")]
    WrongProof,
}

/// A handshaken connection to one node.
pub struct NodeConn {
    pub addr: SocketAddr,
    /// The ID the node proved in this connection's handshake: a copy written over it is on
    /// that node, whatever the node table says by the time it is recorded.
    pub node_id: NodeId,
    pub conn: Conn,
    /// How long the node lets this connection sit unread or idle before it closes it (from its
    /// HelloOk): the engine must never leave a request's answer unread for that long.
    pub node_idle_timeout: Duration,
    /// Taken from the pool rather than freshly connected: its first failure may only mean the
    /// node closed it while it sat idle, not that the node is down.
    pub reused: bool,
}

/// Idle connections kept per node and per runtime thread for reuse.
pub const MAX_IDLE_CONNS_PER_NODE: usize = 32;

thread_local! {
    /// Idle, handshaken node connections of this runtime thread. A connection lives on the
    /// thread whose runtime registered it, so the pool is per thread.
    static POOL: std::cell::RefCell<std::collections::HashMap<SocketAddr, Vec<NodeConn>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// True if the peer has closed or broken an idle connection (checked without blocking).
fn is_dead(conn: &NodeConn) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    // SAFETY: recv into a 1-byte buffer we own, on a descriptor the connection keeps open.
    let n = unsafe {
        libc::recv(conn.conn.stream.as_raw_fd(), byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    // An idle connection has nothing to read: EAGAIN. EOF, an error, or unexpected bytes all
    // mean it is unusable.
    !(n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
}

impl NodeConn {
    /// An idle pooled connection to `addr`, or a new one.
    pub async fn checkout(addr: SocketAddr, links: &Links) -> Result<NodeConn, NodeError> {
        while let Some(conn) = POOL.with(|p| p.borrow_mut().get_mut(&addr).and_then(|v| v.pop())) {
            if !is_dead(&conn) {
                return Ok(NodeConn { reused: true, ..conn });
            }
        }
        NodeConn::connect(addr, links).await
    }

    /// Returns a connection whose last request completed cleanly to the pool.
    pub fn checkin(self) {
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            let idle = pool.entry(self.addr).or_default();
            if idle.len() < MAX_IDLE_CONNS_PER_NODE {
                idle.push(self);
            }
        });
    }

    /// Connects, proves the cluster secret if the engine has one, and learns the node's ID
    /// (recorded in the node table, which refuses an ID another live node holds).
    pub async fn connect(addr: SocketAddr, links: &Links) -> Result<NodeConn, NodeError> {
        let t = links.timeouts;
        let unreachable = |e: String| NodeError::new(addr, NodeFailure::Unreachable(e));
        let stream = match tokio::time::timeout(t.connect, dfs_runtime::backend::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable(format!("connect timed out after {:?}", t.connect))),
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(stream, t.idle, dfs_proto::Link::Node);
        let secret = links.secret.as_deref();
        let (hello, engine_nonce) =
            engine_hello(secret).map_err(|e| unreachable(format!("cannot draw a nonce: {e}")))?;
        send_msg(addr, &conn, &Msg::Hello(hello)).await?;
        let mut answer = recv_msg(addr, &conn).await?;
        let mut proven_id = None;
        if let Msg::AuthChallenge { nonce, node_id, proof } = &answer {
            let reply = answer_challenge(secret, engine_nonce, nonce, node_id, proof)
                .map_err(|why| NodeError::new(addr, NodeFailure::Remote(Status::Unauthorized, why.to_string())))?;
            proven_id = Some(*node_id);
            send_msg(addr, &conn, &reply).await?;
            answer = recv_msg(addr, &conn).await?;
        } else if engine_nonce.is_some() {
            let why = "the node did not prove the cluster secret: it runs without --cluster-secret-file";
            return Err(NodeError::new(addr, NodeFailure::Remote(Status::Unauthorized, why.into())));
        }
        let hello_ok = match answer {
            Msg::HelloOk(h) if h.version == VERSION => h,
            other => return Err(NodeError::unexpected(addr, "HelloOk", &other)),
        };
        let node_id = match (hello_ok.node_id, proven_id) {
            (Some(id), None) => id,
            (Some(id), Some(proven)) if id == proven => id,
            (Some(_), Some(_)) => {
                return Err(NodeError::new(
                    addr,
                    NodeFailure::Protocol("HelloOk names another ID than it proved".into()),
                ))
            }
            (None, _) => return Err(NodeError::new(addr, NodeFailure::Protocol("HelloOk carries no node ID".into()))),
        };
        links
            .health
            .learn(addr, node_id)
            .map_err(|why| NodeError::new(addr, NodeFailure::Remote(Status::Unauthorized, why.to_string())))?;
        Ok(NodeConn {
            addr,
            node_id,
            conn,
            node_idle_timeout: Duration::from_millis(u64::from(hello_ok.idle_timeout_ms)),
            reused: false,
        })
    }

    /// One request and its one-frame answer on a pooled connection to `addr`; the connection
    /// goes back to the pool only after a clean answer.
    pub async fn request(addr: SocketAddr, links: &Links, msg: &Msg) -> Result<Msg, NodeError> {
        with_connection(addr, links, move |node| node.request_once(msg)).await
    }

    async fn request_once(self, msg: &Msg) -> Result<Msg, NodeError> {
        self.send(msg).await?;
        let answer = self.recv().await;
        if answer.is_ok() {
            self.checkin();
        }
        answer
    }

    pub async fn send(&self, msg: &Msg) -> Result<(), NodeError> {
        send_msg(self.addr, &self.conn, msg).await
    }

    /// Reads one control frame; an Error frame becomes a `Remote` failure.
    pub async fn recv(&self) -> Result<Msg, NodeError> {
        recv_msg(self.addr, &self.conn).await
    }

    pub fn protocol(&self, what: impl Into<String>) -> NodeError {
        NodeError::new(self.addr, NodeFailure::Protocol(what.into()))
    }

    pub fn unexpected(&self, wanted: &str, got: &Msg) -> NodeError {
        NodeError::unexpected(self.addr, wanted, got)
    }
}

/// Sends one control frame to `addr`.
async fn send_msg(addr: SocketAddr, conn: &Conn, msg: &Msg) -> Result<(), NodeError> {
    conn.write_msg(msg).await.map_err(|e| NodeError::from_frame(addr, e))
}

/// Reads one control frame from `addr`; an Error frame becomes a `Remote` failure.
async fn recv_msg(addr: SocketAddr, conn: &Conn) -> Result<Msg, NodeError> {
    match conn.read_frame().await {
        Ok(Frame::Msg(Msg::Error { status, message })) => {
            Err(NodeError::new(addr, NodeFailure::Remote(status, message)))
        }
        Ok(Frame::Msg(m)) => Ok(m),
        Ok(Frame::Data(_)) => {
            Err(NodeError::new(addr, NodeFailure::Protocol("a data frame where a control frame was expected".into())))
        }
        Err(e) => Err(NodeError::from_frame(addr, e)),
    }
}
