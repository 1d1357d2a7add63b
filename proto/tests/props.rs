//! Property and example tests of the wire protocol: every valid message round trips, the
//! decoder never panics and accepts only canonical bodies, truncated or padded bodies are
//! refused, frame streams read back in order, and headers and forged counts are bounded.

use dfs_proto::codec::DecodeError;
use dfs_proto::io_std::{read_data, read_frame, write_data, write_msg, Frame};
use dfs_proto::limits::*;
use dfs_proto::{
    BucketSummary, ChunkId, ChunkInfo, Chunking, FileId, FileInfo, FileNode, FileSummary, FrameError, FrameHeader,
    Hello, HelloOk, KeySummary, Kind, Link, Msg, NodeId, NodeStatus, Origin, RepairQueueStatus, RepairSummary, Role,
    ScrubReport, Status, StoreReport, MAGIC, VERSION,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use std::collections::BTreeSet;
use std::io::Cursor;

/// Every frame kind with its wire value, written out here rather than taken from the crate so
/// that a renumbering (a wire format change) fails a test.
const KINDS: [(u8, Kind); 45] = [
    (0x01, Kind::Hello),
    (0x02, Kind::HelloOk),
    (0x03, Kind::Error),
    (0x04, Kind::Ok),
    (0x05, Kind::AuthChallenge),
    (0x06, Kind::AuthProof),
    (0x07, Kind::KeyChallenge),
    (0x08, Kind::KeyProof),
    (0x10, Kind::Put),
    (0x11, Kind::PutOk),
    (0x12, Kind::Get),
    (0x13, Kind::GetOk),
    (0x14, Kind::Stat),
    (0x15, Kind::StatOk),
    (0x16, Kind::List),
    (0x17, Kind::ListOk),
    (0x18, Kind::Delete),
    (0x19, Kind::ClusterStatus),
    (0x1A, Kind::ClusterStatusOk),
    (0x1B, Kind::Repair),
    (0x1C, Kind::RepairProgress),
    (0x1D, Kind::RepairOk),
    (0x1E, Kind::Gc),
    (0x1F, Kind::GcOk),
    (0x20, Kind::Store),
    (0x21, Kind::StoreOk),
    (0x22, Kind::Fetch),
    (0x23, Kind::FetchOk),
    (0x24, Kind::Exists),
    (0x25, Kind::ExistsOk),
    (0x26, Kind::ChunkDelete),
    (0x27, Kind::ChunkList),
    (0x28, Kind::ChunkListOk),
    (0x29, Kind::NodeStat),
    (0x2A, Kind::NodeStatOk),
    (0x2B, Kind::Scrub),
    (0x2C, Kind::ScrubOk),
    (0x30, Kind::Data),
    (0x31, Kind::End),
    (0x40, Kind::BucketCreate),
    (0x41, Kind::BucketList),
    (0x42, Kind::BucketListOk),
    (0x43, Kind::BucketDelete),
    (0x44, Kind::BucketKeys),
    (0x45, Kind::BucketKeysOk),
];

fn known_kind(byte: u8) -> Option<Kind> {
    KINDS.iter().find(|(b, _)| *b == byte).map(|(_, k)| *k)
}

fn max_body(kind: Kind) -> u32 {
    if kind == Kind::Data {
        MAX_DATA_FRAME_BYTES
    } else {
        MAX_CONTROL_FRAME_BYTES
    }
}

fn any_kind() -> impl Strategy<Value = Kind> {
    select(KINDS.map(|(_, k)| k).to_vec())
}

// ---------------------------------------------------------------------------------------------
// Strategies for valid messages.

/// Any Unicode scalar values (control characters, NUL and 4-byte characters included), often
/// empty or very short, since the smallest encodings are where minimum-size checks go wrong.
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        2 => vec(any::<char>(), 0..=3).prop_map(String::from_iter),
        3 => vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter),
    ]
}

fn file_id() -> impl Strategy<Value = FileId> {
    any::<[u8; 16]>().prop_map(FileId)
}

fn origin() -> impl Strategy<Value = Option<Origin>> {
    proptest::option::of(any::<[u8; 16]>().prop_map(Origin))
}

fn chunk_id() -> impl Strategy<Value = ChunkId> {
    (file_id(), any::<u32>()).prop_map(|(file_id, chunk_idx)| ChunkId { file_id, chunk_idx })
}

fn chunking() -> impl Strategy<Value = Chunking> {
    prop_oneof![Just(Chunking::Equal), Just(Chunking::Dynamic)]
}

fn status() -> impl Strategy<Value = Status> {
    select(Status::ALL.to_vec())
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Engine)]
}

fn list_limit() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1), Just(MAX_LIST_ENTRIES), 1..=MAX_LIST_ENTRIES]
}

