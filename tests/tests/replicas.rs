//! Replicas: with two copies of every chunk, a node killed in the middle of an upload or a
//! download, a deleted copy or a flipped byte in one copy cost nothing (on either node store); when every copy of
//! a chunk is gone, the error names the chunk and its nodes, and files with a surviving copy of
//! every chunk still read.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, chunk_id, mentions_chunk, pseudo_random_bytes, Cluster, ClusterOpts, Damage};
use std::collections::BTreeSet;
use std::io::Read;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn two_copies() -> ClusterOpts {
    ClusterOpts { replicas: Some(2), ..ClusterOpts::default() }
}

/// Waits until some node has a chunk being written (a temp file, or a segment record whose
/// header is on disk and whose seal is not yet) and returns that node.
fn node_mid_write(cluster: &Cluster, client: &mut std::process::Child) -> (usize, Vec<dfs_proto::ChunkId>) {
    dfs_tests::wait_for("a node to start writing a chunk", Duration::from_secs(60), || {
        let found =
            (0..cluster.n_nodes()).map(|n| (n, cluster.partial_copies(n))).find(|(_, partial)| !partial.is_empty());
        if found.is_none() {
            if let Ok(Some(status)) = client.try_wait() {
                panic!("the upload ended ({status}) before any node was seen writing a chunk");
            }
        }
        found
    })
}

#[test]
fn node_killed_mid_upload_costs_nothing_with_two_copies() {
    let mut cluster = Cluster::start(4, two_copies());
    // Large enough that each chunk takes a while to write, so the poller below sees one mid-way.
    let data = pseudo_random_bytes(11, 256 * MIB as usize);
    let input = cluster.write_input(&data);
    let mut client =
        cluster.spawn_client(["put".as_ref(), input.as_os_str(), "--name".as_ref(), "killed mid-upload".as_ref()]);
    // The node may already have finished a copy of another chunk: that copy is durable and
    // acknowledged, and stays recorded. The copy it was cut off in must go elsewhere.
    let (victim, cut_off) = node_mid_write(&cluster, &mut client);
    let victim_addr = cluster.node_addr(victim).to_string();
    cluster.kill_node(victim);
    let out = client.wait_with_output().expect("wait for the client");
    assert!(
        out.status.success(),
        "put with node {victim} killed mid-upload failed ({}); see the client log",
        out.status
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
    for chunk in &stat.chunks {
        let distinct: BTreeSet<&String> = chunk.nodes.iter().collect();
        assert_eq!(
            distinct.len(),
            2,
            "chunk {} of {id} must have 2 copies on distinct nodes: {:?}",
            chunk.index,
            chunk.nodes
        );
        let was_cut_off = cut_off.iter().any(|c| c.chunk_idx == chunk.index);
        assert!(
            !(was_cut_off && chunk.nodes.contains(&victim_addr)),
            "chunk {}, cut off on the killed node {victim_addr}, is recorded there",
            chunk.index
        );
    }
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} after a node died mid-upload: {e}"));
    assert_bytes_eq(&got, &data, "a file whose upload lost a node part-way");
    assert!(cluster.engine_alive(), "the engine died when a node was killed mid-upload");
}

#[test]
fn node_killed_mid_download_costs_nothing_with_two_copies() {
    // 1 MiB budget: the 128 MiB file is streamed with bounded read-ahead, so reading the first
    // MiB of output leaves chunk 0 (32 MiB) part-way through when its node dies.
    let mut cluster = Cluster::start(4, ClusterOpts { buffer_budget_bytes: Some(MIB), ..two_copies() });
    let data = pseudo_random_bytes(12, 128 * MIB as usize);
    let id = cluster.put_bytes(&data, "killed mid-download", Chunking::Equal);
    let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
    let first_copy = &stat.chunks[0].nodes[0];
    let victim = cluster.node_idx_of(first_copy).expect("stat names a cluster node");

    let mut client = cluster.spawn_client(["get", id.as_str(), "-o", "-"]);
    let mut stdout = client.stdout.take().expect("client stdout is piped");
    let mut got = vec![0u8; MIB as usize];
    stdout.read_exact(&mut got).expect("read the first MiB of the download");
    cluster.kill_node(victim);
    stdout.read_to_end(&mut got).expect("read the rest of the download");
    let status = client.wait().expect("wait for the client");
    assert!(status.success(), "get with node {victim} killed mid-download failed ({status}); see the client log");
    assert_bytes_eq(&got, &data, "a download that lost a node part-way");
}

