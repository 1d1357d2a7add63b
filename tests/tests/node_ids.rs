//! Stable node IDs: a node keeps its identity in its data directory, proves it in the
//! authenticated handshake, and the engine finds its copies by that ID wherever it listens. A
//! node restarted on another address keeps every file readable; two nodes presenting one
//! identity are refused rather than confused.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, Cluster, ClusterOpts};

/// The (ID, address, up) of every node, as `status --json` shows them.
fn nodes(cluster: &Cluster) -> Vec<(String, String, bool)> {
    let (ok, status) = cluster.client_json(&["status"]);
    assert!(ok, "status failed: {status}");
    status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no node list: {status}"))
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap_or_else(|| panic!("node without an ID in status: {n}")).to_string();
            (id, n["addr"].as_str().expect("address").to_string(), n["up"].as_bool().expect("up"))
        })
        .collect()
}

#[test]
fn a_node_moved_to_another_address_keeps_its_files_readable() {
    // One copy of each chunk and the cluster secret: every file whose chunks touch node 1 reads
    // back only if the engine finds node 1 at its new address, through the proven ID.
    let opts = ClusterOpts { replicas: Some(1), cluster_secret: true, ..ClusterOpts::default() };
    let mut cluster = Cluster::start(4, opts);
    let files: Vec<(String, Vec<u8>)> = [0usize, 1, 4096, 3 << 20, 5_000_017]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let data = pseudo_random_bytes(i as u64 + 40, len);
            (cluster.put_bytes(&data, &format!("f{i}"), Chunking::Equal), data)
        })
        .collect();
    let before = nodes(&cluster);
    assert_eq!(before.len(), 4);
    let ids: std::collections::BTreeSet<&str> = before.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 4, "every node has an ID of its own: {before:?}");
    let old_addr = cluster.node_addr(1).to_string();
    let moved_id = before.iter().find(|(_, addr, _)| *addr == old_addr).expect("node 1 in status").0.clone();
    let on_node_1 = files
        .iter()
        .filter(|(id, _)| {
            let stat = cluster.stat(id).expect("stat");
            stat.raw["nodes"].as_array().is_some_and(|ns| ns.iter().any(|n| n["id"] == moved_id.as_str()))
        })
        .count();
    assert!(on_node_1 >= 2, "the test needs files with chunks on node 1; {on_node_1} have");

    cluster.kill_node(1);
    cluster.move_node(1);
    let new_addr = cluster.node_addr(1).to_string();
    cluster.restart_engine();

    for (id, data) in &files {
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} after node 1 moved to {new_addr}: {e}"));
        assert_bytes_eq(&got, data, "a file after its node moved");
    }
    let after = nodes(&cluster);
    assert!(
        after.iter().any(|(id, addr, up)| *id == moved_id && *addr == new_addr && *up),
        "status must show node {moved_id} up at {new_addr}: {after:?}"
    );
    let stat = cluster.stat(&files[4].0).expect("stat");
    let shown: Vec<(String, String)> = stat.raw["nodes"]
        .as_array()
        .expect("stat lists nodes")
        .iter()
        .map(|n| (n["id"].as_str().unwrap_or("").to_string(), n["addr"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(
        shown.iter().all(|(id, addr)| *id != moved_id || *addr == new_addr),
        "stat shows the moved node at its new address: {shown:?}"
    );
    // Nothing to repair: every copy is where the metadata says, by ID.
    let (ok, report) = cluster.client_json(&["repair"]);
    assert!(ok, "repair after the move: {report}");
    assert_eq!(report["n_copies_made"], 0, "{report}");
    assert_eq!(report["n_chunks_unrecoverable"], 0, "{report}");
    assert_eq!(report["n_chunks_unavailable"], 0, "{report}");
}

#[test]
fn two_nodes_presenting_one_identity_are_not_both_believed() {
    let mut cluster = Cluster::start(4, ClusterOpts { replicas: Some(2), ..ClusterOpts::default() });
    let data = pseudo_random_bytes(9, 1 << 20);
    let file = cluster.put_bytes(&data, "f", Chunking::Equal);
    let before = nodes(&cluster);
    // Node 3 is restarted on its address with a copy of node 2's identity (a data directory
    // cloned by hand), while node 2 is up.
    cluster.kill_node(3);
    let id_file = cluster.node_data_dir(3).join("node-id");
    std::fs::copy(cluster.node_data_dir(2).join("node-id"), &id_file).expect("copy node 2's ID");
    cluster.restart_node(3);
    let addr3 = cluster.node_addr(3).to_string();
    dfs_tests::wait_until("node 3 to be refused as a duplicate of node 2", std::time::Duration::from_secs(20), || {
        let (_, status) = cluster.client_json(&["status"]);
        let node3 = status["nodes"].as_array().and_then(|ns| ns.iter().find(|n| n["addr"] == addr3.as_str())).cloned();
        let node3 = node3.unwrap_or_else(|| panic!("node 3 missing from status: {status}"));
        let refused =
            node3["up"] == false && node3["last_error"].as_str().is_some_and(|e| e.contains("must not share"));
        if !refused {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        refused
    });
    // The real node 2 is untouched, and the file still reads.
    let id2 = before.iter().find(|(_, a, _)| a == cluster.node_addr(2)).expect("node 2").0.clone();
    assert!(nodes_with_id(&cluster, &id2).contains(&cluster.node_addr(2).to_string()));
    assert_bytes_eq(&cluster.get(&file).expect("get"), &data, "the file beside a duplicate node");
}

fn nodes_with_id(cluster: &Cluster, id: &str) -> Vec<String> {
    let (_, status) = cluster.client_json(&["status"]);
    status["nodes"]
        .as_array()
        .map(|ns| ns.iter().filter(|n| n["id"] == id).map(|n| n["addr"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

/// `status` right after a put counts the new copies: the engine asks every node for its counts
/// when it answers, rather than showing the pinger's last round (which showed 0 chunks and 0
/// bytes for a few seconds after a first put).
#[test]
fn status_right_after_a_put_counts_its_copies() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let data = pseudo_random_bytes(77, 3 << 20);
    cluster.put_bytes(&data, "fresh", Chunking::Equal);
    let (ok, status) = cluster.client_json(&["status"]);
    assert!(ok, "status failed: {status}");
    let reports: Vec<(u64, u64)> = status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no node list: {status}"))
        .iter()
        .map(|n| (n["report"]["n_chunks"].as_u64().unwrap_or(0), n["report"]["bytes_used"].as_u64().unwrap_or(0)))
        .collect();
    let n_chunks: u64 = reports.iter().map(|r| r.0).sum();
    assert_eq!(n_chunks, 8, "four chunks, two copies each, counted at once: {reports:?}");
    let used: u64 = reports.iter().map(|r| r.1).sum();
    assert!(used >= 2 * (3 << 20), "the copies' bytes are counted: {reports:?}");
}
