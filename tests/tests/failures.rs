//! Partial failures: a storage node that is down, or a chunk that rotted on disk, makes the one
//! request that needs it fail with an error naming what failed, leaves no output file behind,
//! and leaves every other file readable.

use dfs_proto::Chunking;
use dfs_tests::json::StatInfo;
use dfs_tests::{assert_bytes_eq, chunk_id, mentions_chunk, pseudo_random_bytes, Cluster, ClusterOpts, Damage, Store};
use std::collections::BTreeSet;
use std::fs;

const MIB: u64 = 1 << 20;

/// Both GET paths: a file under the budget is buffered, one over it is streamed.
fn budget_opts() -> ClusterOpts {
    ClusterOpts { buffer_budget_bytes: Some(MIB), chunk_size_max_bytes: Some(MIB), ..ClusterOpts::default() }
}

/// The indices of the non-empty chunks of `stat` that have no copy outside `dead` addresses.
fn chunks_lost(stat: &StatInfo, dead: &BTreeSet<String>) -> Vec<u32> {
    stat.chunks.iter().filter(|c| c.length > 0 && c.nodes.iter().all(|n| dead.contains(n))).map(|c| c.index).collect()
}

#[test]
fn get_with_a_node_down_names_the_chunk_and_node_and_leaves_no_output() {
    let mut cluster = Cluster::start(4, budget_opts());
    // A buffered file and a streamed one (6 MiB: 1.5 MiB chunks, so chunks 0 and 1 are sent
    // before chunk 2 is missed, and the partial output must be removed).
    let small = pseudo_random_bytes(1, 256 * 1024);
    let large = pseudo_random_bytes(2, 6 * MIB as usize);
    let small_id = cluster.put_bytes(&small, "small", Chunking::Equal);
    let large_id = cluster.put_bytes(&large, "large", Chunking::Equal);
    let small_stat = cluster.stat(&small_id).unwrap_or_else(|e| panic!("stat {small_id}: {e}"));
    let large_stat = cluster.stat(&large_id).unwrap_or_else(|e| panic!("stat {large_id}: {e}"));

    // Take down every node holding chunk 2 of the large file.
    let dead: BTreeSet<String> = large_stat.chunks[2].nodes.iter().cloned().collect();
    assert!(!dead.is_empty(), "chunk 2 of {large_id} has no node");
    for addr in &dead {
        let node_idx = cluster.node_idx_of(addr).expect("stat names a cluster node");
        cluster.kill_node(node_idx);
    }

    for (id, stat, what) in [(&small_id, &small_stat, "buffered"), (&large_id, &large_stat, "streamed")] {
        let lost = chunks_lost(stat, &dead);
        assert!(
            !lost.is_empty(),
            "{what} file {id}: killing {dead:?} should lose a chunk; the chunk table is {:?}",
            stat.chunks
        );
        // `get` checks exit status, the single `error:` line and that no file was left.
        let line = cluster.get(id).err().unwrap_or_else(|| panic!("{what} get {id} succeeded with {dead:?} down"));
        assert!(
            lost.iter().any(|&c| mentions_chunk(&line, id, c)),
            "{what} get {id}: the error must name a lost chunk (one of {lost:?}), got {line:?}"
        );
        assert!(
            dead.iter().any(|a| line.contains(a.as_str())),
            "{what} get {id}: the error must name the down node ({dead:?}), got {line:?}"
        );
        let line =
            cluster.get_stdout(id).err().unwrap_or_else(|| panic!("{what} get {id} -o - succeeded with {dead:?} down"));
        assert!(
            lost.iter().any(|&c| mentions_chunk(&line, id, c)),
            "{what} get {id} -o -: error must name a lost chunk, got {line:?}"
        );
    }
    assert!(cluster.engine_alive(), "the engine died while a node was down");
}

