//! The node's segment store (`--store segments`) on real processes: what was acknowledged
//! survives a `kill -9` in the middle of a batch of writes, and a restarted node serves it from
//! the index it rebuilt. (Format, torn and corrupt records and gaps are covered by the unit
//! tests in `node/src/segments.rs`.)

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, Cluster, ClusterOpts};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

fn segments() -> ClusterOpts {
    ClusterOpts {
        replicas: Some(1),
        node_args: ["--store", "segments", "--segment-size", "4MiB"].iter().map(|s| s.to_string()).collect(),
        ..ClusterOpts::default()
    }
}

#[test]
fn acknowledged_records_survive_a_kill_9_in_the_middle_of_a_batch() {
    let mut cluster = Cluster::start(4, segments());
    let stored: Mutex<Vec<(String, Vec<u8>)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let n_failed = AtomicU64::new(0);
    std::thread::scope(|s| {
        for worker in 0..4u64 {
            let (cluster, stored, stop, n_failed) = (&cluster, &stored, &stop, &n_failed);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Small files and some that span segments, so records are cut at every size.
                    let size = if i % 5 == 4 { 3_000_000 } else { 1_000 + (i * 977 % 60_000) as usize };
                    let data = pseudo_random_bytes(worker * 1_000_000 + i, size);
                    match cluster.try_put_bytes(&data, &format!("w{worker}-{i}"), Chunking::Equal) {
                        Ok(id) => stored.lock().unwrap().push((id, data)),
                        Err(_) => {
                            n_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        // Not through `cluster`: the workers hold it. SIGKILL the node's process directly.
        let pid = cluster.pids().into_iter().find(|(l, _)| l == "node 0").map(|(_, p)| p).expect("node 0 runs");
        let killed = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -9 node 0");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let stored = stored.into_inner().unwrap();
    assert!(stored.len() >= 10, "too few uploads finished to test anything: {}", stored.len());
    // Uploads cut off by the kill fail; how many depends on timing, so it is only reported.
    cluster.note(&format!("{} upload(s) failed around the kill", n_failed.load(Ordering::Relaxed)));
    // The harness reaps the killed process and starts node 0 again on the same directory.
    cluster.kill_node(0);
    cluster.restart_node(0);
    for (id, data) in &stored {
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id}, acknowledged before the kill: {e}"));
        assert_bytes_eq(&got, data, id);
    }
}