fn file_size() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(MAX_FILE_SIZE_BYTES), 0..=MAX_FILE_SIZE_BYTES]
}

fn node_id() -> impl Strategy<Value = Option<NodeId>> {
    proptest::option::of(any::<[u8; 16]>().prop_map(NodeId))
}

fn crcs() -> impl Strategy<Value = Vec<u32>> {
    vec(any::<u32>(), 0..50)
}

fn chunk_info(n_nodes: usize) -> impl Strategy<Value = ChunkInfo> {
    let placement =
        if n_nodes == 0 { Just(Vec::new()).boxed() } else { vec(0..n_nodes as u16, 0..=MAX_REPLICAS as usize).boxed() };
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>(), placement).prop_map(
        |(chunk_idx, offset, length, crc32, placement)| ChunkInfo { chunk_idx, offset, length, crc32, placement },
    )
}

fn file_info() -> impl Strategy<Value = FileInfo> {
    // At most 64 characters keeps an address within MAX_ADDR_BYTES even if every one is 4 bytes.
    let nodes = vec((node_id(), text(64)).prop_map(|(id, addr)| FileNode { id, addr }), 0..20);
    (file_id(), text(100), any::<u64>(), any::<u64>(), chunking(), origin(), nodes).prop_flat_map(
        |(file_id, name, size, created_unix_ms, chunking, origin, nodes)| {
            vec(chunk_info(nodes.len()), 0..50).prop_map(move |chunks| FileInfo {
                file_id,
                name: name.clone(),
                size,
                created_unix_ms,
                chunking,
                origin,
                nodes: nodes.clone(),
                chunks,
            })
        },
    )
}

fn file_summary() -> impl Strategy<Value = FileSummary> {
    (file_id(), text(100), any::<u64>(), any::<u64>(), chunking(), any::<u32>(), origin()).prop_map(
        |(file_id, name, size, created_unix_ms, chunking, n_chunks, origin)| FileSummary {
            file_id,
            name,
            size,
            created_unix_ms,
            chunking,
            n_chunks,
            origin,
        },
    )
}

