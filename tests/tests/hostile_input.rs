//! Hostile bytes on a server port: garbage, absurd length prefixes, a wrong magic, a header cut
//! in half. Each must end only the connection that carried it (closed, or answered with an Error
//! frame, within a few seconds); the process must stay up and keep serving everyone else.

use dfs_proto::io_std::{self, Frame};
use dfs_proto::layout::crc32;
use dfs_proto::{ChunkId, Chunking, FileId, Hello, Msg, Role, MAGIC, VERSION};
use dfs_tests::{
    assert_bytes_eq, frame_header, pseudo_random_bytes, raw_connect, send_and_expect_close, Closed, Cluster,
    ClusterOpts,
};
use std::io::Write;

const KIND_HELLO: u8 = 0x01;
const KIND_PUT: u8 = 0x10;
const KIND_GET: u8 = 0x12;
const KIND_FETCH: u8 = 0x22;
const KIND_CHUNK_LIST: u8 = 0x27;
const KIND_DATA: u8 = 0x30;

/// One hostile connection: what it is, the bytes it sends, whether it half-closes after them.
struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    half_close: bool,
}

fn case(what: &'static str, bytes: Vec<u8>) -> Case {
    Case { what, bytes, half_close: false }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = frame_header(body.len() as u32, kind);
    f.extend_from_slice(body);
    f
}

fn hello_body(magic: [u8; 4], role: u8, auth_len: u32) -> Vec<u8> {
    let mut b = magic.to_vec();
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.push(role);
    b.push(0);
    b.extend_from_slice(&auth_len.to_be_bytes());
    b
}

fn hello(role: Role) -> Vec<u8> {
    Msg::Hello(Hello::new(role)).encode()
}

/// Cases every server must survive; `role` is the Hello a well-behaved peer of it sends.
fn common_cases(role: Role) -> Vec<Case> {
    let mut garbage = pseudo_random_bytes(0xbad, 1024);
    // Kind 0xee is no frame kind, so the very first header is refused whatever the seed gives.
    garbage[4] = 0xee;
    let mut cut_hello = hello(role);
    cut_hello.truncate(9);
    vec![
        case("1 KiB of random bytes", garbage),
        case("Hello header with body length 0xFFFFFFFF", [frame_header(u32::MAX, KIND_HELLO), vec![0; 64]].concat()),
        case(
            "Data frame of length 0xFFFFFFFF as the first frame",
            [frame_header(u32::MAX, KIND_DATA), vec![0; 64]].concat(),
        ),
        case("Hello with wrong magic", frame(KIND_HELLO, &hello_body(*b"XXXX", role as u8, 0))),
        case(
            "Hello with an auth length prefix of 0xFFFFFFFF",
            frame(KIND_HELLO, &hello_body(MAGIC, role as u8, u32::MAX)),
        ),
        case("Hello with an unknown role", frame(KIND_HELLO, &hello_body(MAGIC, 9, 0))),
        Case { what: "half a frame header, then close", bytes: vec![0, 0, 0], half_close: true },
        Case { what: "a Hello cut short, then close", bytes: cut_hello, half_close: true },
        Case { what: "nothing, then close", bytes: Vec::new(), half_close: true },
    ]
}

/// Cases that follow a valid client Hello to the engine.
fn engine_cases() -> Vec<Case> {
    let name = b"x";
    let mut absurd_size = (name.len() as u32).to_be_bytes().to_vec();
    absurd_size.extend_from_slice(name);
    absurd_size.extend_from_slice(&(1u64 << 63).to_be_bytes());
    absurd_size.push(Chunking::Equal.code());
    absurd_size.extend_from_slice(&0u32.to_be_bytes());
    let mut absurd_name = 0xFFFF_FFF0u32.to_be_bytes().to_vec();
    absurd_name.extend_from_slice(&[0; 32]);
    vec![
        case("Put announcing a 2^63-byte file", [hello(Role::Client), frame(KIND_PUT, &absurd_size)].concat()),
        case(
            "Put with a name length prefix of 0xFFFFFFF0",
            [hello(Role::Client), frame(KIND_PUT, &absurd_name)].concat(),
        ),
        case("Get with a 3-byte body", [hello(Role::Client), frame(KIND_GET, &[1, 2, 3])].concat()),
        case(
            "Data frame of length 0xFFFFFFFF after Hello",
            [hello(Role::Client), frame_header(u32::MAX, KIND_DATA)].concat(),
        ),
        case("a second Hello after Hello", [hello(Role::Client), hello(Role::Client)].concat()),
    ]
}

