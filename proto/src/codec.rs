//! Big-endian primitives for frame bodies. The reader checks every length and count against
//! the caller's limit before it allocates, and never reads past the body it was given.

/// Why a frame body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame body ends early while reading {field}")]
    Truncated { field: &'static str },
    #[error("{field} is {len}, over the limit of {max}")]
    OverLimit { field: &'static str, len: u64, max: u64 },
    #[error("{field} has an invalid value")]
    Invalid { field: &'static str },
    #[error("{n_bytes} unexpected bytes after the end of a {kind} frame")]
    Trailing { kind: &'static str, n_bytes: usize },
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("frame of kind {kind} is {len} bytes, over the limit of {max}")]
    FrameTooLarge { kind: &'static str, len: u32, max: u32 },
    #[error("a {kind} frame does not belong on this connection")]
    WrongLink { kind: &'static str },
}

#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A u32 length then the bytes. Lengths are checked against limits by the encoder's caller
    /// (`Msg::encode`) so a frame we send is one we would accept.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).expect("field longer than u32::MAX"));
        self.raw(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("count larger than u32::MAX"));
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated { field });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N, field)?.try_into().expect("N bytes"))
    }
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid { field }),
        }
    }

    /// A count, checked against `max` and against the bytes left (each item is at least
    /// `min_item_bytes` long), so a forged count cannot make the caller reserve memory.
    pub fn count(&mut self, field: &'static str, max: u32, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u32(field)?;
        if n > max {
            return Err(DecodeError::OverLimit { field, len: n as u64, max: max as u64 });
        }
        if (n as usize).saturating_mul(min_item_bytes) > self.buf.len() - self.pos {
            return Err(DecodeError::Truncated { field });
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self, field: &'static str, max: u32) -> Result<&'a [u8], DecodeError> {
        let n = self.count(field, max, 1)?;
        self.take(n, field)
    }

    pub fn string(&mut self, field: &'static str, max: u32) -> Result<String, DecodeError> {
        let b = self.bytes(field, max)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid { field })
    }

    pub fn finish(&self, kind: &'static str) -> Result<(), DecodeError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n_bytes => Err(DecodeError::Trailing { kind, n_bytes }),
        }
    }
}
