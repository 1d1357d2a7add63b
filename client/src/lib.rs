//! The dfs client library: one blocking TCP connection to the engine, and the requests a user
//! can make over it (put, get, stat, list, delete; the S3 front door's buckets in [`buckets`]).
//! It owns the client side of protocol v1 as `dfs_proto` defines it: the handshake, streaming a
//! file up with its per-chunk crc32s, and streaming a file down while checking every chunk
//! against the file's chunk table, so that data corrupted anywhere between the disk and this
//! process is reported rather than written.
//!
//! The `dfs-client` binary is a thin command line over this crate; [`view`] holds what it prints
//! and [`bench`] the benchmark behind `dfs-client put --bench`.

pub mod admin;
pub mod buckets;
mod error;
pub mod failover;
mod get;
pub mod ingest;
pub mod manifest;
mod put;

pub use dfs_proto::error::error_chain;
pub use dfs_proto::{ChunkInfo, Chunking, FileId, FileInfo, FileSummary, HelloOk, Origin, Status};
pub use error::{ClientError, IntegrityError, Result};
pub use put::{default_name, MappedFile};

use dfs_proto::io_std::{self, Frame};
use dfs_proto::limits::MAX_LIST_ENTRIES;
use dfs_proto::{FrameError, Hello, Link, Msg, Role, VERSION};
use std::collections::HashSet;
use std::io::{self, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Where the engine listens when neither `--server` nor `DFS_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7700";
/// How long to wait for a TCP connection to the engine to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one socket read or write may block, so a dead engine cannot hang the client forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Read buffer for the socket: large enough that a frame header and a small control frame
/// arrive in one system call, small next to the 1 MiB data frames, which bypass it.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Receives byte counts while a file moves, for a progress bar. Both methods do nothing by
/// default; `()` is the "no progress report" implementation.
pub trait Progress {
    /// The transfer of `total_bytes` bytes is about to begin.
    fn start(&mut self, total_bytes: u64) {
        let _ = total_bytes;
    }
    /// `n_bytes` more bytes have been sent or received.
    fn advance(&mut self, n_bytes: u64) {
        let _ = n_bytes;
    }
}

impl Progress for () {}

/// The crc32 of a concatenation, from the crc32 and length of each part in order.
pub fn combine_crc32s(parts: impl IntoIterator<Item = (u32, u64)>) -> u32 {
    let mut whole = crc32fast::Hasher::new();
    for (crc32, length) in parts {
        whole.combine(&crc32fast::Hasher::new_with_initial_len(crc32, length));
    }
    whole.finalize()
}

/// The crc32 of a whole stored file, from its chunk table.
pub fn file_crc32(info: &FileInfo) -> u32 {
    combine_crc32s(info.chunks.iter().map(|c| (c.crc32, c.length)))
}

/// One page of a LIST answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub files: Vec<FileSummary>,
    /// More files follow the last one of this page.
    pub more: bool,
}

/// The engines to connect to: one address (`host:port`), or several separated by commas, all
/// engines of one cluster, tried in order (see [`failover`]); and the access key to present,
/// if any. Shown as its addresses; the key is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Server {
    pub addr: String,
    pub access_key: Option<String>,
}

impl Server {
    /// The engine at `addr`, without an access key.
    pub fn new(addr: impl Into<String>) -> Server {
        Server { addr: addr.into(), access_key: None }
    }

    /// The same engine, presenting `key`.
    pub fn with_key(self, key: Option<String>) -> Server {
        Server { access_key: key, ..self }
    }

    /// Each engine's address, in the order given.
    pub fn engines(&self) -> Vec<&str> {
        let list: Vec<&str> = self.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
        if list.is_empty() {
            vec![self.addr.as_str()]
        } else {
            list
        }
    }

    /// The Hello, naming the access key (never carrying it) with the client's nonce.
    fn hello(&self, client_nonce: &dfs_proto::auth::Nonce) -> Hello {
        let mut hello = Hello::new(Role::Client);
        if let Some(key) = &self.access_key {
            hello.auth_method = dfs_proto::auth::AUTH_KEY_PROOF;
            hello.auth = dfs_proto::auth::AccessKey::new(key.as_bytes()).hello_auth(client_nonce);
        }
        hello
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.access_key.is_some() { "(set)" } else { "(none)" };
        write!(f, "Server {{ addr: {:?}, access_key: {key} }}", self.addr)
    }
}

/// A connection to the engine, handshake done. Requests run one after the other on it.
///
/// A request that fails part-way (a broken upload or download, a malformed answer) leaves the
/// stream in an unknown state, so the client refuses further requests with
/// [`ClientError::Unusable`]; a plain refusal by the engine (for example "not found") does not.
pub struct Client {
    reader: BufReader<TcpStream>,
    hello: HelloOk,
    usable: bool,
    /// Which of the server's engines this is connected to, and its address.
    engine_idx: usize,
    engine_addr: String,
}

impl Client {
    /// Connects to the first of `server`'s engines that answers and performs the handshake,
    /// presenting its access key if it has one.
    pub fn connect(server: &Server) -> Result<Client> {
        Client::connect_from(server, 0)
    }

    /// [`Client::connect`], trying the engines from the `start`th on (wrapping round), so that
    /// connections can be spread over the engines, or move on from one that failed. An engine
    /// that cannot be reached, or answers the handshake with Unavailable, is passed over.
    pub fn connect_from(server: &Server, start: usize) -> Result<Client> {
        let engines = server.engines();
        let mut last = None;
        for k in 0..engines.len() {
            let idx = (start + k) % engines.len();
            match Client::connect_one(server, engines[idx]) {
                Ok(mut client) => {
                    client.engine_idx = idx;
                    return Ok(client);
                }
                Err(e) if engines.len() > 1 && failover::fails_over(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one engine was tried"))
    }

    /// The address of the engine this client is connected to.
    pub fn engine_addr(&self) -> &str {
        &self.engine_addr
    }

    pub(crate) fn engine_idx(&self) -> usize {
        self.engine_idx
    }

    fn connect_one(server: &Server, addr: &str) -> Result<Client> {
        let connect_error = |source| ClientError::Connect { addr: addr.to_owned(), source };
        let stream = open_stream(addr).map_err(connect_error)?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        let mut writer = reader.get_ref();
        let client_nonce = dfs_proto::auth::nonce().map_err(connect_error)?;
        io_std::write_msg(&mut writer, &Msg::Hello(server.hello(&client_nonce)))
            .map_err(|e| connection_error("sending the handshake", e.into(), IO_TIMEOUT))?;
        let mut frame = io_std::read_frame_on(&mut reader, Link::Client)
            .map_err(|e| connection_error("waiting for the handshake answer", e, IO_TIMEOUT))?;
        if let Frame::Msg(Msg::KeyChallenge { nonce: engine_nonce, proof }) = frame {
            // The engine proves it holds the key before the client proves it does.
            let Some(key) = &server.access_key else {
                return Err(ClientError::Protocol(
                    "the engine sent a key challenge, but no access key was given".into(),
                ));
            };
            let key = dfs_proto::auth::AccessKey::new(key.as_bytes());
            if !key.check_engine(&client_nonce, &engine_nonce, &proof) {
                return Err(ClientError::Protocol(format!(
                    "the engine at {addr} could not prove that it holds this access key: refusing to go on"
                )));
            }
            let proof = key.client_proof(&client_nonce, &engine_nonce);
            io_std::write_msg(&mut reader.get_ref(), &Msg::KeyProof { proof })
                .map_err(|e| connection_error("sending the key proof", e.into(), IO_TIMEOUT))?;
            frame = io_std::read_frame_on(&mut reader, Link::Client)
                .map_err(|e| connection_error("waiting for the handshake answer", e, IO_TIMEOUT))?;
        }
        let hello = match frame {
            Frame::Msg(Msg::HelloOk(hello)) => hello,
            Frame::Msg(Msg::Error { status, message }) => return Err(ClientError::Remote { status, message }),
            Frame::Msg(other) => return Err(unexpected(&other, "HelloOk")),
            Frame::Data(_) => return Err(ClientError::Protocol("expected HelloOk, engine sent a data frame".into())),
        };
        if hello.version != VERSION {
            return Err(ClientError::Protocol(format!(
                "engine accepted the handshake with protocol version {}, this client speaks {VERSION}",
                hello.version
            )));
        }
        Ok(Client { reader, hello, usable: true, engine_idx: 0, engine_addr: addr.to_owned() })
    }

    /// The engine's answer to the handshake (block size, dynamic chunk cap).
    pub fn hello(&self) -> &HelloOk {
        &self.hello
    }

    /// False once a request has failed in a way that leaves the connection in an unknown state;
    /// every further request then fails with [`ClientError::Unusable`].
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// The full description of a file: size, chunking, chunk table and node addresses.
    pub fn stat(&mut self, file_id: FileId) -> Result<FileInfo> {
        self.run(true, |c| match c.request(&Msg::Stat { file_id }, "StatOk")? {
            Msg::StatOk(info) => check_file_id(info, file_id),
            other => Err(unexpected(&other, "StatOk")),
        })
    }

    /// One page of the file list: at most `limit` files (1 to 1000) after `after`.
    pub fn list_page(&mut self, after: Option<FileId>, limit: u32) -> Result<ListPage> {
        if limit == 0 || limit > MAX_LIST_ENTRIES {
            return Err(ClientError::Invalid(format!("list page size {limit} is outside 1..={MAX_LIST_ENTRIES}")));
        }
        self.run(true, |c| match c.request(&Msg::List { after, limit }, "ListOk")? {
            Msg::ListOk { files, more } => Ok(ListPage { files, more }),
            other => Err(unexpected(&other, "ListOk")),
        })
    }

    /// Every file, fetched page by page in the engine's order.
    pub fn list(&mut self) -> Result<Vec<FileSummary>> {
        let mut files: Vec<FileSummary> = Vec::new();
        // The engine's order is its own business, but a file seen twice means the cursor is
        // not advancing, and following it would loop forever.
        let mut seen = HashSet::new();
        loop {
            let after = files.last().map(|f| f.file_id);
            let page = self.list_page(after, MAX_LIST_ENTRIES)?;
            if page.more && page.files.is_empty() {
                self.usable = false;
                return Err(ClientError::Protocol("engine sent an empty list page that claims more follow".into()));
            }
            for file in page.files {
                if !seen.insert(file.file_id) {
                    self.usable = false;
                    return Err(ClientError::Protocol(format!("engine listed file {} twice", file.file_id)));
                }
                files.push(file);
            }
            if !page.more {
                return Ok(files);
            }
        }
    }

    /// Deletes a file. Its chunks are removed from the nodes in the background.
    pub fn delete(&mut self, file_id: FileId) -> Result<()> {
        self.run(true, |c| match c.request(&Msg::Delete { file_id }, "Ok")? {
            Msg::Ok => Ok(()),
            other => Err(unexpected(&other, "Ok")),
        })
    }

    /// Runs one request, refusing it on a connection already known to be broken and marking the
    /// connection broken if the request fails. With `remote_keeps_connection`, an Error frame
    /// from the engine is a complete answer and leaves the connection usable.
    fn run<T>(&mut self, remote_keeps_connection: bool, op: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        if !self.usable {
            return Err(ClientError::Unusable);
        }
        let result = op(self);
        if let Err(e) = &result {
            if !(remote_keeps_connection && matches!(e, ClientError::Remote { .. })) {
                self.usable = false;
            }
        }
        result
    }

    fn send(&mut self, msg: &Msg, doing: &'static str) -> Result<()> {
        let mut writer = self.reader.get_ref();
        io_std::write_msg(&mut writer, msg).map_err(|e| connection_error(doing, e.into(), IO_TIMEOUT))
    }

    fn recv(&mut self, doing: &'static str) -> Result<Frame> {
        io_std::read_frame_on(&mut self.reader, Link::Client).map_err(|e| connection_error(doing, e, IO_TIMEOUT))
    }

    /// Reads one control frame; an Error frame becomes [`ClientError::Remote`].
    fn recv_msg(&mut self, doing: &'static str, expected: &str) -> Result<Msg> {
        match self.recv(doing)? {
            Frame::Msg(Msg::Error { status, message }) => Err(ClientError::Remote { status, message }),
            Frame::Msg(msg) => Ok(msg),
            Frame::Data(_) => Err(ClientError::Protocol(format!("expected {expected}, engine sent a data frame"))),
        }
    }

    /// Sends `msg` and reads the one control frame that answers it.
    fn request(&mut self, msg: &Msg, expected: &str) -> Result<Msg> {
        self.send(msg, "sending the request")?;
        self.recv_msg("waiting for the answer", expected)
    }
}

/// Resolves `addr` and connects to the first address that answers, then sets the socket up:
/// no Nagle delay (requests are single small frames), and timeouts on every read and write.
fn open_stream(addr: &str) -> io::Result<TcpStream> {
    let mut last_error = None;
    for socket_addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&socket_addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing")))
}

/// Wraps a framing error. A socket timeout surfaces as `WouldBlock` (EAGAIN) on Linux, whose
/// text ("resource temporarily unavailable") would mislead, so it is reported as a timeout.
fn connection_error(doing: &'static str, source: FrameError, timeout: Duration) -> ClientError {
    let source = match source {
        FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            FrameError::TimedOut(timeout)
        }
        other => other,
    };
    ClientError::Connection { doing, source }
}

fn unexpected(msg: &Msg, expected: &str) -> ClientError {
    ClientError::Protocol(format!("expected {expected}, engine sent {}", msg.kind().name()))
}

fn check_file_id(info: FileInfo, asked: FileId) -> Result<FileInfo> {
    if info.file_id != asked {
        return Err(ClientError::Protocol(format!(
            "asked about file {asked}, engine answered about file {}",
            info.file_id
        )));
    }
    Ok(info)
}
