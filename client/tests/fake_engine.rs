//! The client library and binary against a fake engine on loopback: a thread that speaks the
//! engine's side of protocol v1 from memory, and can be told to misbehave (corrupt a chunk,
//! fail mid-download, refuse an upload). The real cluster is tested in the workspace's `tests/`
//! crate; these tests pin the client's own behaviour on the failure paths, which a healthy
//! engine rarely exercises.

use dfs_client::{Chunking, Client, ClientError, FileId, FileInfo, IntegrityError, Server, Status};
use dfs_proto::io_std::{self, Frame};
use dfs_proto::layout::{chunk_spans, crc32};
use dfs_proto::{ChunkInfo, FileNode, FileSummary, HelloOk, Msg, NodeId, VERSION};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;

const CAP_BYTES: u64 = 1 << 20;
/// The fake engine's list page size, small so that paging is exercised.
const PAGE_FILES: usize = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Flip one byte of this chunk in every download.
    CorruptChunk(usize),
    /// Send an Error frame after this many bytes of a download.
    FailAfter(usize),
    /// Answer Put with an Error frame at once and hang up without reading the data.
    RefusePut,
}

/// Starts a fake engine that serves `n_connections` connections, one after the other, and
/// returns its address.
fn start(fault: Fault, n_connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    thread::spawn(move || {
        let mut files = BTreeMap::new();
        for _ in 0..n_connections {
            let Ok((stream, _)) = listener.accept() else { return };
            // A client that hangs up mid-request ends only its own connection.
            let _ = serve(stream, fault, &mut files);
        }
    });
    addr
}

fn serve(mut s: TcpStream, fault: Fault, files: &mut BTreeMap<FileId, (FileInfo, Vec<u8>)>) -> std::io::Result<()> {
    let next = |s: &mut TcpStream| match io_std::read_frame(s) {
        Ok(Frame::Msg(m)) => Some(m),
        _ => None,
    };
    let Some(Msg::Hello(_)) = next(&mut s) else { return Ok(()) };
    let hello = HelloOk {
        version: VERSION,
        block_size_bytes: 1 << 20,
        dynamic_chunk_cap_bytes: CAP_BYTES,
        idle_timeout_ms: 60_000,
        node_id: None,
    };
    io_std::write_msg(&mut s, &Msg::HelloOk(hello))?;
    while let Some(msg) = next(&mut s) {
        let reply = match msg {
            Msg::Put { .. } if fault == Fault::RefusePut => {
                io_std::write_msg(&mut s, &Msg::error(Status::NoSpace, "no node has room for 64 MiB"))?;
                return Ok(()); // hang up with the data unread
            }
            Msg::Put { name, size, chunking, chunk_crcs, origin } => {
                let mut data = vec![0; size as usize];
                s.read_exact(&mut data)?;
                let spans = chunk_spans(size, chunking, CAP_BYTES).expect("layout");
                let chunks: Vec<ChunkInfo> = spans
                    .iter()
                    .map(|sp| ChunkInfo {
                        chunk_idx: sp.chunk_idx,
                        offset: sp.offset,
                        length: sp.length,
                        crc32: crc32(&data[sp.offset as usize..(sp.offset + sp.length) as usize]),
                        placement: vec![(sp.chunk_idx % 2) as u16],
                    })
                    .collect();
                if chunks.iter().map(|c| c.crc32).ne(chunk_crcs.iter().copied()) {
                    Msg::error(Status::ChecksumMismatch, "announced crcs do not match the data")
                } else {
                    let file_id = FileId::random()?;
                    let nodes = ["127.0.0.1:7701", "127.0.0.1:7702"]
                        .map(|addr| FileNode { id: Some(NodeId([addr.len() as u8; 16])), addr: addr.into() })
                        .to_vec();
                    let info = FileInfo { file_id, name, size, created_unix_ms: 1, chunking, origin, nodes, chunks };
                    files.insert(file_id, (info, data));
                    Msg::PutOk { file_id }
                }
            }
            Msg::Get { file_id } => {
                let Some((info, data)) = files.get(&file_id) else {
                    io_std::write_msg(&mut s, &not_found(file_id))?;
                    continue;
                };
                let mut data = data.clone();
                if let Fault::CorruptChunk(i) = fault {
                    data[info.chunks[i].offset as usize] ^= 0x20;
                }
                io_std::write_msg(&mut s, &Msg::GetOk(info.clone()))?;
                let stop = match fault {
                    Fault::FailAfter(n) => n,
                    _ => data.len(),
                };
                for piece in data[..stop].chunks(300_000) {
                    io_std::write_data(&mut s, piece)?;
                }
                if stop < data.len() {
                    Msg::error(Status::Unavailable, "node 127.0.0.1:7702 is down")
                } else {
                    Msg::End
                }
            }
            Msg::Stat { file_id } => match files.get(&file_id) {
                Some((info, _)) => Msg::StatOk(info.clone()),
                None => not_found(file_id),
            },
            Msg::List { after, .. } => {
                let rest: Vec<FileSummary> = files
                    .values()
                    .filter(|(info, _)| !matches!(after, Some(a) if info.file_id <= a))
                    .map(|(info, _)| FileSummary {
                        file_id: info.file_id,
                        name: info.name.clone(),
                        size: info.size,
                        created_unix_ms: info.created_unix_ms,
                        chunking: info.chunking,
                        n_chunks: info.chunks.len() as u32,
                        origin: info.origin,
                    })
                    .collect();
                let more = rest.len() > PAGE_FILES;
                Msg::ListOk { files: rest.into_iter().take(PAGE_FILES).collect(), more }
            }
            Msg::Delete { file_id } => match files.remove(&file_id) {
                Some(_) => Msg::Ok,
                None => not_found(file_id),
            },
            other => Msg::error(Status::BadRequest, format!("unexpected {}", other.kind().name())),
        };
        io_std::write_msg(&mut s, &reply)?;
    }
    Ok(())
}