/// Any valid control message, of every variant, within the protocol limits.
fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (any::<u16>(), role(), any::<u8>(), vec(any::<u8>(), 0..200))
            .prop_map(|(version, role, auth_method, auth)| { Msg::Hello(Hello { version, role, auth_method, auth }) }),
        (any::<u16>(), any::<u32>(), any::<u64>(), any::<u32>(), node_id()).prop_map(
            |(version, block_size_bytes, dynamic_chunk_cap_bytes, idle_timeout_ms, node_id)| {
                Msg::HelloOk(HelloOk { version, block_size_bytes, dynamic_chunk_cap_bytes, idle_timeout_ms, node_id })
            }
        ),
        (status(), text(100)).prop_map(|(status, message)| Msg::Error { status, message }),
        Just(Msg::Ok),
        (any::<[u8; 32]>(), any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(|(nonce, id, proof)| Msg::AuthChallenge {
            nonce,
            node_id: NodeId(id),
            proof
        }),
        any::<[u8; 32]>().prop_map(|proof| Msg::AuthProof { proof }),
        (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(nonce, proof)| Msg::KeyChallenge { nonce, proof }),
        any::<[u8; 32]>().prop_map(|proof| Msg::KeyProof { proof }),
        (text(100), file_size(), chunking(), crcs(), origin()).prop_map(
            |(name, size, chunking, chunk_crcs, origin)| Msg::Put { name, size, chunking, chunk_crcs, origin }
        ),
        file_id().prop_map(|file_id| Msg::PutOk { file_id }),
        file_id().prop_map(|file_id| Msg::Get { file_id }),
        file_info().prop_map(Msg::GetOk),
        file_id().prop_map(|file_id| Msg::Stat { file_id }),
        file_info().prop_map(Msg::StatOk),
        (proptest::option::of(file_id()), list_limit()).prop_map(|(after, limit)| Msg::List { after, limit }),
        (vec(file_summary(), 0..50), any::<bool>()).prop_map(|(files, more)| Msg::ListOk { files, more }),
        file_id().prop_map(|file_id| Msg::Delete { file_id }),
        (chunk_id(), any::<u64>(), any::<u32>()).prop_map(|(chunk_id, length, crc32)| Msg::Store {
            chunk_id,
            length,
            crc32
        }),
        crcs().prop_map(|block_crcs| Msg::StoreOk { block_crcs }),
        (chunk_id(), any::<u32>()).prop_map(|(chunk_id, first_block)| Msg::Fetch { chunk_id, first_block }),
        (any::<u64>(), any::<u32>(), any::<u32>())
            .prop_map(|(length, crc32, block_size_bytes)| { Msg::FetchOk { length, crc32, block_size_bytes } }),
        chunk_id().prop_map(|chunk_id| Msg::Exists { chunk_id }),
        (any::<u64>(), any::<u32>()).prop_map(|(length, crc32)| Msg::ExistsOk { length, crc32 }),
        (chunk_id(), proptest::option::of(any::<u64>()))
            .prop_map(|(chunk_id, written_before_unix_ms)| Msg::ChunkDelete { chunk_id, written_before_unix_ms }),
        (proptest::option::of(chunk_id()), list_limit(), any::<u64>())
            .prop_map(|(after, limit, min_age_secs)| Msg::ChunkList { after, limit, min_age_secs }),
        (vec(chunk_id(), 0..50), any::<bool>(), any::<u64>())
            .prop_map(|(chunk_ids, more, listed_at_unix_ms)| Msg::ChunkListOk { chunk_ids, more, listed_at_unix_ms }),
        Just(Msg::End),
        Just(Msg::ClusterStatus),
        (any::<u32>(), vec(node_status(), 0..20), any::<(u64, u64, u64)>()).prop_map(
            |(replicas, nodes, (n_queued, n_settled, n_copies_made))| Msg::ClusterStatusOk {
                replicas,
                nodes,
                repair_queue: RepairQueueStatus { n_queued, n_settled, n_copies_made }
            }
        ),
        Just(Msg::Repair),
        (any::<u64>(), any::<u64>()).prop_map(|(n_done, n_total)| Msg::RepairProgress { n_done, n_total }),
        (vec(any::<u64>(), 7), report_lines()).prop_map(|(v, problems)| Msg::RepairOk(RepairSummary {
            n_files: v[0],
            n_chunks_checked: v[1],
            n_copies_made: v[2],
            n_chunks_unrecoverable: v[3],
            n_chunks_degraded: v[4],
            bytes_copied: v[5],
            n_chunks_unavailable: v[6],
            problems,
        })),
        (any::<bool>(), proptest::option::of(any::<u64>()))
            .prop_map(|(dry_run, grace_secs)| Msg::Gc { dry_run, grace_secs }),
        (any::<u64>(), any::<u64>(), any::<u64>(), report_lines()).prop_map(
            |(n_scanned, n_orphans, n_deleted, orphans)| Msg::GcOk { n_scanned, n_orphans, n_deleted, orphans }
        ),
        Just(Msg::NodeStat),
        store_report().prop_map(Msg::NodeStatOk),
        Just(Msg::Scrub),
        (any::<u64>(), any::<u64>(), report_lines()).prop_map(|(n_checked, n_corrupt, corrupt)| Msg::ScrubOk {
            n_checked,
            n_corrupt,
            corrupt
        }),
        text(63).prop_map(|name| Msg::BucketCreate { name }),
        text(63).prop_map(|name| Msg::BucketDelete { name }),
        (proptest::option::of(text(63)), list_limit()).prop_map(|(after, limit)| Msg::BucketList { after, limit }),
        (vec((text(63), any::<u64>()), 0..50), any::<bool>()).prop_map(|(buckets, more)| Msg::BucketListOk {
            buckets: buckets
                .into_iter()
                .map(|(name, created_unix_ms)| BucketSummary { name, created_unix_ms })
                .collect(),
            more
        }),
        (text(63), text(200), proptest::option::of(text(200)), list_limit())
            .prop_map(|(bucket, prefix, after, limit)| Msg::BucketKeys { bucket, prefix, after, limit }),
        (vec(key_summary(), 0..50), any::<bool>()).prop_map(|(keys, more)| Msg::BucketKeysOk { keys, more }),
    ]
}

fn key_summary() -> impl Strategy<Value = KeySummary> {
    (text(200), any::<u64>(), any::<u64>(), text(16), proptest::option::of(file_id()), any::<u32>()).prop_map(
        |(key, size, modified_unix_ms, etag, first_file, n_files)| KeySummary {
            key,
            size,
            modified_unix_ms,
            etag,
            first_file,
            n_files,
        },
    )
}

fn scrub_report() -> impl Strategy<Value = ScrubReport> {
    (any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(running, n_checked, last_finished_unix_ms, last_checked, last_corrupt)| ScrubReport {
            running,
            n_checked,
            last_finished_unix_ms,
            last_checked,
            last_corrupt,
        },
    )
}

fn store_report() -> impl Strategy<Value = StoreReport> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), scrub_report()).prop_map(
        |(n_chunks, bytes_used, bytes_free, n_quarantined, bytes_reclaimable, scrub)| StoreReport {
            n_chunks,
            bytes_used,
            bytes_free,
            n_quarantined,
            bytes_reclaimable,
            scrub,
        },
    )
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        node_id(),
        text(64),
        any::<bool>(),
        any::<u64>(),
        proptest::option::of(store_report()),
        proptest::option::of(text(100)),
    )
        .prop_map(|(id, addr, up, last_seen_unix_ms, report, last_error)| NodeStatus {
            id,
            addr,
            up,
            last_seen_unix_ms,
            report,
            last_error,
        })
}