#[test]
fn one_bad_copy_is_read_around_deleted_or_corrupt() {
    let cluster = Cluster::start(4, ClusterOpts { buffer_budget_bytes: Some(MIB), ..two_copies() });
    // A buffered file and a streamed one; in each, chunk 1 loses one copy and chunk 2 has a
    // byte flipped in one copy.
    for (what, size) in [("buffered", 300_000usize), ("streamed", 6 * MIB as usize)] {
        let data = pseudo_random_bytes(size as u64, size);
        let id = cluster.put_bytes(&data, what, Chunking::Equal);
        let deleted = cluster.find_copies(&id, 1);
        assert_eq!(deleted.len(), 2, "{what}: chunk 1 of {id} must have 2 copies: {deleted:?}");
        cluster.delete_copy(deleted[0], chunk_id(&id, 1));
        let flipped = cluster.find_copies(&id, 2);
        assert_eq!(flipped.len(), 2, "{what}: chunk 2 of {id} must have 2 copies: {flipped:?}");
        cluster.corrupt_copy(flipped[1], chunk_id(&id, 2), Damage::Data(size as u64 / 8 + 3));

        let got =
            cluster.get(&id).unwrap_or_else(|e| panic!("{what}: get {id} with one bad copy each of two chunks: {e}"));
        assert_bytes_eq(&got, &data, &format!("{what} file with one bad copy each of two chunks"));
        let got = cluster.get_stdout(&id).unwrap_or_else(|e| panic!("{what}: get {id} -o -: {e}"));
        assert_bytes_eq(&got, &data, &format!("{what} file to stdout with one bad copy each of two chunks"));
    }
}

#[test]
fn two_nodes_down_lose_only_chunks_with_both_copies_on_them() {
    let mut cluster = Cluster::start(6, ClusterOpts { buffer_budget_bytes: Some(MIB), ..two_copies() });
    let put = |i: u64| {
        let size = if i.is_multiple_of(2) { 200_000 } else { 3 * MIB as usize };
        let data = pseudo_random_bytes(100 + i, size);
        let id = cluster.put_bytes(&data, &format!("file-{i}"), Chunking::Equal);
        let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
        ((id, data), stat)
    };
    let (mut files, mut stats): (Vec<(String, Vec<u8>)>, Vec<_>) = (0..12).map(put).unzip();
    // Kill both nodes that hold chunk 2 of the first file.
    let dead: BTreeSet<String> = stats[0].chunks[2].nodes.iter().cloned().collect();
    assert_eq!(dead.len(), 2, "chunk 2 of {} must have two copies: {:?}", files[0].0, stats[0].chunks[2]);
    // Placement follows the random file ID: with six nodes, a file has a chunk on both dead nodes
    // with probability 2/3, so twelve files are all lost about once in a hundred runs. Put more
    // until one keeps a live copy of every chunk, so both outcomes are always tested.
    let is_lost = |stat: &dfs_tests::json::StatInfo| {
        stat.chunks.iter().any(|c| c.length > 0 && c.nodes.iter().all(|n| dead.contains(n)))
    };
    let mut i = files.len() as u64;
    while stats.iter().all(is_lost) {
        assert!(i < 200, "200 files and every one has a chunk on both of {dead:?}");
        let (file, stat) = put(i);
        files.push(file);
        stats.push(stat);
        i += 1;
    }
    for addr in &dead {
        let node_idx = cluster.node_idx_of(addr).expect("stat names a cluster node");
        cluster.kill_node(node_idx);
    }
    let (mut n_readable, mut n_lost) = (0, 0);
    for ((id, data), stat) in files.iter().zip(&stats) {
        let lost: Vec<u32> = stat
            .chunks
            .iter()
            .filter(|c| c.length > 0 && c.nodes.iter().all(|n| dead.contains(n)))
            .map(|c| c.index)
            .collect();
        if lost.is_empty() {
            n_readable += 1;
            let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id}, which has a live copy of every chunk: {e}"));
            assert_bytes_eq(&got, data, &format!("{id} with two nodes down"));
        } else {
            n_lost += 1;
            let line = cluster.get(id).err().unwrap_or_else(|| panic!("get {id} succeeded with chunks {lost:?} lost"));
            assert!(
                lost.iter().any(|&c| mentions_chunk(&line, id, c)),
                "get {id}: error must name one of {lost:?}: {line:?}"
            );
            assert!(
                dead.iter().all(|a| line.contains(a.as_str())),
                "get {id}: error must name both nodes {dead:?}: {line:?}"
            );
        }
    }
    assert!(n_lost >= 1 && n_readable >= 1, "expected both readable and lost files, got {n_readable} and {n_lost}");
}
