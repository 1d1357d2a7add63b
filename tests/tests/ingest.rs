//! Directory trees: `put -r` uploads a tree and records it in a manifest, a rerun resumes
//! (skipping what is stored unchanged, uploading what changed or is missing), `get -r` restores
//! the tree byte-identical, and a hostile manifest cannot write outside the target directory.

use dfs_tests::{pseudo_random_bytes, Cluster, ClusterOpts};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// Builds a tree with nested directories, empty and larger files, odd names, a symlink and a
/// fifo. Returns (relative path, contents) of its regular files.
fn make_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("top.txt".into(), b"top level\n".to_vec()),
        ("empty".into(), Vec::new()),
        ("a/b/c/deep.bin".into(), pseudo_random_bytes(1, 70_000)),
        ("a/big.bin".into(), pseudo_random_bytes(2, (3 << 20) + 17)),
        ("with space/ünïcödé name.txt".into(), "ünïcödé\n".as_bytes().to_vec()),
        ("a/b/empty too".into(), Vec::new()),
    ];
    for (rel, data) in &files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, data).expect("write");
    }
    std::os::unix::fs::symlink("top.txt", root.join("link-to-top")).expect("symlink");
    let fifo = root.join("a/fifo");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    files
}

fn json_run(cluster: &Cluster, args: &[&str]) -> (bool, Value) {
    let out = cluster.client(args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}): {}", out.describe()));
    (out.success(), v)
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn assert_tree_equals(restored: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        let got = fs::read(restored.join(rel)).unwrap_or_else(|e| panic!("restored {rel}: {e}"));
        assert!(got == *data, "restored {rel} differs ({} bytes, expected {})", got.len(), data.len());
    }
    let mut n_restored = 0;
    for entry in walk(restored) {
        assert!(entry.is_file(), "unexpected non-file {}", entry.display());
        n_restored += 1;
    }
    assert_eq!(n_restored, files.len(), "the restored tree has extra files");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_tree_round_trips_and_a_rerun_resumes() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let root = cluster.root().join("scratch").join("tree");
    let files = make_tree(&root);
    let manifest = cluster.root().join("scratch").join("manifest.jsonl");
    let (root_s, manifest_s) = (root.to_str().expect("utf-8"), manifest.to_str().expect("utf-8"));

    let (ok, first) = json_run(&cluster, &["put", "-r", root_s, "--manifest", manifest_s, "--jobs", "3", "--json"]);
    assert!(ok, "put -r failed: {first}");
    assert_eq!(n(&first, "files_done"), files.len() as u64, "{first}");
    assert_eq!(n(&first, "skipped_unchanged"), 0, "{first}");
    let skipped: Vec<(String, String)> = first["skipped_not_regular"]
        .as_array()
        .expect("skipped list")
        .iter()
        .map(|s| (s["path"].as_str().unwrap_or("").to_string(), s["kind"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(
        skipped,
        [("a/fifo".to_string(), "fifo".to_string()), ("link-to-top".to_string(), "symlink".to_string())]
    );
    assert_eq!(cluster.ls().len(), files.len(), "every regular file is stored once");

    let restored = cluster.root().join("scratch").join("restored");
    let restored_s = restored.to_str().expect("utf-8");
    let (ok, got) = json_run(&cluster, &["get", "-r", manifest_s, "-o", restored_s, "--json"]);
    assert!(ok, "get -r failed: {got}");
    assert_eq!(n(&got, "files_done"), files.len() as u64, "{got}");
    assert_tree_equals(&restored, &files);

    // An interruption: the manifest lost its last two lines, and the run died mid-line.
    let text = fs::read_to_string(&manifest).expect("read manifest");
    let lines: Vec<&str> = text.lines().collect();
    let kept = lines.len() - 2;
    let cut = format!("{}\n{}", lines[..kept].join("\n"), &lines[kept][..lines[kept].len() / 2]);
    fs::write(&manifest, cut).expect("truncate manifest");
    // And a file changed since.
    fs::write(root.join("top.txt"), b"top level, edited\n").expect("edit");
    let (ok, again) = json_run(&cluster, &["put", "-r", root_s, "--manifest", manifest_s, "--json"]);
    assert!(ok, "resumed put -r failed: {again}");
    // The two files whose lines were lost are still stored: they are found by name and bytes
    // and recorded, not stored twice. The edited file is uploaded again.
    let top_was_kept = lines[..kept].iter().any(|l| l.contains("\"top.txt\""));
    let expected_adopted = if top_was_kept { 2 } else { 1 };
    assert_eq!(n(&again, "files_done"), 1, "only the changed file is uploaded: {again}");
    assert_eq!(n(&again, "adopted"), expected_adopted, "files stored but not recorded are found: {again}");
    assert_eq!(n(&again, "skipped_unchanged"), files.len() as u64 - 1 - expected_adopted, "{again}");
    let listed = cluster.ls();
    assert_eq!(listed.len(), files.len() + 1, "only the edited file is stored a second time: {listed:?}");

    // The manifest now restores the edited tree.
    let restored2 = cluster.root().join("scratch").join("restored2");
    let (ok, got) = json_run(&cluster, &["get", "-r", manifest_s, "-o", restored2.to_str().expect("utf-8"), "--json"]);
    assert!(ok, "get -r after the resume failed: {got}");
    let mut edited = files.clone();
    edited[0].1 = b"top level, edited\n".to_vec();
    assert_tree_equals(&restored2, &edited);

    // Restoring over a differing file is refused without --force, and allowed with it.
    fs::write(restored2.join("top.txt"), b"local change\n").expect("write");
    let (ok, refused) =
        json_run(&cluster, &["get", "-r", manifest_s, "-o", restored2.to_str().expect("utf-8"), "--json"]);
    assert!(!ok, "get -r over a differing file succeeded: {refused}");
    assert_eq!(refused["failed"][0]["path"], "top.txt", "{refused}");
    assert_eq!(n(&refused, "skipped_unchanged"), files.len() as u64 - 1, "{refused}");
    let (ok, forced) =
        json_run(&cluster, &["get", "-r", manifest_s, "-o", restored2.to_str().expect("utf-8"), "--force", "--json"]);
    assert!(ok, "get -r --force failed: {forced}");
    assert_tree_equals(&restored2, &edited);
}

#[test]
fn a_hostile_manifest_cannot_write_outside_the_target() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let src = cluster.root().join("scratch").join("one.txt");
    fs::write(&src, b"payload").expect("write");
    let id =
        cluster.client(["put", src.to_str().expect("utf-8")]).expect_success("put").stdout_text().trim().to_string();
    let crc = dfs_proto::layout::crc32(b"payload");
    let target = cluster.root().join("scratch").join("target");
    for bad in ["../escaped.txt", "/tmp/escaped-abs.txt", "a/../../escaped2.txt"] {
        let manifest = cluster.root().join("scratch").join("hostile.jsonl");
        fs::write(
            &manifest,
            format!("{{\"path\":{bad:?},\"id\":\"{id}\",\"size\":7,\"crc32\":{crc},\"mtime_ns\":0}}\n"),
        )
        .expect("write manifest");
        let out =
            cluster.client(["get", "-r", manifest.to_str().expect("utf-8"), "-o", target.to_str().expect("utf-8")]);
        let line = out.expect_error(&format!("get -r with path {bad:?}"));
        assert!(line.contains("line 1"), "the error must name the manifest line: {line:?}");
    }
    for p in [cluster.root().join("scratch").join("escaped.txt"), PathBuf::from("/tmp/escaped-abs.txt")] {
        assert!(!p.exists(), "{} was written", p.display());
    }
    assert!(!cluster.root().join("escaped2.txt").exists());
}
