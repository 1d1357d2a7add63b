//! Which control frames cross which connection (`docs/PROTOCOL.md`). Hello, HelloOk, Error, Ok,
//! Scrub, ScrubOk and End cross both; Data frames carry raw bytes and are covered by the
//! `frame_stream` target.

use dfs_proto::Kind;
use std::sync::Once;

pub const CLIENT_ENGINE: &[Kind] = &[
    Kind::Hello,
    Kind::HelloOk,
    Kind::Error,
    Kind::Ok,
    Kind::Put,
    Kind::PutOk,
    Kind::Get,
    Kind::GetOk,
    Kind::Stat,
    Kind::StatOk,
    Kind::List,
    Kind::ListOk,
    Kind::Delete,
    Kind::ClusterStatus,
    Kind::ClusterStatusOk,
    Kind::Repair,
    Kind::RepairProgress,
    Kind::RepairOk,
    Kind::Gc,
    Kind::GcOk,
    Kind::Scrub,
    Kind::ScrubOk,
    Kind::End,
];

pub const ENGINE_NODE: &[Kind] = &[
    Kind::Hello,
    Kind::HelloOk,
    Kind::AuthChallenge,
    Kind::AuthProof,
    Kind::Error,
    Kind::Ok,
    Kind::Store,
    Kind::StoreOk,
    Kind::Fetch,
    Kind::FetchOk,
    Kind::Exists,
    Kind::ExistsOk,
    Kind::ChunkDelete,
    Kind::ChunkList,
    Kind::ChunkListOk,
    Kind::NodeStat,
    Kind::NodeStatOk,
    Kind::Scrub,
    Kind::ScrubOk,
    Kind::End,
];

/// Fails the first run of a message target if the protocol has a control frame kind that
/// neither list names, so a new kind cannot go unfuzzed.
pub fn assert_every_kind_is_fuzzed() {
    static CHECKED: Once = Once::new();
    CHECKED.call_once(|| {
        for byte in 0..=u8::MAX {
            let Some(kind) = Kind::from_u8(byte) else { continue };
            assert!(
                kind == Kind::Data || CLIENT_ENGINE.contains(&kind) || ENGINE_NODE.contains(&kind),
                "frame kind {} (0x{byte:02x}) is in no fuzzed connection: add it to fuzz/src/kinds.rs",
                kind.name()
            );
        }
    });
}
