//! No path escapes: a chunk file replaced by a symlink to a file outside the data directory is
//! never followed, so its target's bytes are never served; the read goes to another copy, or
//! fails naming the chunk.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, mentions_chunk, pseudo_random_bytes, Cluster, ClusterOpts};
use std::fs;

/// The nodes run `--store files` whatever `DFS_STORE` says: the path this swaps for a symlink
/// is a chunk file's, which a node opens by name on every read. A segment node has no path per
/// chunk: it opens its few segment files once, at start-up (with O_NOFOLLOW), and reads every
/// chunk through those descriptors.
#[test]
fn a_chunk_file_swapped_for_a_symlink_is_not_followed() {
    for replicas in [1usize, 2] {
        let cluster = Cluster::start(
            4,
            ClusterOpts {
                replicas: Some(replicas),
                node_args: vec!["--store".into(), "files".into()],
                ..ClusterOpts::default()
            },
        );
        let data = pseudo_random_bytes(42, 400_000);
        let id = cluster.put_bytes(&data, "target", Chunking::Equal);
        // Outside every data directory: a file the same size as the chunk file, which would
        // pass a size check if it were followed.
        let copies = cluster.find_chunk_file(&id, 2);
        assert_eq!(copies.len(), replicas, "R={replicas}: copies of chunk 2: {copies:?}");
        let (_, chunk_path) = &copies[0];
        let outside = cluster.root().join("scratch").join("outside-secret");
        let len = fs::metadata(chunk_path).expect("stat chunk").len() as usize;
        fs::write(&outside, vec![b'S'; len]).expect("write outside file");
        fs::remove_file(chunk_path).expect("remove chunk file");
        std::os::unix::fs::symlink(&outside, chunk_path).expect("plant symlink");
        cluster.note(&format!("{} -> {}", chunk_path.display(), outside.display()));

        match (replicas, cluster.get(&id)) {
            (1, Ok(got)) => panic!("R=1: get {id} succeeded through a symlink ({} bytes)", got.len()),
            (1, Err(line)) => {
                assert!(mentions_chunk(&line, &id, 2), "R=1: the error must name chunk 2: {line:?}");
            }
            (_, Ok(got)) => assert_bytes_eq(&got, &data, "R=2: the file read from the other copy"),
            (_, Err(line)) => panic!("R=2: get {id} failed with a good copy left: {line}"),
        }
        let out = cluster.get_stdout(&id);
        if let Ok(bytes) = out {
            assert!(!bytes.windows(64).any(|w| w.iter().all(|&b| b == b'S')), "the symlink target's bytes were served");
        }
    }
}