fn not_found(file_id: FileId) -> Msg {
    Msg::error(Status::NotFound, format!("file {file_id} not found"))
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn put_get_stat_list_delete_round_trip() {
    let mut client = Client::connect(&Server::new(start(Fault::None, 1))).expect("connect");
    let data = sample(4 * CAP_BYTES as usize + 12_345);
    let big = client.put_bytes("big.bin", &data, Chunking::Dynamic, &mut ()).expect("put big");
    let empty = client.put_bytes("empty", &[], Chunking::Equal, &mut ()).expect("put empty");
    let small = client.put_bytes("small", b"abc", Chunking::Equal, &mut ()).expect("put small");

    let dir = tempfile::tempdir().expect("temp dir");
    for (id, expected) in [(big, &data[..]), (empty, &[][..]), (small, &b"abc"[..])] {
        let out = dir.path().join(id.to_string());
        client.get_to_path(id, &out, &mut ()).expect("get to path");
        assert_eq!(std::fs::read(&out).expect("read back"), expected);
        let mut buf = Vec::new();
        client.get_to_writer(id, &mut buf, &mut ()).expect("get to writer");
        assert_eq!(buf, expected);
    }
    assert_eq!(dir_entries(dir.path()).len(), 3, "no temporary files may be left");

    let info = client.stat(big).expect("stat");
    assert_eq!((info.size, info.chunks.len()), (data.len() as u64, 8));

    let mut listed: Vec<FileId> = client.list().expect("list").iter().map(|f| f.file_id).collect();
    let mut expected = vec![big, empty, small];
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "paging must return every file once");

    client.delete(small).expect("delete");
    let err = client.stat(small).expect_err("deleted file");
    assert!(matches!(err, ClientError::Remote { status: Status::NotFound, .. }), "{err}");
    assert_eq!(err.to_string(), format!("not found: file {small} not found"));
    // A refusal is a complete answer: the connection stays usable.
    assert_eq!(client.list().expect("list after refusal").len(), 2);
}

#[test]
fn corrupt_chunk_is_named_and_leaves_no_file() {
    let addr = start(Fault::CorruptChunk(2), 1);
    let mut client = Client::connect(&Server::new(addr.as_str())).expect("connect");
    let id = client.put_bytes("f", &sample(100_000), Chunking::Equal, &mut ()).expect("put");
    let dir = tempfile::tempdir().expect("temp dir");
    let err = client.get_to_path(id, &dir.path().join("out"), &mut ()).expect_err("corruption");
    assert!(matches!(err, ClientError::Integrity(IntegrityError::ChunkMismatch { chunk_idx: 2, .. })), "{err}");
    assert!(dir_entries(dir.path()).is_empty(), "left behind: {:?}", dir_entries(dir.path()));
    assert!(matches!(client.stat(id), Err(ClientError::Unusable)));
}

