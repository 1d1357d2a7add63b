//! The dfs storage node as a library: everything `dfs-node` runs, so that its stores, scrub and
//! identity are unit-tested without starting processes. The binary (`main.rs`) only reads
//! options and starts it.
//!
//! `store` (chunk files) and `segments` (the default segment store) keep chunks; `server`
//! answers the engine's requests over them; `scrub` re-verifies what they hold; `identity` is the
//! node's ID.

pub mod footer;
pub mod identity;
pub mod metrics;
pub mod pace;
pub mod progress;
pub mod scrub;
pub mod segments;
pub mod server;
pub mod store;
pub mod sync;
