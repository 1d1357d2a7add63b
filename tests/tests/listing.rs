//! Listing and removal: every stored file is listed exactly once and reads back; a removed file is
//! gone from stat, ls, get and the nodes' disks.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, Cluster, ClusterOpts};
use std::collections::BTreeMap;
use std::time::Duration;

/// Client processes run at once in the many-files test.
const N_CLIENT_THREADS: usize = 4;

#[test]
fn hundred_files_are_all_listed_and_read_back() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let n_files = 100;
    let files: Vec<(String, Vec<u8>, Chunking)> = (0..n_files)
        .map(|i| {
            let chunking = if i % 2 == 0 { Chunking::Equal } else { Chunking::Dynamic };
            (format!("file-{i:03}"), pseudo_random_bytes(i as u64, (i * 37) % 3000), chunking)
        })
        .collect();
    // Uploads from several client processes at once.
    let ids: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..N_CLIENT_THREADS)
            .map(|w| {
                let (cluster, files) = (&cluster, &files);
                s.spawn(move || {
                    (w..n_files)
                        .step_by(N_CLIENT_THREADS)
                        .map(|i| (i, cluster.put_bytes(&files[i].1, &files[i].0, files[i].2)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids = vec![String::new(); n_files];
        for w in workers {
            for (i, id) in w.join().expect("upload worker panicked") {
                ids[i] = id;
            }
        }
        ids
    });
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), n_files, "the engine handed out duplicate file IDs");

    let listed = cluster.ls();
    let mut by_id: BTreeMap<&str, &dfs_tests::json::ListEntry> = BTreeMap::new();
    for e in &listed {
        assert!(by_id.insert(&e.id, e).is_none(), "ls lists {} twice", e.id);
    }
    assert_eq!(listed.len(), n_files, "ls must list exactly the {n_files} files put");
    for (i, id) in ids.iter().enumerate() {
        let entry = by_id.get(id.as_str()).unwrap_or_else(|| panic!("ls does not list {id} ({})", files[i].0));
        assert_eq!(entry.name, files[i].0, "ls name of {id}");
        assert_eq!(entry.size, files[i].1.len() as u64, "ls size of {id} ({})", files[i].0);
    }

    std::thread::scope(|s| {
        for w in 0..N_CLIENT_THREADS {
            let (cluster, files, ids) = (&cluster, &files, &ids);
            s.spawn(move || {
                for i in (w..n_files).step_by(N_CLIENT_THREADS) {
                    let got = cluster.get(&ids[i]).unwrap_or_else(|e| panic!("get {} ({}): {e}", ids[i], files[i].0));
                    assert_bytes_eq(&got, &files[i].1, &format!("get {} ({})", ids[i], files[i].0));
                }
            });
        }
    });
}

#[test]
fn rm_removes_the_file_from_stat_ls_and_get_and_keeps_the_others() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let files: Vec<(String, Vec<u8>)> =
        (0..3).map(|i| (format!("keep-or-rm-{i}"), pseudo_random_bytes(i, 5000 + i as usize))).collect();
    let ids: Vec<String> = files.iter().map(|(name, data)| cluster.put_bytes(data, name, Chunking::Equal)).collect();
    let removed = &ids[1];
    cluster.rm(removed).unwrap_or_else(|e| panic!("rm {removed}: {e}"));

    let stat_err = cluster.stat(removed).err().unwrap_or_else(|| panic!("stat {removed} succeeded after rm"));
    assert!(stat_err.to_lowercase().contains("not found"), "stat after rm must say not found, got {stat_err:?}");
    let get_err = cluster.get(removed).err().unwrap_or_else(|| panic!("get {removed} succeeded after rm"));
    assert!(get_err.to_lowercase().contains("not found"), "get after rm must say not found, got {get_err:?}");
    let rm_err = cluster.rm(removed).err().unwrap_or_else(|| panic!("a second rm {removed} succeeded"));
    assert!(rm_err.to_lowercase().contains("not found"), "a second rm must say not found, got {rm_err:?}");

    let listed: Vec<String> = cluster.ls().into_iter().map(|e| e.id).collect();
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    expected.sort();
    assert_eq!(listed_sorted, expected, "ls after rm {removed} must list exactly the two other files");
    for i in [0, 2] {
        let got = cluster.get(&ids[i]).unwrap_or_else(|e| panic!("get {} after rm of another file: {e}", ids[i]));
        assert_bytes_eq(&got, &files[i].1, &format!("get {} after rm of another file", ids[i]));
    }
}

#[test]
fn rm_deletes_the_chunk_files_on_the_nodes() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let data = pseudo_random_bytes(9, 100_000);
    let id = cluster.put_bytes(&data, "to be removed", Chunking::Equal);
    let kept = cluster.put_bytes(&data, "kept", Chunking::Equal);
    let n_before: usize = (0..4).map(|c| cluster.find_chunk_file(&id, c).len()).sum();
    assert_eq!(n_before, 8, "a 100000-byte file must have 2 copies of each of its 4 chunks before rm");
    cluster.rm(&id).unwrap_or_else(|e| panic!("rm {id}: {e}"));
    // The engine may delete chunks after it answers; nothing signals the end, so wait boundedly.
    dfs_tests::wait_until(
        &format!("the chunk files of {id} to leave the disks after rm"),
        Duration::from_secs(10),
        || (0..4).all(|c| cluster.find_chunk_file(&id, c).is_empty()),
    );
    let n_kept: usize = (0..4).map(|c| cluster.find_chunk_file(&kept, c).len()).sum();
    assert_eq!(n_kept, 8, "rm of one file removed chunk files of another");
}

#[test]
fn ls_sorts_filters_and_reverses() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    // (name, size), put in an order that is neither by name nor by size.
    let files = [("b-mid", 300usize), ("a-big", 5000), ("c-small", 10), ("other", 1)];
    for (name, size) in files {
        cluster.put_bytes(&pseudo_random_bytes(size as u64, size), name, Chunking::Equal);
        // Distinct creation times, for sorting by time (a fixed wait: time must pass).
        std::thread::sleep(Duration::from_millis(5));
    }
    let names = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["ls", "--json"];
        full.extend_from_slice(args);
        let out = cluster.client(&full);
        out.expect_success("ls");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ls --json prints JSON");
        v.as_array().expect("an array").iter().map(|e| e["name"].as_str().expect("name").to_string()).collect()
    };
    assert_eq!(names(&["--sort", "name"]), ["a-big", "b-mid", "c-small", "other"]);
    assert_eq!(names(&["--sort", "size"]), ["other", "c-small", "b-mid", "a-big"]);
    assert_eq!(names(&["--sort", "size", "--reverse"]), ["a-big", "b-mid", "c-small", "other"]);
    assert_eq!(names(&["--sort", "time"]), ["b-mid", "a-big", "c-small", "other"]);
    assert_eq!(names(&["--sort", "name", "--prefix", "b"]), ["b-mid"]);
    assert!(names(&["--prefix", "zzz"]).is_empty());
    // Text output to a pipe keeps exact byte sizes, for scripts.
    let out = cluster.client(["ls", "--sort", "size", "--prefix", "a-"]);
    let text = out.expect_success("ls").stdout_text();
    assert!(text.contains(" 5000 ") && text.contains("a-big"), "{text:?}");
    let bad = cluster.client(["ls", "--sort", "colour"]);
    assert!(!bad.success(), "an unknown sort key must be refused");
}