#[test]
fn error_mid_download_is_reported_and_leaves_no_file() {
    let addr = start(Fault::FailAfter(500_000), 1);
    let mut client = Client::connect(&Server::new(addr.as_str())).expect("connect");
    let id = client.put_bytes("f", &sample(2_000_000), Chunking::Equal, &mut ()).expect("put");
    let dir = tempfile::tempdir().expect("temp dir");
    let err = client.get_to_path(id, &dir.path().join("out"), &mut ()).expect_err("failure");
    assert_eq!(err.to_string(), "unavailable: node 127.0.0.1:7702 is down");
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn refused_upload_reports_the_engines_reason() {
    let mut client = Client::connect(&Server::new(start(Fault::RefusePut, 1))).expect("connect");
    // Far more than the socket buffers hold, so the writes fail once the engine hangs up.
    let err = client.put_bytes("f", &vec![0; 64 << 20], Chunking::Equal, &mut ()).expect_err("refused");
    assert!(matches!(err, ClientError::Remote { status: Status::NoSpace, .. }), "{err}");
}

fn cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dfs-client"))
        .arg("--server")
        .arg(addr)
        .args(args)
        .env_remove("DFS_SERVER")
        .output()
        .expect("run dfs-client");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn cli_put_prints_the_id_alone_and_get_writes_the_file() {
    let addr = start(Fault::None, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src.bin");
    std::fs::write(&src, sample(70_000)).expect("write source");
    let (code, stdout, stderr) = cli(&addr, &["put", src.to_str().expect("utf-8 path"), "--chunking", "dynamic"]);
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.strip_suffix('\n').expect("newline after the ID");
    assert!(id.parse::<FileId>().is_ok(), "{stdout:?}");

    let dst = dir.path().join("dst.bin");
    let (code, _, stderr) = cli(&addr, &["get", id, "-o", dst.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&dst).expect("read"), std::fs::read(&src).expect("read"));

    let (code, stdout, stderr) = cli(&addr, &["stat", id, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(json["name"], "src.bin");
    assert_eq!(json["chunking"], "dynamic");
}

#[test]
fn cli_errors_are_one_line_with_status_1() {
    // Nothing listens on a port freed just now.
    let addr = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").to_string();
    for args in [&["get", "not-an-id", "-o", "x"][..], &["stat", "0123456789abcdef0123456789abcdef"]] {
        let (code, stdout, stderr) = cli(&addr, args);
        assert_eq!(code, 1, "{args:?}");
        assert!(stdout.is_empty());
        assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1, "{stderr:?}");
    }
    let (_, _, stderr) = cli(&addr, &["rm", "XYZ"]);
    assert!(stderr.starts_with("error: malformed file ID"), "{stderr}");
}

/// Every file the engine at `addr` holds, over a new connection.
fn stored_files(addr: &str) -> Vec<FileSummary> {
    Client::connect(&Server::new(addr)).expect("connect").list().expect("list")
}

#[test]
fn cli_bench_get_prints_one_json_object_and_deletes_its_objects() {
    // One connection for the benchmark, one to check what it left behind.
    let addr = start(Fault::None, 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let hgrm = dir.path().join("latency.hgrm");
    let svg = dir.path().join("latency.svg");
    let (code, stdout, stderr) = cli(
        &addr,
        &[
            "put",
            "--bench",
            "--get",
            "--size",
            "100KiB",
            "--count",
            "5",
            "--chunking",
            "dynamic",
            "--json",
            "--hist-out",
            hgrm.to_str().expect("utf-8 path"),
            "--plot",
            svg.to_str().expect("utf-8 path"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON object on one line: {stdout:?}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
    let mut expected = [
        "op",
        "size_bytes",
        "count",
        "concurrency",
        "chunking",
        "elapsed_s",
        "bytes_total",
        "mib_s",
        "gib_s",
        "ops_s",
        "latency_us",
        "errors",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "serde_json sorts keys");
    assert_eq!(json["op"], "get");
    assert_eq!(json["size_bytes"], 100 * 1024);
    assert_eq!(json["count"], 5);
    assert_eq!(json["concurrency"], 1);
    assert_eq!(json["chunking"], "dynamic");
    assert_eq!(json["bytes_total"], 5 * 100 * 1024);
    assert_eq!(json["errors"], 0);
    let latency = &json["latency_us"];
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(latency[key].as_u64().is_some_and(|us| us > 0), "{key}: {latency}");
    }
    assert!(latency["mean"].as_f64().is_some_and(|us| us > 0.0), "{latency}");
    assert!(json["mib_s"].as_f64().is_some_and(|r| r > 0.0));

    let hgrm = std::fs::read_to_string(&hgrm).expect("read hgrm");
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"), "{hgrm}");
    assert!(hgrm.contains("#[Max     = ") && hgrm.contains("Total count    =            5]"), "{hgrm}");
    let svg = std::fs::read_to_string(&svg).expect("read svg");
    assert!(svg.starts_with("<svg") && svg.contains("get latency: 5 × 100 KiB, concurrency 1"), "{svg}");

    assert!(stored_files(&addr).is_empty(), "the benchmark's objects must be deleted");
}

#[test]
fn cli_bench_stops_at_the_first_failed_op_and_still_cleans_up() {
    // The benchmark's connection, the one that replaces it for clean-up, one to check.
    let addr = start(Fault::CorruptChunk(1), 3);
    let (code, stdout, stderr) = cli(&addr, &["put", "--bench", "--get", "--size", "10KiB", "--count", "4"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "no report after a failure: {stdout:?}");
    assert!(stderr.starts_with("error: op 0 failed: chunk 1 is corrupt"), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stored_files(&addr).is_empty(), "preloaded objects must be deleted after a failure");
}

#[test]
fn cli_bench_put_text_report_with_keep() {
    let addr = start(Fault::None, 2);
    let (code, stdout, stderr) = cli(&addr, &["put", "--bench", "--count", "3", "--size", "1000", "--keep"]);
    assert_eq!(code, 0, "{stderr}");
    for line in ["op            put", "size          1000 B (1000 bytes)", "count         3", "errors        0"] {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in\n{stdout}");
    }
    assert!(stdout.contains("objects       3 stored, kept"), "{stdout}");
    let kept = stored_files(&addr);
    assert_eq!(kept.len(), 3);
    assert!(kept.iter().all(|f| f.name.starts_with("dfs-bench-") && f.size == 1000), "{kept:?}");
}
