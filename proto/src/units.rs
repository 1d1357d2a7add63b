//! Sizes as people read them, shared by what the engine serves (its status page) and what the
//! client prints.

/// A size for people: `999 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A size option's value that is not a byte count. clap prints only an argument error's own
/// message, so the cause is part of it rather than a `source()`.
#[derive(Debug, thiserror::Error)]
#[error("{text:?}: {cause}")]
pub struct BadSize {
    text: String,
    cause: parse_size::Error,
}

/// A byte count as people write it on a command line (`4096`, `64KiB`, `8MB`, `1.5GiB`; K, M,
/// G read as powers of two): the one parser of every binary's size options.
pub fn parse_bytes(s: &str) -> Result<u64, BadSize> {
    parse_size::Config::new().with_binary().parse_size(s).map_err(|cause| BadSize { text: s.to_string(), cause })
}
