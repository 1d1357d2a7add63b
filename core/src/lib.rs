//! The engine's decisions, without sockets, files or clocks: which nodes a chunk's copies go
//! to and in what order reads try them (`placement`), what repair does with one chunk from what
//! its checks found (`repair`), a read of one chunk from its copies (`read`), gc's rule for one chunk found on a node (`gc`), a state
//! machine that asks its questions in the order that makes it safe against commits happening
//! meanwhile, an upload and its bookkeeping (`upload`), a file's delete (`delete`), what a
//! node's answers tell the repair queue (`health`), and the streamed download (`stream`),
//! generic over its I/O.
//!
//! The engine drives these with real I/O; `dfs-sim` drives the same code with simulated nodes,
//! network and clock, so that every interleaving the simulator finds is one the engine can
//! meet. Each decision asserts what must hold before and after it.

pub mod delete;
pub mod gc;
pub mod health;
pub mod placement;
pub mod read;
pub mod repair;
pub mod stream;
pub mod upload;
