//! Which control frames cross which connection, derived from the protocol's one table of frame
//! kinds (`dfs_proto::Kind::link`): a new kind is fuzzed on the connections it crosses as soon
//! as it exists. Data frames carry raw bytes and are covered by the `frame_stream` target.

use dfs_proto::{Kind, Link};

/// Control frame kinds of a client ↔ engine connection.
pub fn client_engine() -> Vec<Kind> {
    Kind::control_kinds_on(Link::Client)
}

/// Control frame kinds of an engine ↔ node connection.
pub fn engine_node() -> Vec<Kind> {
    Kind::control_kinds_on(Link::Node)
}
