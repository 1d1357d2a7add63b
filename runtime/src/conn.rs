//! Framed connections of the servers (engine and node), over the chosen I/O backend's TCP
//! streams (io_uring, or epoll on the fallback). Buffers are owned: each read or write
//! takes a buffer and gives it back on success. On any error the connection is finished, so the
//! buffer is dropped with it (tokio-uring keeps memory of a cancelled operation alive until the
//! kernel is done with it).

use crate::backend::net::TcpStream;
use dfs_proto::io_std::Frame;
use dfs_proto::limits::FRAME_HEADER_BYTES;
use dfs_proto::msg::{FrameHeader, Kind, Link, Msg};
use dfs_proto::FrameError;
use std::time::Duration;
use tokio_uring::buf::{BoundedBuf, IoBuf, IoBufMut};

/// A connection's counts at one moment (see [`Conn::mark`]).
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    bytes_read: u64,
    bytes_written: u64,
    errors_sent: u64,
}

/// What one request moved and how it ended (see [`Conn::tally`]).
#[derive(Clone, Copy, Debug)]
pub struct Tally {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub outcome: &'static str,
}

/// A framed connection with an idle timeout on every read and write. It counts the bytes it
/// moves and the Error frames it sends, for metrics.
pub struct Conn {
    pub stream: TcpStream,
    pub idle_timeout: Duration,
    /// The only frame kinds this connection carries.
    link: Link,
    bytes_read: std::cell::Cell<u64>,
    bytes_written: std::cell::Cell<u64>,
    errors_sent: std::cell::Cell<u64>,
}

impl Drop for Conn {
    /// Shuts the socket down before it is closed. Dropping an io_uring stream whose read was
    /// abandoned (an idle timeout) does not close it: the abandoned read keeps the descriptor
    /// open until it completes, which on a quiet connection is never, so the peer would not see
    /// the connection end until it next sent something on it. shutdown(2) ends it now.
    fn drop(&mut self) {
        self.stream.shutdown();
    }
}

impl Conn {
    /// A connection over `stream` that carries only frames crossing `link`: any other kind is
    /// a decode error at its header, before its body is read.
    pub fn new(stream: TcpStream, idle_timeout: Duration, link: Link) -> Conn {
        Conn {
            stream,
            idle_timeout,
            link,
            bytes_read: Default::default(),
            bytes_written: Default::default(),
            errors_sent: Default::default(),
        }
    }

    /// Where the connection's counts stand, to measure one request from.
    pub fn mark(&self) -> Mark {
        Mark {
            bytes_read: self.bytes_read.get(),
            bytes_written: self.bytes_written.get(),
            errors_sent: self.errors_sent.get(),
        }
    }

    /// What one request moved since `mark`, and how it ended: `broken` if it broke the
    /// connection, `error` if it was answered with an Error frame, else `ok`.
    pub fn tally<T, E>(&self, mark: &Mark, result: &Result<T, E>) -> Tally {
        let outcome = match (result, self.errors_sent.get() > mark.errors_sent) {
            (Err(_), _) => "broken",
            (Ok(_), true) => "error",
            (Ok(_), false) => "ok",
        };
        Tally {
            bytes_in: self.bytes_read.get() - mark.bytes_read,
            bytes_out: self.bytes_written.get() - mark.bytes_written,
            outcome,
        }
    }

    /// Counts bytes read from the socket around this type (by splice).
    pub fn note_read(&self, n: u64) {
        self.bytes_read.set(self.bytes_read.get() + n);
    }

    /// Counts bytes written to the socket around this type (by splice).
    pub fn note_written(&self, n: u64) {
        self.bytes_written.set(self.bytes_written.get() + n);
    }

