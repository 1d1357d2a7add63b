//! Framing over blocking `std::io` streams (the client side).

use crate::error::FrameError;
use crate::limits::FRAME_HEADER_BYTES;
use crate::msg::{FrameHeader, Kind, Link, Msg};
use std::io::{self, Read, Write};

/// A frame as read: a decoded control message, or the header of a Data frame whose body the
/// caller reads next, straight into its own buffer.
#[derive(Debug)]
pub enum Frame {
    Msg(Msg),
    Data(u32),
}

/// Reads exactly `buf.len()` bytes; an EOF before the first byte is `Closed`, after it `ClosedMidFrame`.
fn read_full(r: &mut impl Read, buf: &mut [u8], at_boundary: bool) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && at_boundary => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::ClosedMidFrame),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn read_header(r: &mut impl Read) -> Result<FrameHeader, FrameError> {
    read_header_on(r, Link::Both)
}

/// Reads a frame header whose kind must cross `link` (see [`FrameHeader::parse_on`]).
pub fn read_header_on(r: &mut impl Read, link: Link) -> Result<FrameHeader, FrameError> {
    let mut h = [0u8; FRAME_HEADER_BYTES];
    read_full(r, &mut h, true)?;
    Ok(FrameHeader::parse_on(h, link)?)
}

/// Reads one frame of any kind; for a Data frame only the header is read.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, FrameError> {
    read_frame_on(r, Link::Both)
}

/// Reads one frame whose kind must cross `link`; for a Data frame only the header is read.
pub fn read_frame_on(r: &mut impl Read, link: Link) -> Result<Frame, FrameError> {
    let h = read_header_on(r, link)?;
    if h.kind == Kind::Data {
        return Ok(Frame::Data(h.body_len));
    }
    let mut body = vec![0u8; h.body_len as usize];
    read_full(r, &mut body, false)?;
    Ok(Frame::Msg(Msg::decode(h.kind, &body)?))
}

/// Reads the body of a Data frame whose header was just read.
pub fn read_data(r: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    read_full(r, buf, false)
}

pub fn write_msg(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    w.write_all(&msg.encode())
}

pub fn write_data(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(&FrameHeader::data(data.len()).encode())?;
    w.write_all(data)
}
