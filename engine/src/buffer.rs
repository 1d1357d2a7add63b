//! The preallocated download buffer and the budget that bounds how much of them may exist.
//!
//! A download that fits the budget is fetched into one zeroed allocation of the file's size.
//! Each chunk's fetch task owns a [`Window`] onto its own disjoint range and the kernel reads
//! straight into it, so chunks land at their offsets concurrently with no copy. Once every
//! window is gone, one window over the whole file sends it.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_uring::buf::{IoBuf, IoBufMut};

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
}

impl Reassembly {
    pub fn zeroed(len: usize) -> Rc<Reassembly> {
        if len == 0 {
            return Rc::new(Reassembly { ptr: NonNull::dangling(), len });
        }
        let layout = Layout::array::<u8>(len).expect("buffer size fits a layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Rc::new(Reassembly { ptr, len })
    }

    /// A window onto `start..start + len`. The caller keeps windows it hands out disjoint.
    pub fn window(self: &Rc<Reassembly>, start: usize, len: usize) -> Window {
        assert!(start.checked_add(len).is_some_and(|end| end <= self.len), "window outside the buffer");
        Window { owner: self.clone(), start, len }
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
    fn windows_see_their_own_range() {
        let buf = Reassembly::zeroed(8);
        let w = buf.window(4, 4);
        assert_eq!(w.as_ref(), &[0; 4]);
        drop(w);
        assert_eq!(buf.window(0, 8).as_ref().len(), 8);
    }
}
