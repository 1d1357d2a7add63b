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

/// Capacity of the buffers [`for_io`] keeps for reuse: 1 MiB of data plus an aligned block on
/// either side, what one direct read or write of a 1 MiB block at any offset needs.
pub const POOLED_BYTES: usize = (1 << 20) + 2 * ALIGN;
/// Needs below this get a buffer of their own size instead of a pooled one.
const SMALL_BYTES: usize = 64 << 10;
/// Pooled buffers kept per thread.
const POOL_KEEP: usize = 8;

thread_local! {
    static POOL: std::cell::RefCell<Vec<AlignedBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer for direct I/O of up to `need` bytes (at most [`POOLED_BYTES`]): a small one
/// of its own for a small need, else one from this thread's pool when one is free. Memory
/// touched for the first time costs page faults and zeroing, which a request for a large buffer
/// would otherwise pay every time; give buffers back with [`give_back`].
pub fn for_io(need: usize) -> AlignedBuf {
    assert!(need <= POOLED_BYTES, "{need} bytes is more than a pooled buffer holds");
    if need < SMALL_BYTES {
        return AlignedBuf::zeroed(need);
    }
    match POOL.with(|p| p.borrow_mut().pop()) {
        Some(mut b) => {
            b.set_len(0);
            b
        }
        None => AlignedBuf::zeroed(POOLED_BYTES),
    }
}

/// Returns a buffer from [`for_io`] to this thread's pool (one of another size is dropped).
pub fn give_back(buf: AlignedBuf) {
    if buf.capacity() == POOLED_BYTES {
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOL_KEEP {
                pool.push(buf);
            }
        });
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

    #[test]
    fn large_buffers_are_reused_and_small_ones_are_their_own_size() {
        let small = for_io(5000);
        assert_eq!(small.capacity(), 8192);
        give_back(small);
        let mut big = for_io(1 << 20);
        assert_eq!(big.capacity(), POOLED_BYTES);
        big.extend_from_slice(b"data");
        let at = big.stable_ptr() as usize;
        give_back(big);
        let again = for_io(300 << 10);
        assert_eq!(again.stable_ptr() as usize, at, "the pooled buffer was not reused");
        assert!(again.is_empty(), "a reused buffer comes back empty");
        let other = for_io(1 << 20);
        assert_ne!(other.stable_ptr() as usize, at);
    }
}
