//! Pacing of background passes (scrub, compaction): a pass sleeps whenever it is ahead of its
//! rate of bytes per second, so it never takes the disk from foreground requests for long.

use std::time::{Duration, Instant};

/// Keeps a background pass at or under a rate of bytes per second (scrub, compaction).
pub struct Pace {
    bytes_per_sec: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Pace {
    pub fn new(bytes_per_sec: Option<u64>) -> Pace {
        Pace { bytes_per_sec, started: Instant::now(), bytes: 0 }
    }

    /// Counts `bytes` moved, sleeping as long as the pass is ahead of its rate.
    pub(crate) fn account(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.bytes_per_sec.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}
