//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/` (or the directory
//! given as the only argument): one valid frame of each kind per connection, a few whole frame
//! streams as each side reads them, IDs, and chunk layouts at their edges. Files are named after
//! what they hold and overwritten in place; other files (fuzz reproducers) are left alone.

#[path = "../../src/kinds.rs"]
mod kinds;

use dfs_proto::auth::{AUTH_CLUSTER, AUTH_KEY_PROOF};
use dfs_proto::limits::{FRAME_HEADER_BYTES, MAX_DATA_FRAME_BYTES, MAX_FILE_SIZE_BYTES};
use dfs_proto::{
    ChunkId, ChunkInfo, Chunking, FileId, FileInfo, FileNode, FileSummary, FrameHeader, Hello, HelloOk, Msg, NodeId,
    NodeStatus, Origin, RepairSummary, Role, ScrubReport, Status, StoreReport, VERSION,
};
use std::path::{Path, PathBuf};

const FILE_ID: FileId = FileId([0x5e; 16]);
const CHUNK_ID: ChunkId = ChunkId { file_id: FILE_ID, chunk_idx: 3 };
const MIB: u64 = 1 << 20;

fn file_info() -> FileInfo {
    FileInfo {
        file_id: FILE_ID,
        name: "dataset.tar".into(),
        size: 10,
        created_unix_ms: 1_700_000_000_000,
        chunking: Chunking::Equal,
        origin: Some(Origin([0x0a; 16])),
        nodes: vec![
            FileNode { id: Some(NodeId([0x1d; 16])), addr: "10.0.0.1:7701".into() },
            FileNode { id: None, addr: "10.0.0.2:7701".into() },
        ],
        chunks: (0..4)
            .map(|i| ChunkInfo {
                chunk_idx: i,
                offset: [0, 3, 6, 9][i as usize],
                length: [3, 3, 3, 1][i as usize],
                crc32: 0xdead_0000 + i,
                placement: vec![(i % 2) as u16, ((i + 1) % 2) as u16],
            })
            .collect(),
    }
}

fn store_report() -> StoreReport {
    StoreReport {
        n_chunks: 12,
        bytes_used: 40 * MIB,
        bytes_free: 1 << 40,
        n_quarantined: 1,
        bytes_reclaimable: 3 * MIB,
        scrub: ScrubReport {
            running: true,
            n_checked: 5,
            last_finished_unix_ms: 1_700_000_000_000,
            last_checked: 11,
            last_corrupt: 1,
        },
    }
}

