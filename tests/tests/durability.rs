//! An acknowledged upload is durable: `kill -9` of the engine loses no file, no name and no chunk
//! table, and the restarted engine serves and accepts files as before.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, Cluster, ClusterOpts};

const MIB: u64 = 1 << 20;

#[test]
fn engine_kill_9_and_restart_on_the_same_meta_keeps_every_file() {
    let mut cluster = Cluster::start(4, ClusterOpts { chunk_size_max_bytes: Some(MIB), ..Default::default() });
    let files: Vec<(String, Vec<u8>, Chunking)> = vec![
        ("empty".into(), Vec::new(), Chunking::Equal),
        ("five bytes".into(), pseudo_random_bytes(1, 5), Chunking::Equal),
        ("ünïcödé ../name".into(), pseudo_random_bytes(2, 4097), Chunking::Dynamic),
        ("one MiB and three".into(), pseudo_random_bytes(3, MIB as usize + 3), Chunking::Equal),
        ("dynamic five MiB".into(), pseudo_random_bytes(4, 5 * MIB as usize), Chunking::Dynamic),
    ];
    let mut stored = Vec::new();
    for (name, data, chunking) in &files {
        let id = cluster.put_bytes(data, name, *chunking);
        let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id} before the restart: {e}"));
        stored.push((id, stat));
    }
    cluster.restart_engine();
    // Twice: the first restart must also leave the metadata in a state a restart can open.
    for round in 1..=2 {
        let listed = cluster.ls();
        assert_eq!(
            listed.len(),
            files.len(),
            "after kill -9 #{round}: ls must list all {} files: {listed:?}",
            files.len()
        );
        for ((name, data, chunking), (id, stat_before)) in files.iter().zip(&stored) {
            let entry = listed
                .iter()
                .find(|e| e.id == *id)
                .unwrap_or_else(|| panic!("after kill -9 #{round}: ls lost {id} ({name:?})"));
            assert_eq!(entry.name, *name, "after kill -9 #{round}: ls name of {id}");
            let stat = cluster.stat(id).unwrap_or_else(|e| panic!("after kill -9 #{round}: stat {id} ({name:?}): {e}"));
            assert_eq!(
                stat.chunks, stat_before.chunks,
                "after kill -9 #{round}: chunk table of {id} ({name:?}) changed"
            );
            cluster.assert_stat_describes(id, &stat, data, name, *chunking);
            let got = cluster.get(id).unwrap_or_else(|e| panic!("after kill -9 #{round}: get {id} ({name:?}): {e}"));
            assert_bytes_eq(&got, data, &format!("after kill -9 #{round}: get {id} ({name:?})"));
        }
        if round == 1 {
            cluster.restart_engine();
        }
    }
    // The restarted engine accepts uploads, and one acknowledged right before a kill -9 survives it.
    let late = pseudo_random_bytes(5, 123_457);
    let late_id = cluster.put_bytes(&late, "put right before kill -9", Chunking::Equal);
    cluster.restart_engine();
    let got = cluster.get(&late_id).unwrap_or_else(|e| panic!("get {late_id} put right before kill -9: {e}"));
    assert_bytes_eq(&got, &late, "a file put right before kill -9");
    assert_eq!(cluster.ls().len(), files.len() + 1, "ls after the last restart");
}