#[test]
fn put_with_a_node_down_places_its_copies_on_the_other_nodes() {
    for replicas in [1usize, 2] {
        let mut cluster = Cluster::start(4, ClusterOpts { replicas: Some(replicas), ..ClusterOpts::default() });
        cluster.kill_node(2);
        let down = cluster.node_addr(2).to_string();
        let data = pseudo_random_bytes(7, 300_000);
        let id = cluster
            .try_put_bytes(&data, "put while node 2 is down", Chunking::Equal)
            .unwrap_or_else(|out| panic!("R={replicas}: put with one node of four down failed: {}", out.describe()));
        let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
        for chunk in &stat.chunks {
            assert_eq!(chunk.nodes.len(), replicas, "R={replicas}: chunk {} copies: {:?}", chunk.index, chunk.nodes);
            assert!(!chunk.nodes.contains(&down), "R={replicas}: chunk {} placed on the down node", chunk.index);
            let distinct: BTreeSet<&String> = chunk.nodes.iter().collect();
            assert_eq!(distinct.len(), replicas, "R={replicas}: chunk {} copies share a node", chunk.index);
        }
        let got = cluster.get(&id).unwrap_or_else(|e| panic!("R={replicas}: get {id}: {e}"));
        assert_bytes_eq(&got, &data, "a file put while a node was down");
    }
}

#[test]
fn put_with_too_few_nodes_for_its_copies_fails_cleanly_and_earlier_files_survive() {
    let mut cluster = Cluster::start(4, ClusterOpts { replicas: Some(2), ..ClusterOpts::default() });
    let before: Vec<(String, Vec<u8>)> =
        (0..3).map(|i| (format!("before-{i}"), pseudo_random_bytes(i, 50_000))).collect();
    let before_ids: Vec<String> = before.iter().map(|(n, d)| cluster.put_bytes(d, n, Chunking::Equal)).collect();

    // One node left: two copies of a chunk cannot be placed.
    for node_idx in 1..4 {
        cluster.kill_node(node_idx);
    }
    let doomed = pseudo_random_bytes(99, 100_000);
    let out = match cluster.try_put_bytes(&doomed, "put with one node left", Chunking::Equal) {
        Err(out) => out,
        Ok(id) => panic!("put with 3 of 4 nodes down succeeded as {id} although every chunk needs 2 copies"),
    };
    let line = out.expect_error("put with 3 of 4 nodes down");
    // Either no two nodes accepted the chunk, or (when the engine still held connections to the
    // killed nodes) both copies failed as they were written.
    assert!(line.contains("2 copies"), "the error should say how many copies were needed, got {line:?}");
    assert!(
        (1..4).any(|i| line.contains(cluster.node_addr(i))),
        "the error should name a node that refused, got {line:?}"
    );
    assert!(out.stdout.is_empty(), "a failed put must not print an ID, got {:?}", out.stdout_text());
    assert!(cluster.engine_alive(), "the engine died on a put with nodes down");

    let listed = cluster.ls();
    assert!(listed.iter().all(|e| e.name != "put with one node left"), "ls lists the failed upload: {listed:?}");
    let mut listed_ids: Vec<String> = listed.iter().map(|e| e.id.clone()).collect();
    listed_ids.sort();
    let mut expected = before_ids.clone();
    expected.sort();
    assert_eq!(listed_ids, expected, "ls after the failed put must list exactly the earlier files");

    // With the nodes back on their addresses, the earlier files read back and uploads work again.
    for node_idx in 1..4 {
        cluster.restart_node(node_idx);
    }
    for ((name, data), id) in before.iter().zip(&before_ids) {
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} ({name}) after the nodes came back: {e}"));
        assert_bytes_eq(&got, data, &format!("get {id} ({name}) after the failed put"));
    }
    let id = cluster.put_bytes(&doomed, "put after the nodes are back", Chunking::Equal);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} after the nodes came back: {e}"));
    assert_bytes_eq(&got, &doomed, "a file put after the nodes came back");
}

