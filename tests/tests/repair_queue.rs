//! The repair queue, on real processes: chunks that a replaced node, a down node or a failed
//! read showed short of copies are repaired in the background, without a repair pass, and a
//! full pass afterwards finds nothing left to do.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, chunk_id, pseudo_random_bytes, Cluster, ClusterOpts, Damage};
use serde_json::Value;
use std::time::Duration;

/// Two copies, the queue turning every second, nodes pinged every second, no audit pass.
fn queued(after_down_secs: u64) -> ClusterOpts {
    let args = [
        "--repair-queue-secs",
        "1",
        "--ping-interval-secs",
        "1",
        "--repair-interval-secs",
        "0",
        "--repair-after-down-secs",
        &after_down_secs.to_string(),
    ];
    ClusterOpts { replicas: Some(2), engine_args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

fn put_files(cluster: &Cluster, n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|k| {
            let data = pseudo_random_bytes(100 + k, 64 * 1024 + k as usize * 1000);
            (cluster.put_bytes(&data, &format!("f{k}"), Chunking::Equal), data)
        })
        .collect()
}

/// Waits until the engine's status shows the queue empty with at least `settled` chunks
/// settled, and returns the queue's status.
fn wait_for_queue(cluster: &Cluster, settled: u64, within: Duration) -> Value {
    dfs_tests::wait_for(&format!("the repair queue to settle {settled} chunk(s) and empty"), within, || {
        let (ok, status) = cluster.client_json(&["status"]);
        assert!(ok, "status failed: {status}");
        let q = status.pointer("/repair_queue").cloned().unwrap_or_else(|| panic!("no repair_queue in {status}"));
        if u(&q, "/n_queued") == 0 && u(&q, "/n_settled") >= settled {
            return Some(q);
        }
        std::thread::sleep(Duration::from_millis(250));
        None
    })
}

/// How many chunks of `files` have a copy on node `node`'s disk.
fn chunks_on(cluster: &Cluster, files: &[(String, Vec<u8>)], node: usize) -> u64 {
    files.iter().map(|(id, _)| (0..4).filter(|&idx| cluster.find_copies(id, idx).contains(&node)).count() as u64).sum()
}

/// Every chunk of every file has two copies on the nodes' disks.
fn assert_two_copies_each(cluster: &Cluster, files: &[(String, Vec<u8>)]) {
    for (id, _) in files {
        for idx in 0..4 {
            let copies = cluster.find_copies(id, idx);
            assert_eq!(copies.len(), 2, "chunk {idx} of {id} is on nodes {copies:?}");
        }
    }
}

#[test]
fn a_replaced_node_gets_its_copies_back_from_the_queue_without_a_repair_pass() {
    let mut cluster = Cluster::start(4, queued(3600));
    let files = put_files(&cluster, 12);
    let replaced = 2;
    let lost = chunks_on(&cluster, &files, replaced);
    assert!(lost > 0, "node {replaced} holds no copy: the test proves nothing");
    cluster.kill_node(replaced);
    let wiped = cluster.root().join("nodes").join(format!("n{replaced}-new"));
    cluster.restart_node_with_data(replaced, wiped);

    // The engine learns the new ID at the next ping and queues what the old one held.
    let q = wait_for_queue(&cluster, lost, Duration::from_secs(60));
    assert_eq!(u(&q, "/n_copies_made"), lost, "one copy per chunk the replaced node held: {q}");
    assert_two_copies_each(&cluster, &files);
    // A full pass finds nothing left to do.
    let (ok, report) = cluster.client_json(&["repair"]);
    assert!(ok, "repair after the queue: {report}");
    assert_eq!(u(&report, "/n_copies_made"), 0, "the queue left work for the full pass: {report}");
    // And the copies are sound: every file reads with any other node gone.
    every_file_reads_with_one_more_node_down(&mut cluster, &files, 4, replaced);
}

/// With `except` as it is, each other node in turn is stopped and every file must read back
/// whole: every chunk has a sound copy off that node.
fn every_file_reads_with_one_more_node_down(
    cluster: &mut Cluster,
    files: &[(String, Vec<u8>)],
    n_nodes: usize,
    except: usize,
) {
    for other in (0..n_nodes).filter(|&n| n != except) {
        cluster.kill_node(other);
        for (id, data) in files {
            let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} with node {other} down too: {e}"));
            assert_bytes_eq(&got, data, id);
        }
        cluster.restart_node(other);
    }
}

#[test]
fn a_node_down_for_longer_than_the_wait_has_its_copies_made_elsewhere() {
    let mut cluster = Cluster::start(5, queued(2));
    let files = put_files(&cluster, 8);
    let down = 1;
    let on_it = chunks_on(&cluster, &files, down);
    assert!(on_it > 0, "node {down} holds no copy: the test proves nothing");
    cluster.kill_node(down);
    let q = wait_for_queue(&cluster, on_it, Duration::from_secs(60));
    assert_eq!(u(&q, "/n_copies_made"), on_it, "{q}");
    // Every file reads with a second node gone too: each chunk has two copies on live nodes.
    every_file_reads_with_one_more_node_down(&mut cluster, &files, 5, down);
}

#[test]
fn a_corrupt_copy_a_read_runs_into_is_set_aside_and_made_again() {
    let mut cluster = Cluster::start(4, queued(3600));
    let files = put_files(&cluster, 1);
    let (id, data) = &files[0];
    // The copy a read tries first: the first node of chunk 0's placement (all nodes are up).
    let (ok, info) = cluster.client_json(&["stat", id]);
    assert!(ok, "stat {id}: {info}");
    let addr = info.pointer("/chunks/0/nodes/0").and_then(Value::as_str).unwrap_or_else(|| panic!("{info}"));
    let damaged = cluster.node_idx_of(addr).unwrap_or_else(|| panic!("{addr} is none of the cluster's nodes"));
    cluster.corrupt_copy(damaged, chunk_id(id, 0), Damage::Data(100));

    let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} with one copy of chunk 0 damaged: {e}"));
    assert_bytes_eq(&got, data, id);
    let q = wait_for_queue(&cluster, 1, Duration::from_secs(30));
    assert_eq!(u(&q, "/n_copies_made"), 1, "{q}");
    // The node set the damaged copy aside when FETCH found it, and the queue made it again
    // there, from the sound copy.
    let set_aside: Vec<_> = cluster.set_aside_copies(damaged).into_iter().map(|(c, _)| c).collect();
    assert_eq!(set_aside, [chunk_id(id, 0)], "node {damaged} sets aside the copy FETCH found corrupt");
    let copies = cluster.find_copies(id, 0);
    assert_eq!(copies.len(), 2, "chunk 0 back to two copies: {copies:?}");
    assert!(copies.contains(&damaged), "the copy is made again on the node that lost it: {copies:?}");
    let other = *copies.iter().find(|&&n| n != damaged).expect("the other copy");
    cluster.kill_node(other);
    let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} from the copy made again: {e}"));
    assert_bytes_eq(&got, data, id);
}
