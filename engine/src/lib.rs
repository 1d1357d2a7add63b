//! The dfs engine as a library: everything `dfs-engine` runs, so that its logic (placement,
//! failover order, repair decisions, the metadata) is unit-tested without starting processes.
//! The binary (`main.rs`) only reads options and starts it.
//!
//! `cluster` talks to the nodes and nothing else does; `put`, `get`, `repair` and `gc` are the
//! requests, as orchestrations over it; `meta` keeps the file records; `server` is one client
//! connection; `state` what every handler shares.

pub mod activity;
pub mod buckets;
pub mod buffer;
pub mod cluster;
pub mod gc;
pub mod get;
pub mod local;
pub mod meta;
pub mod metrics;
pub mod put;
pub mod repair;
pub mod repair_queue;
pub mod s3;
pub mod server;
pub mod state;
pub mod status;
pub mod tls;