/// Cases that follow a valid engine Hello to a node.
fn node_cases() -> Vec<Case> {
    let store =
        Msg::Store { chunk_id: ChunkId { file_id: FileId([0xab; 16]), chunk_idx: 0 }, length: u64::MAX, crc32: 0 };
    let mut absurd_limit = vec![0u8];
    absurd_limit.extend_from_slice(&u32::MAX.to_be_bytes());
    absurd_limit.extend_from_slice(&0u64.to_be_bytes()); // min age
    vec![
        case("a client Hello to a node", hello(Role::Client)),
        case("Store announcing a chunk of 2^64-1 bytes", [hello(Role::Engine), store.encode()].concat()),
        case(
            "ChunkList with a limit of 0xFFFFFFFF",
            [hello(Role::Engine), frame(KIND_CHUNK_LIST, &absurd_limit)].concat(),
        ),
        case("Fetch with a 3-byte body", [hello(Role::Engine), frame(KIND_FETCH, &[1, 2, 3])].concat()),
        case(
            "Data frame of length 0xFFFFFFFF after Hello",
            [hello(Role::Engine), frame_header(u32::MAX, KIND_DATA)].concat(),
        ),
    ]
}

fn send_cases(addr: &str, server: &str, cases: &[Case]) {
    for c in cases {
        let closed = send_and_expect_close(addr, &c.bytes, c.half_close, &format!("{server} sent {}", c.what));
        if let Closed::ErrorFrame(message) = &closed {
            eprintln!("{server} answered {} with an Error frame and kept the connection: {message}", c.what);
        }
    }
}

/// Stores a chunk on a node over the wire protocol and fetches it back.
fn node_store_and_fetch(addr: &str, chunk_id: ChunkId, data: &[u8]) {
    let mut s = raw_connect(addr);
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("set read timeout");
    io_std::write_msg(&mut s, &Msg::Hello(Hello::new(Role::Engine))).expect("send Hello");
    match io_std::read_frame(&mut s).expect("read HelloOk") {
        Frame::Msg(Msg::HelloOk(_)) => {}
        other => panic!("node answered Hello with {other:?}"),
    }
    io_std::write_msg(&mut s, &Msg::Store { chunk_id, length: data.len() as u64, crc32: crc32(data) })
        .expect("send Store");
    s.write_all(data).expect("send chunk bytes");
    match io_std::read_frame(&mut s).expect("read StoreOk") {
        Frame::Msg(Msg::StoreOk { .. }) => {}
        other => panic!("node answered Store with {other:?}"),
    }
    io_std::write_msg(&mut s, &Msg::Fetch { chunk_id, first_block: 0 }).expect("send Fetch");
    let length = match io_std::read_frame(&mut s).expect("read FetchOk") {
        Frame::Msg(Msg::FetchOk { length, .. }) => length,
        other => panic!("node answered Fetch with {other:?}"),
    };
    assert_eq!(length, data.len() as u64, "FetchOk length");
    let mut got = Vec::new();
    loop {
        match io_std::read_frame(&mut s).expect("read fetched frame") {
            Frame::Data(n) => {
                let mut buf = vec![0u8; n as usize];
                io_std::read_data(&mut s, &mut buf).expect("read Data body");
                got.extend_from_slice(&buf);
            }
            Frame::Msg(Msg::End) => break,
            Frame::Msg(other) => panic!("node sent {other:?} in the middle of a Fetch"),
        }
    }
    assert_bytes_eq(&got, data, &format!("chunk {chunk_id} fetched back from the node"));
}

#[test]
fn node_survives_garbage_and_absurd_lengths_and_keeps_serving() {
    let mut cluster = Cluster::start_nodes(1);
    let addr = cluster.node_addr(0).to_string();
    send_cases(&addr, "node", &common_cases(Role::Engine));
    send_cases(&addr, "node", &node_cases());
    assert!(cluster.node_alive(0), "the node process died after hostile input");
    let data = pseudo_random_bytes(5, 1_500_000);
    node_store_and_fetch(&addr, ChunkId { file_id: FileId([0x5a; 16]), chunk_idx: 3 }, &data);
    // The refused Store must not have left a chunk behind.
    let chunks: Vec<ChunkId> = cluster.chunk_files(0).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        chunks,
        [ChunkId { file_id: FileId([0x5a; 16]), chunk_idx: 3 }],
        "chunks on the node after hostile input"
    );
}