#[test]
fn flipped_byte_in_a_chunk_file_fails_get_as_corrupt_naming_the_chunk() {
    let mut cluster = Cluster::start(4, budget_opts());
    // (what, file size, chunk to corrupt, where). The last case is a streamed GET whose second
    // block is bad, so the first block of that chunk has been sent before it is caught.
    let cases = [
        ("first data byte of chunk 0", 300_000usize, 0u32, Damage::Data(0)),
        ("middle data byte of chunk 1", 300_000, 1, Damage::Data(37_500)),
        ("last data byte of chunk 3", 300_000, 3, Damage::Data(74_999)),
        ("seal of chunk 2", 300_000, 2, Damage::Seal),
        ("second block of chunk 2, streamed", 6 * MIB as usize, 2, Damage::Data(MIB + 5)),
    ];
    let control = pseudo_random_bytes(1000, 300_000);
    let control_id = cluster.put_bytes(&control, "control", Chunking::Equal);
    let mut corrupted = Vec::new();
    for (i, (what, size, chunk_idx, damage)) in cases.into_iter().enumerate() {
        let data = pseudo_random_bytes(i as u64, size);
        let id = cluster.put_bytes(&data, what, Chunking::Equal);
        let copies = cluster.find_copies(&id, chunk_idx);
        assert!(!copies.is_empty(), "{what}: no copy of chunk {chunk_idx} of {id} on any node");
        // Corrupt every copy, so no replica can stand in.
        for &node_idx in &copies {
            cluster.corrupt_copy(node_idx, chunk_id(&id, chunk_idx), damage);
        }
        corrupted.push((what, id, chunk_idx, damage, copies));
    }
    let check = |cluster: &Cluster, what: &str, id: &str, chunk_idx: u32| {
        let line = cluster.get(id).err().unwrap_or_else(|| panic!("{what}: get {id} succeeded with a corrupt chunk"));
        assert!(line.to_lowercase().contains("corrupt"), "{what}: get {id}: error must say corrupt, got {line:?}");
        assert!(
            mentions_chunk(&line, id, chunk_idx),
            "{what}: get {id}: error must name chunk {chunk_idx}, got {line:?}"
        );
    };
    // A segment node keeps a record's block crc32s in memory and checks its seal only when it
    // starts: there, a record whose seal fails is skipped (it cannot be told from a torn write),
    // never served. So its seal cases are checked after the others, across a restart.
    let seal_on_segments = |c: &(&str, String, u32, Damage, Vec<usize>)| {
        matches!(c.3, Damage::Seal) && c.4.iter().any(|&n| cluster.node_store(n) == Store::Segments)
    };
    let (after_restart, now): (Vec<_>, Vec<_>) = corrupted.into_iter().partition(seal_on_segments);
    for (what, id, chunk_idx, _, _) in &now {
        check(&cluster, what, id, *chunk_idx);
    }
    let to_restart: BTreeSet<usize> = after_restart.iter().flat_map(|c| c.4.iter().copied()).collect();
    for &node_idx in &to_restart {
        cluster.kill_node(node_idx);
        cluster.restart_node(node_idx);
    }
    for (what, id, chunk_idx, _, copies) in &after_restart {
        let chunk = chunk_id(id, *chunk_idx);
        for &node_idx in copies {
            let log = fs::read_to_string(cluster.node_stderr_log(node_idx)).unwrap_or_default();
            assert!(
                log.lines().any(|l| l.contains(&chunk.to_string()) && l.contains("skipped")),
                "{what}: node {node_idx} did not log that it skipped its record of {chunk} at start-up:\n{log}"
            );
            assert!(
                !cluster.stored_chunk_ids(node_idx).contains(&chunk),
                "{what}: node {node_idx} still lists {chunk}, whose record's seal is broken"
            );
        }
        let line = cluster.get(id).err().unwrap_or_else(|| panic!("{what}: get {id} succeeded with a broken seal"));
        assert!(
            mentions_chunk(&line, id, *chunk_idx),
            "{what}: get {id}: error must name chunk {chunk_idx}, got {line:?}"
        );
    }
    let got =
        cluster.get(&control_id).unwrap_or_else(|e| panic!("get of the untouched control file {control_id}: {e}"));
    assert_bytes_eq(&got, &control, "the untouched control file");
}
