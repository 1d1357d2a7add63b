//! Uploads that fail part-way, driven at the protocol level: a client that announces a wrong
//! crc32, and a client that hangs up in the middle of its bytes. Neither may leave a listed file
//! or chunks on the nodes, and neither may disturb what was stored before.

use dfs_proto::io_std::{read_frame, write_msg, Frame};
use dfs_proto::layout::{chunk_spans, crc32};
use dfs_proto::{Chunking, Hello, Msg, Role, Status};
use dfs_tests::{pseudo_random_bytes, Cluster, ClusterOpts};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn handshake(addr: &str) -> (TcpStream, u64) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to engine {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("set timeout");
    write_msg(&mut s, &Msg::Hello(Hello::new(Role::Client))).expect("send Hello");
    match read_frame(&mut s).expect("read HelloOk") {
        Frame::Msg(Msg::HelloOk(h)) => (s, h.dynamic_chunk_cap_bytes),
        other => panic!("expected HelloOk, got {other:?}"),
    }
}

fn put_msg(name: &str, data: &[u8], cap: u64) -> Msg {
    let spans = chunk_spans(data.len() as u64, Chunking::Equal, cap).expect("layout");
    let chunk_crcs = spans.iter().map(|s| crc32(&data[s.offset as usize..(s.offset + s.length) as usize])).collect();
    Msg::Put { name: name.into(), size: data.len() as u64, chunking: Chunking::Equal, chunk_crcs, origin: None }
}

/// Waits (bounded) until the nodes hold exactly the chunks of `ids`, with nothing half
/// received: no temp file (files: a chunk being received; segments: a segment being made) and
/// no chunk record left without its seal (segments).
fn wait_for_chunks_of_only(cluster: &Cluster, ids: &[&str], why: &str) {
    let what = format!("the nodes to hold no chunk but those of {ids:?}, no temp file and no partial copy after {why}");
    dfs_tests::wait_until(&what, Duration::from_secs(10), || {
        let stray = (0..cluster.n_nodes())
            .flat_map(|n| cluster.stored_chunk_ids(n))
            .map(|id| id.to_string())
            .any(|c| !ids.iter().any(|id| c.starts_with(id)));
        let tmp_left = (0..cluster.n_nodes()).any(|n| !cluster.temp_files(n).is_empty());
        let partial = (0..cluster.n_nodes()).any(|n| !cluster.partial_copies(n).is_empty());
        !stray && !tmp_left && !partial
    });
}

#[test]
fn put_with_a_wrong_chunk_crc_is_refused_names_the_chunk_and_leaves_nothing() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let before = pseudo_random_bytes(1, 50_000);
    let kept = cluster.put_bytes(&before, "stored before", Chunking::Equal);

    let (mut s, cap) = handshake(cluster.engine_addr());
    let data = pseudo_random_bytes(2, 3 * 1024 * 1024 + 11);
    let Msg::Put { name, size, chunking, mut chunk_crcs, origin } = put_msg("bad crc", &data, cap) else {
        unreachable!()
    };
    chunk_crcs[2] ^= 1;
    write_msg(&mut s, &Msg::Put { name, size, chunking, chunk_crcs, origin }).expect("send Put");
    s.write_all(&data).expect("send body");
    match read_frame(&mut s).expect("read answer") {
        Frame::Msg(Msg::Error { status, message }) => {
            assert_eq!(status, Status::ChecksumMismatch, "status of a wrong crc32: {message}");
            assert!(message.contains("chunk 2"), "the error must name chunk 2: {message}");
        }
        other => panic!("a PUT with a wrong crc32 must be refused, got {other:?}"),
    }
    // The same connection still works: a correct upload goes through.
    write_msg(&mut s, &put_msg("good", &data, cap)).expect("send Put");
    s.write_all(&data).expect("send body");
    let good = match read_frame(&mut s).expect("read answer") {
        Frame::Msg(Msg::PutOk { file_id }) => file_id.to_string(),
        other => panic!("a correct PUT after a refused one must succeed, got {other:?}"),
    };
    drop(s);

    let mut listed: Vec<String> = cluster.ls().into_iter().map(|e| e.id).collect();
    listed.sort();
    let mut expected = vec![kept.clone(), good.clone()];
    expected.sort();
    assert_eq!(listed, expected, "only the two good files may be listed");
    wait_for_chunks_of_only(&cluster, &[&kept, &good], "the refused upload");
    assert_eq!(cluster.get(&kept).expect("file stored before"), before);
    assert_eq!(cluster.get(&good).expect("file stored after"), data);
}

#[test]
fn client_hanging_up_mid_upload_leaves_nothing_listed_and_no_chunks() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let before = pseudo_random_bytes(3, 10_000);
    let kept = cluster.put_bytes(&before, "stored before", Chunking::Equal);

    let (mut s, cap) = handshake(cluster.engine_addr());
    let data = pseudo_random_bytes(4, 8 * 1024 * 1024);
    write_msg(&mut s, &put_msg("abandoned", &data, cap)).expect("send Put");
    // Two full chunks and part of the third, then the client goes away.
    s.write_all(&data[..5 * 1024 * 1024 + 123]).expect("send part of the body");
    s.flush().expect("flush");
    drop(s);

    wait_for_chunks_of_only(&cluster, &[&kept], "the client hung up");
    let listed: Vec<String> = cluster.ls().into_iter().map(|e| e.id).collect();
    assert_eq!(listed, vec![kept.clone()], "an abandoned upload must not be listed");
    assert_eq!(cluster.get(&kept).expect("file stored before"), before);
}
