//! What the fuzz targets share: which frame kinds cross which connection, the checks every
//! decoded message must pass, and an allocator that records the largest single allocation a
//! decoder makes, so a forged length that slips past its limit fails the run even without a
//! sanitizer.

use dfs_proto::limits::{FRAME_HEADER_BYTES, MAX_CONTROL_FRAME_BYTES};
use dfs_proto::{Kind, Msg};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod kinds;

/// The system allocator, recording the largest request since the last reset.
pub struct RecordingAlloc;

static LARGEST_ALLOCATION_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed unchanged to the system allocator; the only addition is an
// atomic counter, which allocates nothing.
unsafe impl GlobalAlloc for RecordingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION_BYTES.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION_BYTES.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the caller's contract for `realloc` is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: RecordingAlloc = RecordingAlloc;

/// Runs `f` and asserts that no single allocation it made exceeded the largest frame body the
/// protocol allows: every length and count a peer sends must be checked before it is trusted.
pub fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    LARGEST_ALLOCATION_BYTES.store(0, Ordering::Relaxed);
    let out = f();
    let largest = LARGEST_ALLOCATION_BYTES.load(Ordering::Relaxed);
    assert!(
        largest <= MAX_CONTROL_FRAME_BYTES as usize,
        "{what} allocated {largest} bytes at once, over the protocol's largest frame body ({MAX_CONTROL_FRAME_BYTES})"
    );
    out
}

/// A message decoded from `body` must encode to exactly `body` again: the format has one
/// encoding per message, so whatever a peer sends is what we would have sent.
pub fn assert_canonical(kind: Kind, body: &[u8], msg: &Msg) {
    assert_eq!(msg.kind(), kind, "a {} body decoded to a {} message", kind.name(), msg.kind().name());
    let frame = msg.encode();
    assert_eq!(&frame[FRAME_HEADER_BYTES..], body, "a {} body does not encode back to the same bytes", kind.name());
}

/// The shared body of the per-connection message targets: the first input byte is the frame
/// kind's wire value, the rest its body. Kinds that do not cross this connection are skipped.
pub fn fuzz_msg(allowed: &[Kind], bytes: &[u8]) {
    let Some((&kind_byte, body)) = bytes.split_first() else { return };
    let Some(kind) = Kind::from_u8(kind_byte) else { return };
    // A receiver never hands the decoder more than the frame header allowed.
    if !allowed.contains(&kind) || body.len() > kind.max_body_bytes() as usize {
        return;
    }
    if let Ok(msg) = bounded(kind.name(), || Msg::decode(kind, body)) {
        assert_canonical(kind, body, &msg);
    }
}
