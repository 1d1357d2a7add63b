//! How a server tells the process that started it where it listens: its first line on stdout
//! is `listening ADDR`, written once its listeners are bound (so a server given port 0 can be
//! found). Every launcher reads it through [`parse`]: the engine's `--local` (for its nodes),
//! `dfs-client put --bench --local`, the bench harness and the test harness.

use std::net::SocketAddr;

const PREFIX: &str = "listening ";

/// The line announcing `addr`, without its newline.
pub fn line(addr: SocketAddr) -> String {
    format!("{PREFIX}{addr}")
}

/// The address a `listening ADDR` line announces (trailing whitespace and newline allowed);
/// None for any other line.
pub fn parse(line: &str) -> Option<SocketAddr> {
    line.trim_end().strip_prefix(PREFIX)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_addresses_read_back_and_other_lines_do_not() {
        for addr in ["127.0.0.1:7700", "[::1]:0", "10.1.2.3:65535"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse(&line(addr)), Some(addr));
            assert_eq!(parse(&format!("{}\n", line(addr))), Some(addr));
        }
        for other in ["", "listening", "listening ", "listening on 127.0.0.1:1", "127.0.0.1:1", "listening 127.0.0.1"] {
            assert_eq!(parse(other), None, "{other:?}");
        }
    }
}
