//! What the request paths count for the status page: requests per second over the last five
//! minutes ([`Activity`], a ring of per-second counters kept in the engine's state) and the
//! transfers under way ([`InProgress`]).

use serde::Serialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Seconds the activity ring keeps.
const RING_SECS: u64 = 300;

/// One second's counters. Atomics, so that counting a request takes no lock: the first
/// request of a new second takes the slot over (compare and swap of `unix_s`) and clears it. A
/// request of the same second that lands between the takeover and the clearing is not counted;
/// the charts can bear that, the request paths should not bear a lock.
#[derive(Default)]
struct Slot {
    unix_s: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency_us_sum: AtomicU64,
    latency_us_max: AtomicU64,
}

impl Slot {
    fn counters(&self) -> [&AtomicU64; 6] {
        [&self.requests, &self.errors, &self.bytes_in, &self.bytes_out, &self.latency_us_sum, &self.latency_us_max]
    }
}

/// Per-second request counters of the last [`RING_SECS`] seconds.
pub struct Activity {
    ring: Vec<Slot>,
    pub uploads: AtomicI64,
    pub downloads: AtomicI64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            ring: (0..RING_SECS).map(|_| Slot::default()).collect(),
            uploads: AtomicI64::new(0),
            downloads: AtomicI64::new(0),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, tally: &dfs_runtime::conn::Tally, elapsed: Duration) {
        let slot = self.slot_now();
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        slot.requests.fetch_add(1, Ordering::Relaxed);
        slot.errors.fetch_add(u64::from(tally.outcome != "ok"), Ordering::Relaxed);
        slot.bytes_in.fetch_add(tally.bytes_in, Ordering::Relaxed);
        slot.bytes_out.fetch_add(tally.bytes_out, Ordering::Relaxed);
        slot.latency_us_sum.fetch_add(us, Ordering::Relaxed);
        slot.latency_us_max.fetch_max(us, Ordering::Relaxed);
    }

    /// Counts bytes moved outside a request's own tally (an S3 body, which streams after its
    /// request is counted).
    pub fn add_bytes(&self, bytes_in: u64, bytes_out: u64) {
        let slot = self.slot_now();
        slot.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        slot.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    /// This second's slot, emptied first if it still holds an older second.
    fn slot_now(&self) -> &Slot {
        let now = dfs_runtime::unix_ms() / 1000;
        let slot = &self.ring[(now % RING_SECS) as usize];
        let seen = slot.unix_s.load(Ordering::Acquire);
        if seen != now && slot.unix_s.compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            slot.counters().iter().for_each(|c| c.store(0, Ordering::Relaxed));
        }
        slot
    }

    /// The last `n` whole seconds, oldest first.
    pub fn last(&self, n: u64) -> Vec<SecondView> {
        let now = dfs_runtime::unix_ms() / 1000;
        (now - n..now)
            .map(|t| {
                let slot = &self.ring[(t % RING_SECS) as usize];
                let [requests, errors, bytes_in, bytes_out, latency_us_sum, latency_us_max] =
                    if slot.unix_s.load(Ordering::Acquire) == t {
                        slot.counters().map(|c| c.load(Ordering::Relaxed))
                    } else {
                        [0; 6]
                    };
                SecondView {
                    unix_s: t,
                    requests,
                    errors,
                    bytes_in,
                    bytes_out,
                    mean_latency_ms: if requests == 0 { 0.0 } else { latency_us_sum as f64 / requests as f64 / 1000.0 },
                    max_latency_ms: latency_us_max as f64 / 1000.0,
                }
            })
            .collect()
    }
}

/// Counts a transfer in progress while it lives.
pub struct InProgress<'a>(&'a AtomicI64);

impl InProgress<'_> {
    pub fn upload(activity: &Activity) -> InProgress<'_> {
        activity.uploads.fetch_add(1, Ordering::Relaxed);
        InProgress(&activity.uploads)
    }

    pub fn download(activity: &Activity) -> InProgress<'_> {
        activity.downloads.fetch_add(1, Ordering::Relaxed);
        InProgress(&activity.downloads)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Serialize, Clone)]
pub struct SecondView {
    pub unix_s: u64,
    pub requests: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub mean_latency_ms: f64,
    pub max_latency_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_each_second_apart_and_forgets_old_ones() {
        let a = Activity::new();
        let tally = dfs_runtime::conn::Tally { bytes_in: 10, bytes_out: 5, outcome: "ok" };
        a.record(&tally, Duration::from_millis(2));
        a.record(&dfs_runtime::conn::Tally { outcome: "error", ..tally }, Duration::from_millis(4));
        // The current second is not yet whole: it shows from the next second on.
        std::thread::sleep(Duration::from_millis(1100));
        let last = a.last(3);
        let s = last.iter().find(|s| s.requests > 0).expect("the second recorded");
        assert_eq!((s.requests, s.errors, s.bytes_in, s.bytes_out), (2, 1, 20, 10));
        assert!((s.mean_latency_ms - 3.0).abs() < 0.01 && (s.max_latency_ms - 4.0).abs() < 0.01);
    }
}