    /// Fills `buf[begin..end]` exactly, within one idle timeout for the whole range (not per
    /// read), so a peer that trickles a byte now and then is cut off like a silent one. EOF
    /// before the first byte of a frame is `Closed`.
    pub async fn read_exact<T: IoBufMut>(
        &self,
        mut buf: T,
        begin: usize,
        end: usize,
        at_boundary: bool,
    ) -> Result<T, FrameError> {
        assert!(begin <= end && end <= buf.bytes_total(), "read range {begin}..{end} outside the buffer");
        let mut pos = begin;
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        while pos < end {
            let op = self.stream.read(buf.slice(pos..end));
            let (res, slice) =
                tokio::time::timeout_at(deadline, op).await.map_err(|_| FrameError::TimedOut(self.idle_timeout))?;
            buf = slice.into_inner();
            match res {
                Ok(0) if pos == begin && at_boundary => return Err(FrameError::Closed),
                Ok(0) => return Err(FrameError::ClosedMidFrame),
                Ok(n) => {
                    pos += n;
                    self.note_read(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf)
    }

    pub async fn read_header(&self) -> Result<FrameHeader, FrameError> {
        let h = self.read_exact(vec![0u8; FRAME_HEADER_BYTES], 0, FRAME_HEADER_BYTES, true).await?;
        let bytes: [u8; FRAME_HEADER_BYTES] = h[..].try_into().expect("header length");
        Ok(FrameHeader::parse_on(bytes, self.link)?)
    }

    /// Reads one frame; for a Data frame only the header is read.
    pub async fn read_frame(&self) -> Result<Frame, FrameError> {
        let h = self.read_header().await?;
        if h.kind == Kind::Data {
            return Ok(Frame::Data(h.body_len));
        }
        let len = h.body_len as usize;
        let body = self.read_exact(vec![0u8; len], 0, len, false).await?;
        Ok(Frame::Msg(Msg::decode(h.kind, &body)?))
    }

    pub async fn write_all<T: IoBuf>(&self, buf: T) -> Result<T, FrameError> {
        let len = buf.bytes_init() as u64;
        let op = self.stream.write_all(buf);
        let (res, buf) =
            tokio::time::timeout(self.idle_timeout, op).await.map_err(|_| FrameError::TimedOut(self.idle_timeout))?;
        res?;
        self.note_written(len);
        Ok(buf)
    }

    /// Writes `buf[begin..end]` exactly.
    pub async fn write_range<T: IoBuf>(&self, buf: T, begin: usize, end: usize) -> Result<T, FrameError> {
        if begin == end {
            return Ok(buf);
        }
        let op = self.stream.write_all(buf.slice(begin..end));
        let (res, slice) =
            tokio::time::timeout(self.idle_timeout, op).await.map_err(|_| FrameError::TimedOut(self.idle_timeout))?;
        res?;
        self.note_written((end - begin) as u64);
        Ok(slice.into_inner())
    }

    pub async fn write_msg(&self, msg: &Msg) -> Result<(), FrameError> {
        if matches!(msg, Msg::Error { .. }) {
            self.errors_sent.set(self.errors_sent.get() + 1);
        }
        self.write_all(msg.encode()).await.map(drop)
    }

    /// Writes a Data frame whose body is `buf[begin..end]`: a small one in one write, header and
    /// body copied together, a large one as two.
    pub async fn write_data<T: IoBuf>(&self, buf: T, begin: usize, end: usize) -> Result<T, FrameError> {
        if end - begin <= COALESCE_BYTES {
            // SAFETY: the first `bytes_init` bytes of an IoBuf are initialized, and
            // begin..end lies within them (checked).
            let body = unsafe {
                assert!(begin <= end && end <= buf.bytes_init(), "a data range inside the buffer");
                std::slice::from_raw_parts(buf.stable_ptr().add(begin), end - begin)
            };
            self.write_all(frames(&[], &[body], &[])).await?;
            return Ok(buf);
        }
        self.write_all(FrameHeader::data(end - begin).encode().to_vec()).await?;
        self.write_range(buf, begin, end).await
    }

    /// Writes the messages `before`, a Data frame holding `data`, and the messages `after`, in
    /// one write: a small answer costs the peer one wake-up instead of one per frame.
    pub async fn write_small(&self, before: &[&Msg], data: &[u8], after: &[&Msg]) -> Result<(), FrameError> {
        assert!(data.len() <= COALESCE_BYTES, "{} bytes is not a small answer", data.len());
        for m in before.iter().chain(after) {
            if matches!(m, Msg::Error { .. }) {
                self.errors_sent.set(self.errors_sent.get() + 1);
            }
        }
        self.write_all(frames(before, &[data], after)).await.map(drop)
    }
}

/// Bodies of Data frames up to this size are copied next to their header and written at once.
pub const COALESCE_BYTES: usize = 64 << 10;

/// The frames of `before`, one Data frame per slice of `data`, and the frames of `after`, as one
/// buffer to write at once.
pub fn frames(before: &[&Msg], data: &[&[u8]], after: &[&Msg]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.iter().map(|d| d.len() + FRAME_HEADER_BYTES).sum::<usize>() + 64);
    for m in before {
        out.extend_from_slice(&m.encode());
    }
    for d in data {
        out.extend_from_slice(&FrameHeader::data(d.len()).encode());
        out.extend_from_slice(d);
    }
    for m in after {
        out.extend_from_slice(&m.encode());
    }
    out
}