#[test]
fn engine_and_nodes_survive_garbage_and_absurd_lengths_and_keep_serving() {
    let mut cluster = Cluster::start(4, ClusterOpts::default());
    let before = pseudo_random_bytes(1, 10_000);
    let before_id = cluster.put_bytes(&before, "before the garbage", Chunking::Equal);
    let engine = cluster.engine_addr().to_string();
    let node = cluster.node_addr(0).to_string();
    send_cases(&engine, "engine", &common_cases(Role::Client));
    send_cases(&engine, "engine", &engine_cases());
    // Garbage on a node the engine is already using must not disturb the engine's connections.
    send_cases(&node, "node 0", &common_cases(Role::Engine));
    send_cases(&node, "node 0", &node_cases());
    assert!(cluster.engine_alive(), "the engine process died after hostile input");
    for n in 0..4 {
        assert!(cluster.node_alive(n), "node {n} died after hostile input");
    }
    let got = cluster.get(&before_id).unwrap_or_else(|e| panic!("get {before_id} after hostile input: {e}"));
    assert_bytes_eq(&got, &before, "a file put before the hostile input");
    let after = pseudo_random_bytes(2, 300_000);
    let id = cluster.put_bytes(&after, "after the garbage", Chunking::Equal);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} after hostile input: {e}"));
    assert_bytes_eq(&got, &after, "a file put after the hostile input");
}

#[test]
fn stalled_connections_do_not_block_other_clients() {
    let mut cluster = Cluster::start(4, ClusterOpts::default());
    let engine = cluster.engine_addr().to_string();
    let node = cluster.node_addr(1).to_string();
    // Held open for the whole test: one silent, one stuck after half a header, one stuck in the
    // middle of a Hello body; on the engine and on a node.
    let mut held = Vec::new();
    for addr in [&engine, &node] {
        held.push(raw_connect(addr));
        let mut s = raw_connect(addr);
        s.write_all(&[0, 0, 0]).expect("send half a header");
        held.push(s);
        let mut s = raw_connect(addr);
        s.write_all(&frame_header(100, KIND_HELLO)).expect("send a Hello header");
        held.push(s);
    }
    let data = pseudo_random_bytes(3, 200_000);
    let id = cluster.put_bytes(&data, "while others stall", Chunking::Equal);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} while other connections stall: {e}"));
    assert_bytes_eq(&got, &data, "a file put and read while other connections stall");
    assert!(cluster.engine_alive(), "the engine died");
    drop(held);
}

/// Sends `hello`, then `frame`, and returns the Error frame's message the server answers with;
/// the server must close the connection after it.
fn refused_after_hello(addr: &str, hello: Msg, frame: &Msg) -> String {
    let mut s = raw_connect(addr);
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("set read timeout");
    io_std::write_msg(&mut s, &hello).expect("send Hello");
    match io_std::read_frame(&mut s).expect("read HelloOk") {
        Frame::Msg(Msg::HelloOk(_)) => {}
        other => panic!("{addr} answered Hello with {other:?}"),
    }
    io_std::write_msg(&mut s, frame).expect("send the frame");
    let message = match io_std::read_frame(&mut s) {
        Ok(Frame::Msg(Msg::Error { status, message })) => {
            assert_eq!(status, dfs_proto::Status::BadRequest, "{message}");
            message
        }
        other => panic!("{addr} answered a {} frame with {other:?}", frame.kind().name()),
    };
    assert!(
        matches!(io_std::read_frame(&mut s), Err(dfs_proto::FrameError::Closed | dfs_proto::FrameError::Io(_))),
        "{addr} kept the connection open after refusing a {} frame",
        frame.kind().name()
    );
    message
}

#[test]
fn a_frame_of_the_other_connection_is_refused_at_its_header() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let store = Msg::Store { chunk_id: ChunkId { file_id: FileId([0xcd; 16]), chunk_idx: 0 }, length: 1, crc32: 0 };
    let message = refused_after_hello(cluster.engine_addr(), Msg::Hello(Hello::new(Role::Client)), &store);
    assert!(message.contains("a Store frame does not belong on this connection"), "{message}");
    let put = Msg::Put { name: "x".into(), size: 0, chunking: Chunking::Equal, chunk_crcs: vec![0; 4], origin: None };
    let message = refused_after_hello(cluster.node_addr(0), Msg::Hello(Hello::new(Role::Engine)), &put);
    assert!(message.contains("a Put frame does not belong on this connection"), "{message}");
    // Both still serve their own kind of connection.
    let data = pseudo_random_bytes(8, 5000);
    let id = cluster.put_bytes(&data, "after the wrong frames", Chunking::Equal);
    assert_bytes_eq(&cluster.get(&id).expect("get"), &data, "a file after wrong-connection frames");
}