/// Named sample messages: every control kind at least once, with lists and options both
/// empty and filled where a kind has them.
fn samples() -> Vec<(&'static str, Msg)> {
    let hello =
        |role, auth_method, auth: &[u8]| Msg::Hello(Hello { version: VERSION, role, auth_method, auth: auth.into() });
    vec![
        ("hello-none", Msg::Hello(Hello::new(Role::Client))),
        ("hello-key-proof", hello(Role::Client, AUTH_KEY_PROOF, &[5; 48])),
        ("hello-cluster", hello(Role::Engine, AUTH_CLUSTER, &[7; 32])),
        (
            "hello-ok",
            Msg::HelloOk(HelloOk {
                version: VERSION,
                block_size_bytes: MAX_DATA_FRAME_BYTES,
                dynamic_chunk_cap_bytes: 64 * MIB,
                idle_timeout_ms: 60_000,
                node_id: None,
            }),
        ),
        (
            "hello-ok-node",
            Msg::HelloOk(HelloOk {
                version: VERSION,
                block_size_bytes: MAX_DATA_FRAME_BYTES,
                dynamic_chunk_cap_bytes: 0,
                idle_timeout_ms: 60_000,
                node_id: Some(NodeId([0x1d; 16])),
            }),
        ),
        ("error", Msg::error(Status::NotFound, "no file 5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e")),
        ("ok", Msg::Ok),
        ("auth-challenge", Msg::AuthChallenge { nonce: [1; 32], node_id: NodeId([0x1d; 16]), proof: [2; 32] }),
        ("auth-proof", Msg::AuthProof { proof: [3; 32] }),
        ("key-challenge", Msg::KeyChallenge { nonce: [4; 32], proof: [6; 32] }),
        ("key-proof", Msg::KeyProof { proof: [8; 32] }),
        (
            "put",
            Msg::Put {
                name: "dataset.tar".into(),
                size: 10,
                chunking: Chunking::Equal,
                chunk_crcs: vec![1, 2, 3, 4],
                origin: None,
            },
        ),
        (
            "put-origin",
            Msg::Put {
                name: "dataset.tar".into(),
                size: 10,
                chunking: Chunking::Equal,
                chunk_crcs: vec![1, 2, 3, 4],
                origin: Some(Origin([0x0a; 16])),
            },
        ),
        ("put-ok", Msg::PutOk { file_id: FILE_ID }),
        ("get", Msg::Get { file_id: FILE_ID }),
        ("get-ok", Msg::GetOk(file_info())),
        ("stat", Msg::Stat { file_id: FILE_ID }),
        ("stat-ok", Msg::StatOk(file_info())),
        ("list-first", Msg::List { after: None, limit: 1000 }),
        ("list-after", Msg::List { after: Some(FILE_ID), limit: 1 }),
        (
            "list-ok",
            Msg::ListOk {
                files: vec![
                    FileSummary {
                        file_id: FILE_ID,
                        name: "dataset.tar".into(),
                        size: 10,
                        created_unix_ms: 1_700_000_000_000,
                        chunking: Chunking::Dynamic,
                        n_chunks: 4,
                        origin: None,
                    },
                    FileSummary {
                        file_id: FileId([0x5f; 16]),
                        name: "tree/a.txt".into(),
                        size: 3,
                        created_unix_ms: 1_700_000_000_001,
                        chunking: Chunking::Equal,
                        n_chunks: 4,
                        origin: Some(Origin([0x0a; 16])),
                    },
                ],
                more: true,
            },
        ),
        ("delete", Msg::Delete { file_id: FILE_ID }),
        ("cluster-status", Msg::ClusterStatus),
        (
            "cluster-status-ok",
            Msg::ClusterStatusOk {
                replicas: 2,
                nodes: vec![
                    NodeStatus {
                        id: Some(NodeId([0x1d; 16])),
                        addr: "10.0.0.1:7701".into(),
                        up: true,
                        last_seen_unix_ms: 1_700_000_000_000,
                        report: Some(store_report()),
                        last_error: None,
                    },
                    NodeStatus {
                        id: None,
                        addr: "10.0.0.2:7701".into(),
                        up: false,
                        last_seen_unix_ms: 0,
                        report: None,
                        last_error: Some("connection refused".into()),
                    },
                ],
                repair_queue: dfs_proto::msg::RepairQueueStatus { n_queued: 3, n_settled: 5, n_copies_made: 4 },
            },
        ),
        ("repair", Msg::Repair),
        ("repair-progress", Msg::RepairProgress { n_done: 3, n_total: 8 }),
        (
            "repair-ok",
            Msg::RepairOk(RepairSummary {
                n_files: 2,
                n_chunks_checked: 8,
                n_copies_made: 1,
                n_chunks_unrecoverable: 1,
                n_chunks_unavailable: 1,
                n_chunks_degraded: 0,
                bytes_copied: 3,
                problems: vec![format!("chunk {CHUNK_ID}: no verified copy left")],
            }),
        ),
        ("gc", Msg::Gc { dry_run: true, grace_secs: None }),
        ("gc-grace", Msg::Gc { dry_run: false, grace_secs: Some(3600) }),
        ("gc-ok", Msg::GcOk { n_scanned: 9, n_orphans: 1, n_deleted: 1, orphans: vec![CHUNK_ID.to_string()] }),
        ("scrub", Msg::Scrub),
        ("scrub-ok", Msg::ScrubOk { n_checked: 8, n_corrupt: 1, corrupt: vec![CHUNK_ID.to_string()] }),
        ("store", Msg::Store { chunk_id: CHUNK_ID, length: 3, crc32: 0xdead_0003 }),
        ("store-ok", Msg::StoreOk { block_crcs: vec![0xdead_0003] }),
        ("fetch", Msg::Fetch { chunk_id: CHUNK_ID, first_block: 0 }),
        ("fetch-ok", Msg::FetchOk { length: 3, crc32: 0xdead_0003, block_size_bytes: MAX_DATA_FRAME_BYTES }),
        ("exists", Msg::Exists { chunk_id: CHUNK_ID }),
        ("exists-ok", Msg::ExistsOk { length: 3, crc32: 0xdead_0003 }),
        ("chunk-delete", Msg::ChunkDelete { chunk_id: CHUNK_ID, written_before_unix_ms: None }),
        ("chunk-delete-if-older", Msg::ChunkDelete { chunk_id: CHUNK_ID, written_before_unix_ms: Some(1_700_000_000_000) }),
        ("chunk-list-first", Msg::ChunkList { after: None, limit: 1000, min_age_secs: 0 }),
        ("chunk-list-after", Msg::ChunkList { after: Some(CHUNK_ID), limit: 10, min_age_secs: 3600 }),
        ("chunk-list-ok", Msg::ChunkListOk { chunk_ids: vec![CHUNK_ID], more: false, listed_at_unix_ms: 1_700_000_000_000 }),
        ("node-stat", Msg::NodeStat),
        ("node-stat-ok", Msg::NodeStatOk(store_report())),
        ("end", Msg::End),
        ("bucket-create", Msg::BucketCreate { name: "datasets".into() }),
        ("bucket-delete", Msg::BucketDelete { name: "datasets".into() }),
        ("bucket-list", Msg::BucketList { after: None, limit: 1000 }),
        ("bucket-list-after", Msg::BucketList { after: Some("datasets".into()), limit: 10 }),
        (
            "bucket-list-ok",
            Msg::BucketListOk {
                buckets: vec![dfs_proto::BucketSummary { name: "datasets".into(), created_unix_ms: 1_700_000_000_000 }],
                more: false,
            },
        ),
        ("bucket-keys", Msg::BucketKeys { bucket: "datasets".into(), prefix: "img/".into(), after: None, limit: 1000 }),
        (
            "bucket-keys-after",
            Msg::BucketKeys { bucket: "datasets".into(), prefix: String::new(), after: Some("a/b".into()), limit: 5 },
        ),
        (
            "bucket-keys-ok",
            Msg::BucketKeysOk {
                keys: vec![
                    dfs_proto::KeySummary {
                        key: "img/0001.jpg".into(),
                        size: 10,
                        modified_unix_ms: 1_700_000_000_000,
                        etag: "5d41402abc4b2a76b9719d911017c592".into(),
                        first_file: Some(FILE_ID),
                        n_files: 1,
                    },
                    dfs_proto::KeySummary {
                        key: "big.tar".into(),
                        size: 0,
                        modified_unix_ms: 1_700_000_000_001,
                        etag: "d41d8cd98f00b204e9800998ecf8427e-0".into(),
                        first_file: None,
                        n_files: 0,
                    },
                ],
                more: true,
            },
        ),
    ]
}

