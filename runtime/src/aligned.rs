//! Buffers aligned for direct I/O (`O_DIRECT`): the address, and every length and file offset
//! used with them, are multiples of [`ALIGN`]. Zeroed at allocation, so every byte is
//! initialized; `len` marks how much holds data.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use tokio_uring::buf::{IoBuf, IoBufMut};

/// Alignment of direct I/O buffers, lengths and offsets: the page size, which every block
/// device's logical block size divides.
pub const ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of [`ALIGN`].
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

/// Rounds `n` down to a multiple of [`ALIGN`].
pub const fn align_down(n: u64) -> u64 {
    n / ALIGN as u64 * ALIGN as u64
}

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of at least `cap` bytes (rounded up to [`ALIGN`]), holding no data yet.
    pub fn zeroed(cap: usize) -> AlignedBuf {
        let cap = (align_up(cap.max(1) as u64)) as usize;
        let layout = Layout::from_size_align(cap, ALIGN).expect("aligned buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks the first `len` bytes as holding data.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "length {len} beyond the capacity {}", self.cap);
        self.len = len;
    }

    /// The whole capacity, for filling.
    pub fn spare_all(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `cap` bytes, all initialized (zeroed), owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Appends `bytes` after the data.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(end <= self.cap, "appending {} bytes to {} of {}", bytes.len(), self.len, self.cap);
        let len = self.len;
        self.spare_all()[len..end].copy_from_slice(bytes);
        self.len = end;
    }

    /// Zeroes the bytes from the data's end up to the next multiple of [`ALIGN`] and counts them
    /// as data, so the buffer can be written directly.
    pub fn pad_to_alignment(&mut self) {
        let end = align_up(self.len as u64) as usize;
        let len = self.len;
        self.spare_all()[len..end].fill(0);
        self.len = end;
    }

    /// Keeps the data from `from` on, moved to the front.
    pub fn drain_front(&mut self, from: usize) {
        assert!(from <= self.len, "drain past the data");
        let len = self.len;
        self.spare_all().copy_within(from..len, 0);
        self.len = len - from;
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes lie in the live, initialized allocation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("aligned buffer layout");
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

// SAFETY: the pointer is stable for the buffer's life (moving the struct does not move the
// allocation); the first `len` bytes are data and all `cap` bytes are initialized.
unsafe impl IoBuf for AlignedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.cap
    }
}

// SAFETY: as above; the whole capacity is initialized memory, so reading into any part of it
// and then extending `len` exposes no uninitialized byte.
unsafe impl IoBufMut for AlignedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    unsafe fn set_init(&mut self, pos: usize) {
        if pos > self.len {
            self.len = pos.min(self.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_padded() {
        let mut b = AlignedBuf::zeroed(5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.stable_ptr() as usize % ALIGN, 0);
        b.extend_from_slice(b"abc");
        b.pad_to_alignment();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[..4], b"abc\0");
        b.drain_front(2);
        assert_eq!(b.len(), 4094);
        assert_eq!(b[0], b'c');
    }
}
