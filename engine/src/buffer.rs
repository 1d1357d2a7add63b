//! The preallocated download buffer and the budget that bounds how much of them may exist.
//!
//! A download that fits the budget is fetched into one zeroed allocation of the file's size.
//! Each chunk's fetch task owns a [`Window`] onto its own disjoint range and the kernel reads
//! straight into it, so chunks land at their offsets concurrently with no copy. Once every
//! window is gone, one window over the whole file sends it.
//!
//! Every byte of these buffers, and of any buffer a chunk is read into instead, is reserved
//! against the budget and counted by [`crate::metrics::GET_BUFFER_BYTES`].

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_uring::buf::{IoBuf, IoBufMut};

/// How often a download waiting for budget looks again.
const BUDGET_POLL: Duration = Duration::from_millis(5);

/// Bytes of download buffers that may exist at once, shared by all runtimes.
pub struct Budget {
    free_bytes: AtomicU64,
}

/// A reservation against the budget, returned when dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    pub fn new(total_bytes: u64) -> Arc<Budget> {
        Arc::new(Budget { free_bytes: AtomicU64::new(total_bytes) })
    }

    /// Reserves `bytes`, or returns None if the budget cannot cover them now.
    pub fn try_reserve(self: &Arc<Budget>, bytes: u64) -> Option<Reservation> {
        self.free_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| free.checked_sub(bytes))
            .ok()
            .map(|_| Reservation { budget: self.clone(), bytes })
    }

    /// Reserves `bytes`, waiting up to `wait` for other downloads to return budget.
    pub async fn reserve_within(self: &Arc<Budget>, bytes: u64, wait: Duration) -> Option<Reservation> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(r) = self.try_reserve(bytes) {
                return Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(BUDGET_POLL).await;
        }
    }
}

/// Counts bytes of download buffers while it lives (the `dfs_engine_get_buffer_bytes` gauge and
/// its high-water mark).
pub struct Counted(u64);

impl Counted {
    pub fn new(bytes: u64) -> Counted {
        crate::metrics::add_get_buffer_bytes(bytes as i64);
        Counted(bytes)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        crate::metrics::add_get_buffer_bytes(-(self.0 as i64));
    }
}

/// A buffer of its own for one chunk, reserved against the budget.
pub struct ChunkBuf {
    pub bytes: Vec<u8>,
    /// What pays for `bytes`, kept as long as they are.
    pub hold: (Counted, Reservation),
}

impl ChunkBuf {
    pub fn zeroed(len: usize, reservation: Reservation) -> ChunkBuf {
        assert_eq!(reservation.bytes, len as u64, "a chunk buffer is reserved for exactly its size");
        ChunkBuf { bytes: vec![0u8; len], hold: (Counted::new(len as u64), reservation) }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.free_bytes.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// One zeroed allocation holding a whole file.
pub struct Reassembly {
    ptr: NonNull<u8>,
    len: usize,
    _counted: Counted,
}

impl Reassembly {
    pub fn zeroed(len: usize) -> Rc<Reassembly> {
        if len == 0 {
            return Rc::new(Reassembly { ptr: NonNull::dangling(), len, _counted: Counted::new(0) });
        }
        let layout = Layout::array::<u8>(len).expect("buffer size fits a layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Rc::new(Reassembly { ptr, len, _counted: Counted::new(len as u64) })
    }

    /// A window onto `start..start + len`. The caller keeps windows it hands out disjoint.
    pub fn window(self: &Rc<Reassembly>, start: usize, len: usize) -> Window {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len), "window outside the buffer");
        Window { owner: self.clone(), start, len, out: None }
    }

    /// The range `start..start + len` as a slot that hands out one window at a time.
    pub fn slot(self: &Rc<Reassembly>, start: usize, len: usize) -> WindowSlot {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len), "window outside the buffer");
        WindowSlot { owner: self.clone(), start, len, out: Rc::new(Cell::new(false)) }
    }
}

/// One range of a [`Reassembly`], handed out as at most one [`Window`] at a time. A window given
/// to a read that failed may still be written by the kernel until that read completes (a read
/// that timed out is still in flight), so the range is handed out again only once the old
/// window has been dropped.
pub struct WindowSlot {
    owner: Rc<Reassembly>,
    start: usize,
    len: usize,
    /// True while a window over the range exists.
    out: Rc<Cell<bool>>,
}

impl WindowSlot {
    /// The range's window, or None while an earlier one is still alive.
    pub fn take(&self) -> Option<Window> {
        if self.out.replace(true) {
            return None;
        }
        Some(Window { owner: self.owner.clone(), start: self.start, len: self.len, out: Some(self.out.clone()) })
    }
}

impl Drop for Reassembly {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this very layout.
            unsafe { dealloc(self.ptr.as_ptr(), Layout::array::<u8>(self.len).expect("layout")) }
        }
    }
}

/// Exclusive access to one range of a [`Reassembly`], usable as an io_uring buffer.
pub struct Window {
    owner: Rc<Reassembly>,
    start: usize,
    len: usize,
    /// The slot's flag, cleared when this window is dropped.
    out: Option<Rc<Cell<bool>>>,
}

impl Drop for Window {
    fn drop(&mut self) {
        if let Some(out) = &self.out {
            out.set(false);
        }
    }
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range lies inside the live allocation (checked at creation), the memory is
        // initialized (zeroed), and no other window covers it.
        unsafe { std::slice::from_raw_parts(self.owner.ptr.as_ptr().add(self.start), self.len) }
    }
}

// SAFETY: the pointer stays valid while the Window exists, because the Window holds the Rc that
// owns the allocation; moving the Window does not move the memory.
unsafe impl IoBuf for Window {
    fn stable_ptr(&self) -> *const u8 {
        // SAFETY: start is within the allocation (or 0 for an empty one).
        unsafe { self.owner.ptr.as_ptr().add(self.start) }
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
}

// SAFETY: as for IoBuf; the whole range is initialized from the start, and this window is the
// only one writing to it.
unsafe impl IoBufMut for Window {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: as in stable_ptr.
        unsafe { self.owner.ptr.as_ptr().add(self.start) }
    }
    unsafe fn set_init(&mut self, _pos: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reservations_are_returned_on_drop() {
        let b = Budget::new(10);
        let r = b.try_reserve(7).unwrap();
        assert!(b.try_reserve(4).is_none());
        drop(r);
        assert!(b.try_reserve(10).is_some());
    }

    #[test]
    fn a_slot_hands_out_its_window_again_only_once_the_last_one_is_gone() {
        let buf = Reassembly::zeroed(8);
        let slot = buf.slot(2, 4);
        let w = slot.take().expect("the first window");
        assert_eq!(w.as_ref().len(), 4);
        assert!(slot.take().is_none(), "a second window while the first is alive");
        drop(w);
        assert!(slot.take().is_some(), "the window once the first is dropped");
    }

    #[test]
    fn windows_see_their_own_range() {
        let buf = Reassembly::zeroed(8);
        let w = buf.window(4, 4);
        assert_eq!(w.as_ref(), &[0; 4]);
        drop(w);
        assert_eq!(buf.window(0, 8).as_ref().len(), 8);
    }
}