fn report_lines() -> impl Strategy<Value = Vec<String>> {
    vec(text(100), 0..20)
}

/// The body of a message's encoding, checking its header on the way.
fn body_of(msg: &Msg) -> Vec<u8> {
    let frame = msg.encode();
    let header = FrameHeader::parse(frame[..FRAME_HEADER_BYTES].try_into().unwrap()).unwrap();
    assert_eq!(header.kind, msg.kind());
    assert_eq!(header.body_len as usize, frame.len() - FRAME_HEADER_BYTES);
    frame[FRAME_HEADER_BYTES..].to_vec()
}

/// Decodes `body`; whatever it accepts must be the one encoding of what it returns, so no two
/// byte strings mean the same message (bool, option tag, enum codes and UTF-8 all canonical).
fn decode_checked(kind: Kind, body: &[u8]) -> Result<Msg, DecodeError> {
    let got = Msg::decode(kind, body);
    if let Ok(m) = &got {
        assert_eq!(m.kind(), kind);
        assert_eq!(body_of(m), body, "decoder accepted a non-canonical {} body", kind.name());
    }
    got
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    /// 1. Every valid message encodes to a frame whose header names its kind and body length,
    ///    and whose body decodes to the same message.
    #[test]
    fn every_valid_msg_round_trips(msg in msg()) {
        let frame = msg.encode();
        let header = FrameHeader::parse(frame[..FRAME_HEADER_BYTES].try_into().unwrap()).unwrap();
        prop_assert_eq!(header.kind, msg.kind());
        prop_assert_eq!(header.body_len as usize, frame.len() - FRAME_HEADER_BYTES);
        prop_assert_eq!(Msg::decode(header.kind, &frame[FRAME_HEADER_BYTES..]), Ok(msg.clone()));
        let mut written = Vec::new();
        write_msg(&mut written, &msg).unwrap();
        prop_assert_eq!(written, frame);
    }

    /// 2a. Random bytes decoded as any kind give Ok or Err, never a panic, and anything
    ///     accepted is canonical.
    #[test]
    fn random_bodies_never_panic(kind in any_kind(), body in vec(any::<u8>(), 0..300)) {
        let _ = decode_checked(kind, &body);
    }

    /// 2b. Valid bodies with a few bytes overwritten reach much deeper into the decoder than
    ///     random bytes do; they must not panic either, and anything accepted is canonical.
    #[test]
    fn corrupted_bodies_never_panic(msg in msg(), edits in vec((any::<Index>(), any::<u8>()), 1..4)) {
        let mut body = body_of(&msg);
        if !body.is_empty() {
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
        }
        let _ = decode_checked(msg.kind(), &body);
    }

    /// 2c. Every strict prefix of a valid body is refused as truncated (Ok and End have empty
    ///     bodies, so there is nothing to cut).
    #[test]
    fn truncated_bodies_are_refused(msg in msg(), cuts in vec(any::<Index>(), 1..8)) {
        let body = body_of(&msg);
        if !body.is_empty() {
            let cuts = cuts.iter().map(|c| c.index(body.len())).chain([0, body.len() - 1]);
            for cut in cuts {
                let got = Msg::decode(msg.kind(), &body[..cut]);
                prop_assert!(
                    matches!(got, Err(DecodeError::Truncated { .. })),
                    "{} body cut to {} of {} bytes gave {:?}", msg.kind().name(), cut, body.len(), got
                );
            }
        }
    }

    /// 2d. Bytes after a valid body are refused, and counted.
    #[test]
    fn trailing_bytes_are_refused(msg in msg(), extra in vec(any::<u8>(), 1..16)) {
        let mut body = body_of(&msg);
        body.extend_from_slice(&extra);
        prop_assert_eq!(
            Msg::decode(msg.kind(), &body),
            Err(DecodeError::Trailing { kind: msg.kind().name(), n_bytes: extra.len() })
        );
    }

    /// 3a. A stream of frames reads back in order, then reports a clean close.
    #[test]
    fn frame_stream_reads_back_in_order(items in vec(item(), 0..8)) {
        let (stream, _) = write_items(&items);
        let mut r = Cursor::new(&stream[..]);
        for item in &items {
            read_item(&mut r, item)?;
        }
        prop_assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    /// 3b. A stream cut anywhere reads back every frame that ended before the cut, then
    ///     reports `Closed` if the cut fell between frames and `ClosedMidFrame` if inside one.
    #[test]
    fn cut_frame_stream_reports_where_it_was_cut(items in vec(item(), 1..8), cut in any::<Index>()) {
        let (stream, ends) = write_items(&items);
        let cut = cut.index(stream.len() + 1);
        let mut r = Cursor::new(&stream[..cut]);
        let mut start = 0;
        for (item, end) in items.iter().zip(ends) {
            if end <= cut {
                read_item(&mut r, item)?;
                start = end;
                continue;
            }
            if start == cut {
                break;
            }
            let err = match read_frame(&mut r) {
                Err(e) => e,
                Ok(Frame::Data(n)) => read_data(&mut r, &mut vec![0; n as usize]).unwrap_err(),
                Ok(Frame::Msg(m)) => return Err(TestCaseError::fail(format!("read {m:?} from a cut frame"))),
            };
            prop_assert!(matches!(err, FrameError::ClosedMidFrame), "cut at {}: {:?}", cut, err);
            return Ok(());
        }
        prop_assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    /// 4. A header is accepted exactly when its kind byte is known and its length is within
    ///    that kind's limit, and then it re-encodes to the same bytes.
    #[test]
    fn frame_header_enforces_kind_and_length(
        kind_byte in prop_oneof![select(KINDS.map(|(b, _)| b).to_vec()), any::<u8>()],
        body_len in prop_oneof![
            any::<u32>(),
            (0..=6u32).prop_map(|d| MAX_CONTROL_FRAME_BYTES - 3 + d),
            (0..=6u32).prop_map(|d| MAX_DATA_FRAME_BYTES - 3 + d),
            Just(u32::MAX),
        ],
    ) {
        let l = body_len.to_be_bytes();
        let bytes = [l[0], l[1], l[2], l[3], kind_byte];
        let got = FrameHeader::parse(bytes);
        match known_kind(kind_byte) {
            None => prop_assert_eq!(got, Err(DecodeError::UnknownKind(kind_byte))),
            Some(kind) if body_len > max_body(kind) => prop_assert_eq!(
                got,
                Err(DecodeError::FrameTooLarge { kind: kind.name(), len: body_len, max: max_body(kind) })
            ),
            Some(kind) => {
                prop_assert_eq!(&got, &Ok(FrameHeader { kind, body_len }));
                prop_assert_eq!(got.unwrap().encode(), bytes);
            }
        }
    }

    /// `Msg::error` cuts any message to the limit on a character boundary, so it always encodes.
    #[test]
    fn error_messages_are_cut_to_the_limit(status in status(), message in text(2000)) {
        let msg = Msg::error(status, message.clone());
        let Msg::Error { message: cut, .. } = &msg else { unreachable!() };
        prop_assert!(cut.len() <= MAX_MESSAGE_BYTES as usize);
        prop_assert!(message.starts_with(cut.as_str()));
        if message.len() <= MAX_MESSAGE_BYTES as usize {
            prop_assert_eq!(cut, &message);
        } else {
            // A character is at most 4 bytes, so the cut loses at most 3 bytes under the limit.
            prop_assert!(cut.len() > MAX_MESSAGE_BYTES as usize - 4);
        }
        prop_assert_eq!(Msg::decode(Kind::Error, &body_of(&msg)), Ok(msg));
    }
}

/// One frame of a stream: a control message or a data frame.
#[derive(Clone, Debug)]
enum Item {
    Msg(Msg),
    Data(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![3 => msg().prop_map(Item::Msg), 1 => vec(any::<u8>(), 0..64).prop_map(Item::Data)]
}

/// The stream of `items`, and the offset where each frame ends.
fn write_items(items: &[Item]) -> (Vec<u8>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    for item in items {
        match item {
            Item::Msg(m) => write_msg(&mut stream, m).unwrap(),
            Item::Data(d) => write_data(&mut stream, d).unwrap(),
        }
        ends.push(stream.len());
    }
    (stream, ends)
}

fn read_item(r: &mut Cursor<&[u8]>, item: &Item) -> Result<(), TestCaseError> {
    match (read_frame(r), item) {
        (Ok(Frame::Msg(got)), Item::Msg(want)) => prop_assert_eq!(&got, want),
        (Ok(Frame::Data(n)), Item::Data(want)) => {
            prop_assert_eq!(n as usize, want.len());
            let mut got = vec![0; n as usize];
            read_data(r, &mut got).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&got, want);
        }
        (got, want) => return Err(TestCaseError::fail(format!("read {got:?}, expected {want:?}"))),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Examples.

/// The strategy must keep covering every control message: a new variant fails here until the
/// strategy learns it.
#[test]
fn msg_strategy_covers_every_control_kind() {
    let mut runner = TestRunner::deterministic();
    let strategy = msg();
    let mut seen = BTreeSet::new();
    for _ in 0..2000 {
        seen.insert(strategy.new_tree(&mut runner).unwrap().current().kind() as u8);
    }
    let want: BTreeSet<u8> = KINDS.iter().filter(|(_, k)| *k != Kind::Data).map(|(b, _)| *b).collect();
    assert_eq!(seen, want);
}

#[test]
fn kind_bytes_are_the_wire_values() {
    for (byte, kind) in KINDS {
        assert_eq!(kind as u8, byte);
        assert_eq!(Kind::from_u8(byte), Some(kind));
    }
    for byte in 0..=u8::MAX {
        assert_eq!(Kind::from_u8(byte), known_kind(byte), "kind byte 0x{byte:02x}");
    }
}

#[test]
fn data_frame_header_at_the_limit_is_accepted_and_one_over_refused() {
    assert_eq!(FrameHeader::data(MAX_DATA_FRAME_BYTES as usize).body_len, MAX_DATA_FRAME_BYTES);
    let over = FrameHeader { kind: Kind::Data, body_len: MAX_DATA_FRAME_BYTES + 1 }.encode();
    assert!(matches!(FrameHeader::parse(over), Err(DecodeError::FrameTooLarge { .. })));
    let control = FrameHeader { kind: Kind::Hello, body_len: MAX_CONTROL_FRAME_BYTES + 1 }.encode();
    assert!(matches!(FrameHeader::parse(control), Err(DecodeError::FrameTooLarge { .. })));
}

/// A Put body by hand: empty name, size 0, equal chunking, then `count` announced crcs and
/// `present` of them actually there.
fn put_body(count: u32, present: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.push(Chunking::Equal.code());
    b.extend_from_slice(&count.to_be_bytes());
    b.extend(vec![0xab; 4 * present]);
    b.push(0); // no origin
    b
}

#[test]
fn put_with_forged_chunk_crc_count_is_refused_before_allocating() {
    // 4 billion crcs announced in a 17-byte body: refused by the count limit itself, before
    // anything is reserved for them.
    assert_eq!(
        Msg::decode(Kind::Put, &put_body(u32::MAX, 0)),
        Err(DecodeError::OverLimit { field: "chunk crc count", len: u32::MAX as u64, max: MAX_CHUNKS_PER_FILE as u64 })
    );
    assert!(matches!(
        Msg::decode(Kind::Put, &put_body(MAX_CHUNKS_PER_FILE + 1, 0)),
        Err(DecodeError::OverLimit { field: "chunk crc count", .. })
    ));
    // Within the limit but more than the body holds: refused by the bytes-left check.
    assert_eq!(
        Msg::decode(Kind::Put, &put_body(MAX_CHUNKS_PER_FILE, 1)),
        Err(DecodeError::Truncated { field: "chunk crc count" })
    );
    // And the honest version of the same body is fine.
    assert!(
        matches!(Msg::decode(Kind::Put, &put_body(3, 3)), Ok(Msg::Put { chunk_crcs, .. }) if chunk_crcs.len() == 3)
    );
}

#[test]
fn forged_counts_in_answers_are_refused_before_allocating() {
    // GetOk reserves its chunk table up front, so its count must be checked against the bytes
    // left: a 4-byte node count of 0 then a chunk count of 65536 with nothing after it.
    let mut b = vec![0u8; 16]; // file id
    b.extend_from_slice(&0u32.to_be_bytes()); // name
    b.extend_from_slice(&[0; 16]); // size, created
    b.push(Chunking::Equal.code());
    b.push(0); // no origin
    b.extend_from_slice(&0u32.to_be_bytes()); // nodes
    b.extend_from_slice(&MAX_CHUNKS_PER_FILE.to_be_bytes());
    assert_eq!(Msg::decode(Kind::GetOk, &b), Err(DecodeError::Truncated { field: "chunk count" }));

    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&VERSION.to_be_bytes());
    hello.extend_from_slice(&[Role::Client as u8, 0]);
    hello.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(Msg::decode(Kind::Hello, &hello), Err(DecodeError::OverLimit { field: "auth", .. })));

    let list_ok = (MAX_LIST_ENTRIES + 1).to_be_bytes();
    assert!(matches!(Msg::decode(Kind::ListOk, &list_ok), Err(DecodeError::OverLimit { .. })));
    assert!(matches!(Msg::decode(Kind::ChunkListOk, &list_ok), Err(DecodeError::OverLimit { .. })));
}

#[test]
fn hello_with_wrong_magic_is_refused() {
    let good = body_of(&Msg::Hello(Hello::new(Role::Engine)));
    assert_eq!(Msg::decode(Kind::Hello, &good), Ok(Msg::Hello(Hello::new(Role::Engine))));
    for bad_magic in [*b"DFS2", *b"dfs1", [0; 4], *b"HTTP"] {
        let mut body = good.clone();
        body[..4].copy_from_slice(&bad_magic);
        assert_eq!(Msg::decode(Kind::Hello, &body), Err(DecodeError::Invalid { field: "magic" }));
    }
    assert_eq!(Msg::decode(Kind::Hello, b"DFS"), Err(DecodeError::Truncated { field: "magic" }));
}

#[test]
fn hello_with_unknown_role_is_refused() {
    let mut body = body_of(&Msg::Hello(Hello::new(Role::Client)));
    for role in [0, 3, 0xff] {
        body[6] = role;
        assert_eq!(Msg::decode(Kind::Hello, &body), Err(DecodeError::Invalid { field: "role" }));
    }
}

#[test]
fn list_limit_of_zero_or_above_max_is_refused() {
    // Each list request, with the number of body bytes that follow its limit field.
    type MakeList = fn(u32) -> Msg;
    let lists: [(MakeList, usize); 4] = [
        (|limit| Msg::List { after: None, limit }, 0),
        (|limit| Msg::List { after: Some(FileId([9; 16])), limit }, 0),
        (|limit| Msg::ChunkList { after: None, limit, min_age_secs: 0 }, 8),
        (
            |limit| Msg::ChunkList {
                after: Some(ChunkId { file_id: FileId([7; 16]), chunk_idx: 3 }),
                limit,
                min_age_secs: 3600,
            },
            8,
        ),
    ];
    for (make, after_limit) in lists {
        for good in [1, MAX_LIST_ENTRIES] {
            let msg = make(good);
            assert_eq!(Msg::decode(msg.kind(), &body_of(&msg)), Ok(msg));
        }
        let template = make(1);
        let mut body = body_of(&template);
        let at = body.len() - after_limit - 4;
        for bad in [0, MAX_LIST_ENTRIES + 1, u32::MAX] {
            body[at..at + 4].copy_from_slice(&bad.to_be_bytes());
            assert_eq!(
                Msg::decode(template.kind(), &body),
                Err(DecodeError::OverLimit { field: "list limit", len: bad as u64, max: MAX_LIST_ENTRIES as u64 })
            );
        }
    }
}

#[test]
fn trailing_bytes_after_a_valid_body_are_refused() {
    assert_eq!(Msg::decode(Kind::Ok, &[]), Ok(Msg::Ok));
    assert_eq!(Msg::decode(Kind::Ok, &[0]), Err(DecodeError::Trailing { kind: "Ok", n_bytes: 1 }));
    assert_eq!(Msg::decode(Kind::End, &[1, 2]), Err(DecodeError::Trailing { kind: "End", n_bytes: 2 }));
    let mut body = body_of(&Msg::Get { file_id: FileId([1; 16]) });
    body.push(0);
    assert_eq!(Msg::decode(Kind::Get, &body), Err(DecodeError::Trailing { kind: "Get", n_bytes: 1 }));
}

#[test]
fn data_is_not_a_control_frame() {
    assert!(matches!(Msg::decode(Kind::Data, &[]), Err(DecodeError::Invalid { .. })));
}

#[test]
fn list_ok_of_files_with_empty_names_round_trips() {
    // The smallest file summary is 42 bytes (41 before the origin tag); the decoder once
    // assumed more and refused a page of short names as truncated.
    let summary = FileSummary {
        file_id: FileId([5; 16]),
        name: String::new(),
        size: 0,
        created_unix_ms: 0,
        chunking: Chunking::Equal,
        n_chunks: 4,
        origin: None,
    };
    for n in [1, 2, 10] {
        let msg = Msg::ListOk { files: vec![summary.clone(); n], more: false };
        assert_eq!(Msg::decode(Kind::ListOk, &body_of(&msg)), Ok(msg));
    }
}

#[test]
fn placement_past_the_node_list_is_refused() {
    let info = FileInfo {
        file_id: FileId([2; 16]),
        name: "f".into(),
        size: 1,
        created_unix_ms: 0,
        chunking: Chunking::Equal,
        origin: Some(Origin([7; 16])),
        nodes: vec![
            FileNode { id: Some(NodeId([1; 16])), addr: "a:1".into() },
            FileNode { id: None, addr: "b:2".into() },
        ],
        chunks: vec![ChunkInfo { chunk_idx: 0, offset: 0, length: 1, crc32: 0, placement: vec![1] }],
    };
    let mut body = body_of(&Msg::StatOk(info));
    let last = body.len() - 2;
    body[last..].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(Msg::decode(Kind::StatOk, &body), Err(DecodeError::Invalid { field: "placement" }));
}

#[test]
fn names_at_the_limit_are_accepted_and_one_byte_over_refused() {
    let at_limit = "é".repeat(MAX_NAME_BYTES as usize / 2);
    let msg = Msg::Put { name: at_limit, size: 0, chunking: Chunking::Dynamic, chunk_crcs: vec![], origin: None };
    assert_eq!(Msg::decode(Kind::Put, &body_of(&msg)), Ok(msg));

    let mut body = (MAX_NAME_BYTES + 1).to_be_bytes().to_vec();
    body.extend(vec![b'a'; MAX_NAME_BYTES as usize + 1]);
    body.extend_from_slice(&[0; 8]);
    body.push(1);
    body.extend_from_slice(&[0; 4]);
    assert!(matches!(Msg::decode(Kind::Put, &body), Err(DecodeError::OverLimit { field: "name", .. })));
}

#[test]
fn put_over_the_file_size_limit_is_refused() {
    let ok = Msg::Put {
        name: "x".into(),
        size: MAX_FILE_SIZE_BYTES,
        chunking: Chunking::Equal,
        chunk_crcs: vec![1],
        origin: Some(Origin([9; 16])),
    };
    let mut body = body_of(&ok);
    assert_eq!(Msg::decode(Kind::Put, &body), Ok(ok));
    body[5..13].copy_from_slice(&(MAX_FILE_SIZE_BYTES + 1).to_be_bytes());
    assert!(matches!(Msg::decode(Kind::Put, &body), Err(DecodeError::OverLimit { field: "file size", .. })));
}

#[test]
fn put_origin_is_a_tag_then_16_bytes_and_a_bad_tag_is_refused() {
    let put = |origin| Msg::Put { name: "y".into(), size: 0, chunking: Chunking::Equal, chunk_crcs: vec![], origin };
    let without = body_of(&put(None));
    assert_eq!(without.last(), Some(&0), "no origin is one 0 byte at the end");
    let with = body_of(&put(Some(Origin([0xab; 16]))));
    assert_eq!(with.len(), without.len() + 16);
    assert_eq!(with[without.len() - 1..], [[1u8].as_slice(), &[0xab; 16]].concat()[..]);
    let mut bad = without.clone();
    *bad.last_mut().expect("tag") = 2;
    assert_eq!(Msg::decode(Kind::Put, &bad), Err(DecodeError::Invalid { field: "option tag" }));
    // A tag that promises an origin the body does not hold is truncated, not read past the end.
    *bad.last_mut().expect("tag") = 1;
    assert!(matches!(Msg::decode(Kind::Put, &bad), Err(DecodeError::Truncated { field: "origin" })));
}

#[test]
fn invalid_names_are_refused() {
    // A lone continuation byte is not UTF-8.
    let mut body = 1u32.to_be_bytes().to_vec();
    body.push(0x80);
    body.extend_from_slice(&[0; 8]);
    body.push(1);
    body.extend_from_slice(&[0; 4]);
    assert_eq!(Msg::decode(Kind::Put, &body), Err(DecodeError::Invalid { field: "name" }));
}

proptest! {
    /// Every address a server can announce reads back, and no line makes the reader panic.
    #[test]
    fn listening_lines_read_back(ip in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>(), junk in ".{0,40}") {
        let addr: std::net::SocketAddr = if v4 {
            (std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port).into()
        } else {
            (std::net::Ipv6Addr::from(ip), port).into()
        };
        prop_assert_eq!(dfs_proto::listening::parse(&dfs_proto::listening::line(addr)), Some(addr));
        let _ = dfs_proto::listening::parse(&junk);
    }
}

#[test]
fn frame_kinds_have_one_value_and_name_each_and_cross_the_connections_they_serve() {
    let mut seen = std::collections::BTreeSet::new();
    for &kind in Kind::ALL {
        assert!(seen.insert(kind as u8), "two kinds share the value 0x{:02x}", kind as u8);
        assert_eq!(Kind::from_u8(kind as u8), Some(kind));
        assert!(!kind.name().is_empty());
    }
    let client = Kind::control_kinds_on(Link::Client);
    let node = Kind::control_kinds_on(Link::Node);
    assert!(client.contains(&Kind::Put) && !client.contains(&Kind::Store), "{client:?}");
    assert!(node.contains(&Kind::Store) && !node.contains(&Kind::Put), "{node:?}");
    assert!(client.contains(&Kind::Hello) && node.contains(&Kind::Hello));
    assert!(!client.contains(&Kind::Data) && !node.contains(&Kind::Data), "Data frames are raw bytes");
    assert!(Kind::AuthChallenge.crosses(Link::Node) && !Kind::AuthChallenge.crosses(Link::Client));
    // Every control kind crosses some connection.
    assert_eq!(client.len() + node.len() - client.iter().filter(|k| node.contains(k)).count(), Kind::ALL.len() - 1);
}