fn data_frame(bytes: &[u8]) -> Vec<u8> {
    let mut frame = FrameHeader::data(bytes.len()).encode().to_vec();
    frame.extend_from_slice(bytes);
    frame
}

/// What one side of a connection reads, as one byte stream (the raw bytes that follow Put and
/// Store are left out: the stream reader never sees them as frames).
fn streams(samples: &[(&'static str, Msg)]) -> Vec<(&'static str, Vec<u8>)> {
    let frames = |names: &[&str]| -> Vec<u8> {
        names
            .iter()
            .flat_map(|name| match *name {
                "data" => data_frame(b"abc"),
                name => samples.iter().find(|(n, _)| *n == name).expect("a sample of that name").1.encode(),
            })
            .collect()
    };
    vec![
        (
            "engine-reads-client",
            frames(&["hello-key-proof", "key-proof", "put", "get", "stat", "list-first", "delete", "gc", "scrub"]),
        ),
        (
            "client-reads-engine",
            frames(&[
                "key-challenge",
                "hello-ok",
                "put-ok",
                "get-ok",
                "data",
                "data",
                "end",
                "stat-ok",
                "list-ok",
                "cluster-status-ok",
                "repair-progress",
                "repair-ok",
                "gc-ok",
                "scrub-ok",
                "error",
                "ok",
            ]),
        ),
        ("node-reads-engine", frames(&["hello-cluster", "auth-proof", "store", "fetch", "exists", "chunk-list-after"])),
        (
            "engine-reads-node",
            frames(&[
                "auth-challenge",
                "hello-ok",
                "store-ok",
                "fetch-ok",
                "data",
                "end",
                "exists-ok",
                "chunk-list-ok",
                "node-stat-ok",
                "scrub-ok",
                "error",
            ]),
        ),
        // A Data header at the limit whose body never comes.
        ("data-at-limit-cut", FrameHeader::data(MAX_DATA_FRAME_BYTES as usize).encode().to_vec()),
    ]
}

fn layout(size: u64, dynamic: bool, cap: u64) -> Vec<u8> {
    let mut input = size.to_be_bytes().to_vec();
    input.push(dynamic as u8);
    input.extend_from_slice(&cap.to_be_bytes());
    input
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"));
    let samples = samples();
    for (target, allowed) in [("client_engine_msgs", kinds::client_engine()), ("engine_node_msgs", kinds::engine_node())] {
        for kind in &allowed {
            assert!(samples.iter().any(|(_, m)| m.kind() == *kind), "no sample of {}", kind.name());
        }
        for (name, msg) in samples.iter().filter(|(_, m)| allowed.contains(&m.kind())) {
            let frame = msg.encode();
            let mut input = vec![msg.kind() as u8];
            input.extend_from_slice(&frame[FRAME_HEADER_BYTES..]);
            write(&dir, target, name, &input);
        }
    }

    for (name, stream) in streams(&samples) {
        write(&dir, "frame_stream", name, &stream);
    }

    let chunk_id = CHUNK_ID.to_string();
    write(&dir, "ids", "file-id", FILE_ID.to_string().as_bytes());
    write(&dir, "ids", "chunk-id", chunk_id.as_bytes());
    write(&dir, "ids", "chunk-id-uppercase", chunk_id.to_uppercase().as_bytes());
    write(&dir, "ids", "chunk-id-path", format!("../{}/{chunk_id}", CHUNK_ID.fanout_dir()).as_bytes());

    for (name, input) in [
        ("equal-3-bytes", layout(3, false, 0)),
        ("equal-largest-file", layout(MAX_FILE_SIZE_BYTES, false, 0)),
        ("equal-over-largest", layout(MAX_FILE_SIZE_BYTES + 1, false, 0)),
        ("dynamic-1-gib-64-mib-cap", layout(1 << 30, true, 64 * MIB)),
        ("dynamic-zero-cap", layout(1 << 30, true, 0)),
        ("dynamic-too-many-chunks", layout(MAX_FILE_SIZE_BYTES, true, 1)),
        ("dynamic-largest-cap", layout(MAX_FILE_SIZE_BYTES, true, u64::MAX)),
    ] {
        write(&dir, "layout", name, &input);
    }
    println!("seed corpus written under {}", dir.display());
}
