//! A file's name is data, never a path: any name is stored and shown exactly as given, and only
//! the file ID reaches the disk. IDs themselves are checked before they are used.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, random_file_id, walk_files, Cluster, ClusterOpts, Store};
use std::fs;
use std::path::Path;

#[test]
fn names_with_spaces_unicode_and_dot_dot_are_stored_as_given_and_never_become_paths() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    // A token no other file carries, so anything created from a name can be found.
    let token = format!("dfsname{}", &random_file_id()[..12]);
    let names = [
        format!("name with  spaces {token}.txt"),
        format!("ünïcödé 名前 🚀 {token}.bin"),
        format!("../../../{token}-escape"),
        format!("../{token}/../../{token}-climb"),
        format!("/tmp/{token}-absolute"),
        format!("a/b/{token}-nested"),
        format!("./.{token} hidden"),
        format!("..\\..\\{token}-backslash"),
    ];
    let mut stored = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let data = pseudo_random_bytes(i as u64, 1000 + i);
        let id = cluster.put_bytes(&data, name, Chunking::Equal);
        let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id} of {name:?}: {e}"));
        cluster.assert_stat_describes(&id, &stat, &data, name, Chunking::Equal);
        stored.push((id, name.clone(), data));
    }

    let listed = cluster.ls();
    for (id, name, data) in &stored {
        let entry = listed.iter().find(|e| e.id == *id).unwrap_or_else(|| panic!("ls does not list {id} ({name:?})"));
        assert_eq!(entry.name, *name, "ls shows the name of {id} differently");
        assert_eq!(entry.size, data.len() as u64, "ls size of {id} ({name:?})");
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} ({name:?}): {e}"));
        assert_bytes_eq(&got, data, &format!("get {id} ({name:?})"));
    }

    // Inside the test directory every file must be one the harness or a server owns by design:
    // engine metadata, logs, inputs, and in a node's data directory only what its store names
    // from IDs and sequence numbers: chunk files `chunks/<xx>/<chunk id>` (each checked by
    // `chunk_files`), or segments `segments/<seq>.seg` (and `.<seq>.seg.tmp`, a spare segment
    // being made, which holds no record yet).
    let root = cluster.root();
    for node_idx in 0..cluster.n_nodes() {
        let n_chunks = cluster.chunk_files(node_idx).len();
        assert!(n_chunks > 0, "node {node_idx} holds no chunks");
    }
    let is_seq = |s: &str| s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    for (path, _) in walk_files(root) {
        let rel = path.strip_prefix(root).expect("under the root");
        let text = rel.to_string_lossy();
        assert!(!text.contains(&token), "a file named after a user-given name exists: {}", path.display());
        let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        match top.as_str() {
            "logs" | "inputs" | "gets" | "meta" | "scratch" => {}
            "nodes" => {
                let parts: Vec<String> =
                    rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                let node_idx: usize = parts[1]
                    .strip_prefix('n')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{} is in no node's data directory", path.display()));
                let allowed = parts.len() == 3 && parts[2] == "node-id"
                    || match cluster.node_store(node_idx) {
                        Store::Files => parts.len() == 5 && parts[2] == "chunks",
                        Store::Segments => {
                            let name = parts.last().map(String::as_str).unwrap_or("");
                            let made = name.strip_prefix('.').and_then(|n| n.strip_suffix(".seg.tmp"));
                            parts.len() == 4
                                && parts[2] == "segments"
                                && (name.strip_suffix(".seg").is_some_and(is_seq) || made.is_some_and(is_seq))
                        }
                    };
                assert!(
                    allowed,
                    "unexpected file in a node data directory: {} (only node-id, chunks/<xx>/<chunk id>, or segments/<seq>.seg, may hold files once puts are done)",
                    path.display()
                );
            }
            _ => panic!("unexpected file outside the expected directories: {}", path.display()),
        }
    }
    // Outside it: nothing named after the token next to the test directory or above it.
    let mut dir: Option<&Path> = root.parent();
    for _ in 0..3 {
        let Some(d) = dir else { break };
        if let Ok(entries) = fs::read_dir(d) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(!name.contains(&token), "a user-given name escaped to {}", e.path().display());
            }
        }
        dir = d.parent();
    }
}

#[test]
fn unknown_well_formed_id_is_reported_not_found() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let stored = pseudo_random_bytes(1, 777);
    let stored_id = cluster.put_bytes(&stored, "present", Chunking::Equal);
    let unknown = random_file_id();
    let errors = [
        ("get", cluster.get(&unknown).map(|_| ())),
        ("get -o -", cluster.get_stdout(&unknown).map(|_| ())),
        ("stat", cluster.stat(&unknown).map(|_| ())),
        ("rm", cluster.rm(&unknown)),
    ];
    for (what, res) in errors {
        let line = res.err().unwrap_or_else(|| panic!("{what} of unknown ID {unknown} succeeded"));
        assert!(
            line.to_lowercase().contains("not found"),
            "{what} of unknown ID {unknown}: error must say not found, got {line:?}"
        );
    }
    let got = cluster.get(&stored_id).unwrap_or_else(|e| panic!("get {stored_id} after the not-found requests: {e}"));
    assert_bytes_eq(&got, &stored, "the stored file after the not-found requests");
}

#[test]
fn malformed_ids_are_refused_with_a_clear_error() {
    let mut cluster = Cluster::start(4, ClusterOpts::default());
    let valid = random_file_id();
    let malformed = [
        "xyz".to_string(),
        "../etc".to_string(),
        "../../../../etc/passwd".to_string(),
        valid.to_uppercase(),
        valid[..31].to_string(),
        format!("{valid}0"),
        format!("{}g", &valid[..31]),
        format!("{valid}.00000000"),
        " ".to_string(),
    ];
    for bad in &malformed {
        for (what, res) in
            [("get", cluster.get(bad).map(|_| ())), ("stat", cluster.stat(bad).map(|_| ())), ("rm", cluster.rm(bad))]
        {
            let line = res.err().unwrap_or_else(|| panic!("{what} of malformed ID {bad:?} succeeded"));
            let lower = line.to_lowercase();
            assert!(
                lower.contains("malformed") || lower.contains("invalid"),
                "{what} of malformed ID {bad:?}: error must say the ID is malformed or invalid, got {line:?}"
            );
        }
    }
    assert!(cluster.engine_alive(), "the engine died while refusing malformed IDs");
    let data = pseudo_random_bytes(2, 4097);
    let id = cluster.put_bytes(&data, "after malformed", Chunking::Equal);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} after malformed IDs: {e}"));
    assert_bytes_eq(&got, &data, "a file put after the malformed IDs");
}
