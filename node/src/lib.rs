//! The dfs storage node as a library: everything `dfs-node` runs, so that its stores, scrub and
//! identity are unit-tested without starting processes. The binary (`main.rs`) only reads
//! options and starts it.
//!
//! `store` keeps chunks, in one of two stores: `store::files` (chunk files) or `store::segments`
//! (the default segment store); `server` answers the engine's requests over them; `scrub`
//! re-verifies what they hold; `identity` is the node's ID.

pub mod identity;
pub mod metrics;
pub mod pace;
pub mod progress;
pub mod scrub;
pub mod server;
pub mod store;
