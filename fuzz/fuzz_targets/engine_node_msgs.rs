//! Every control frame that crosses the engine ↔ node connection: the first input byte picks
//! the frame kind, the rest is its body. Decoding must never panic; whatever decodes must
//! encode back to a body that decodes to the same message.
#![no_main]

use dfs_proto::{Kind, Msg};
use libfuzzer_sys::fuzz_target;

const KINDS: &[Kind] = &[
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

fuzz_target!(|bytes: &[u8]| {
    let Some((&pick, body)) = bytes.split_first() else { return };
    let kind = KINDS[pick as usize % KINDS.len()];
    // A server never hands the decoder more than the frame header allowed.
    if body.len() > kind.max_body_bytes() as usize {
        return;
    }
    if let Ok(msg) = Msg::decode(kind, body) {
        let frame = msg.encode();
        let again = Msg::decode(kind, &frame[dfs_proto::limits::FRAME_HEADER_BYTES..]);
        assert_eq!(again.as_ref(), Ok(&msg), "{} does not round-trip", kind.name());
    }
});
