//! Directory trees: `put -r` uploads a tree and records it in a manifest, a rerun resumes
//! (skipping what is stored unchanged, uploading what changed, is missing from the manifest or
//! gone from the engine), `get -r` restores the tree byte-identical, and a hostile manifest
//! cannot write outside the target directory. Also the command line around them: misuse,
//! completions and man pages.

use dfs_tests::{pseudo_random_bytes, Cluster, ClusterOpts};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Builds a tree with nested directories, empty and few-MiB files, names with spaces and
/// unicode, a symlink and a fifo. Returns (relative path, contents) of its regular files.
fn make_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("top.txt".into(), b"top level\n".to_vec()),
        ("empty".into(), Vec::new()),
        ("a/b/c/deep.bin".into(), pseudo_random_bytes(1, 70_000)),
        ("a/big.bin".into(), pseudo_random_bytes(2, (3 << 20) + 17)),
        ("a/b/empty too".into(), Vec::new()),
        ("with space/ünïcödé name.txt".into(), "ünïcödé\n".as_bytes().to_vec()),
        ("with space/日本語 ファイル".into(), pseudo_random_bytes(3, 4097)),
    ];
    write_files(root, &files);
    std::os::unix::fs::symlink("top.txt", root.join("link-to-top")).expect("symlink");
    mkfifo(&root.join("a/fifo"));
    files
}

fn write_files(root: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, data).expect("write");
    }
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {} failed", path.display());
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Runs the client and parses the JSON summary it prints on stdout.
fn json_run(cluster: &Cluster, args: &[&str]) -> (bool, Value) {
    let out = cluster.client(args);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}): {}", out.describe()));
    (out.success(), v)
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn pairs(v: &Value, list: &str, a: &str, b: &str) -> Vec<(String, String)> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {v}"))
        .iter()
        .map(|e| (e[a].as_str().unwrap_or("").to_string(), e[b].as_str().unwrap_or("").to_string()))
        .collect()
}

/// The manifest's entries, last line per path winning: path → (id, line). Lines without a
/// path (the header naming the manifest's identity) are not entries.
fn manifest_entries(path: &Path) -> BTreeMap<String, (String, String)> {
    let text = fs::read_to_string(path).expect("read manifest");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok().map(|v| (v, l)))
        .filter(|(v, _)| v.get("path").is_some())
        .map(|(v, l)| {
            (v["path"].as_str().expect("path").to_string(), (v["id"].as_str().expect("id").to_string(), l.to_string()))
        })
        .collect()
}

/// The manifest's header line, which names its identity: the origin its uploads carry.
fn manifest_header(path: &Path) -> (String, String) {
    let text = fs::read_to_string(path).expect("read manifest");
    let line = text.lines().find(|l| l.contains("\"dfs_manifest\"")).unwrap_or_else(|| panic!("no header in {text}"));
    let v: Value = serde_json::from_str(line).expect("the header is JSON");
    (v["origin"].as_str().expect("origin").to_string(), line.to_string())
}

/// Rewrites a manifest as its header followed by `lines`, as a crash that lost the others would
/// leave it.
fn rewrite_manifest(path: &Path, lines: &[&str]) {
    let (_, header) = manifest_header(path);
    let text: String =
        std::iter::once(header.as_str()).chain(lines.iter().copied()).map(|l| format!("{l}\n")).collect();
    fs::write(path, text).expect("rewrite manifest");
}

/// Every file under `restored` is one of `files`, with the same bytes, and every one of
/// `files` is there.
fn assert_tree_equals(restored: &Path, files: &[(String, Vec<u8>)]) {
    for (rel, data) in files {
        let got = fs::read(restored.join(rel)).unwrap_or_else(|e| panic!("restored {rel}: {e}"));
        assert!(got == *data, "restored {rel} differs ({} bytes, expected {})", got.len(), data.len());
    }
    let found = walk(restored);
    assert_eq!(found.len(), files.len(), "the restored tree has other files: {found:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let meta = fs::symlink_metadata(&p).expect("lstat");
        if meta.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_tree_round_trips_byte_identical_and_odd_files_are_reported() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("tree");
    let files = make_tree(&root);
    let manifest = scratch.join("manifest.jsonl");

    let (ok, first) = json_run(&cluster, &["put", "-r", s(&root), "--manifest", s(&manifest), "--jobs", "3", "--json"]);
    assert!(ok, "put -r failed: {first}");
    assert_eq!(n(&first, "files_done"), files.len() as u64, "{first}");
    assert_eq!(n(&first, "bytes_done"), files.iter().map(|f| f.1.len() as u64).sum::<u64>(), "{first}");
    assert_eq!(n(&first, "skipped_unchanged"), 0, "{first}");
    assert_eq!(first["failed"], Value::Array(vec![]), "{first}");
    assert_eq!(
        pairs(&first, "skipped_not_regular", "path", "kind"),
        [("a/fifo".to_string(), "fifo".to_string()), ("link-to-top".to_string(), "symlink".to_string())]
    );
    // Each file is stored once, under its relative path.
    let mut names: Vec<String> = cluster.ls().into_iter().map(|e| e.name).collect();
    names.sort();
    let mut expected: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(manifest_entries(&manifest).len(), files.len());

    let restored = scratch.join("restored");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--jobs", "2", "--json"]);
    assert!(ok, "get -r failed: {got}");
    assert_eq!(n(&got, "files_done"), files.len() as u64, "{got}");
    assert_tree_equals(&restored, &files);

    // Again: everything is already in place.
    let (ok, again) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(ok, "second get -r failed: {again}");
    assert_eq!((n(&again, "files_done"), n(&again, "skipped_unchanged")), (0, files.len() as u64), "{again}");

    // A differing file is refused without --force, and replaced with it; the rest is left alone.
    fs::write(restored.join("top.txt"), b"local change\n").expect("write");
    let (ok, refused) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(!ok, "get -r over a differing file succeeded: {refused}");
    assert_eq!(refused["failed"][0]["path"], "top.txt", "{refused}");
    assert!(refused["failed"][0]["error"].as_str().unwrap_or("").contains("--force"), "{refused}");
    assert_eq!(fs::read(restored.join("top.txt")).expect("read"), b"local change\n", "refused, yet replaced");
    assert_eq!(n(&refused, "skipped_unchanged"), files.len() as u64 - 1, "{refused}");
    let (ok, forced) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--force", "--json"]);
    assert!(ok, "get -r --force failed: {forced}");
    assert_eq!(n(&forced, "files_done"), 1, "{forced}");
    assert_tree_equals(&restored, &files);

    // ls over the tree's names: by prefix, sorted by size.
    let out = cluster.client(["ls", "--json", "--prefix", "a/", "--sort", "size", "--reverse"]);
    let v: Value = serde_json::from_slice(&out.expect_success("ls").stdout).expect("ls --json prints JSON");
    let listed: Vec<&str> = v.as_array().expect("array").iter().map(|e| e["name"].as_str().expect("name")).collect();
    assert_eq!(listed, ["a/big.bin", "a/b/c/deep.bin", "a/b/empty too"]);
}

#[test]
fn a_rerun_uploads_only_what_is_missing_changed_or_gone_from_the_engine() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("tree");
    let mut files = make_tree(&root);
    let manifest = scratch.join("manifest.jsonl");
    let put = ["put", "-r", s(&root), "--manifest", s(&manifest), "--json"];
    let (ok, first) = json_run(&cluster, &put);
    assert!(ok, "put -r failed: {first}");
    let entries = manifest_entries(&manifest);

    // An interruption: the manifest lost the lines of two files, and the run died mid-line.
    let lost = ["a/big.bin", "empty"];
    let kept: Vec<&str> =
        entries.iter().filter(|(p, _)| !lost.contains(&p.as_str())).map(|(_, e)| e.1.as_str()).collect();
    rewrite_manifest(&manifest, &kept);
    let half = &entries["a/big.bin"].1[..30];
    fs::OpenOptions::new()
        .append(true)
        .open(&manifest)
        .and_then(|mut f| f.write_all(half.as_bytes()))
        .expect("cut line");
    // A file changed since (new contents, a later modification time).
    let edited = b"top level, edited\n".to_vec();
    fs::write(root.join("top.txt"), &edited).expect("edit");
    let later = SystemTime::now() + Duration::from_secs(10);
    fs::File::options().write(true).open(root.join("top.txt")).expect("open").set_modified(later).expect("touch");
    files[0].1 = edited.clone();
    // And one the engine no longer has.
    let gone = &entries["a/b/c/deep.bin"].0;
    cluster.rm(gone).unwrap_or_else(|e| panic!("rm {gone}: {e}"));

    let (ok, again) = json_run(&cluster, &put);
    assert!(ok, "resumed put -r failed: {again}");
    // The two whose lines were lost are still stored: found by name and bytes and recorded
    // (adopted), not stored twice. The changed one and the gone one are uploaded.
    assert_eq!(n(&again, "files_done"), 2, "1 changed + 1 gone are uploaded: {again}");
    assert_eq!(n(&again, "adopted"), 2, "the 2 unrecorded but stored files are found: {again}");
    assert_eq!(n(&again, "skipped_unchanged"), files.len() as u64 - 4, "{again}");
    assert_eq!(n(&again, "bytes_done"), edited.len() as u64 + 70_000, "only the bytes of those files move: {again}");
    assert_eq!(cluster.ls().len(), files.len() + 1, "only the edited file is stored a second time");

    // The manifest's newer lines supersede the old: it restores the edited tree.
    let restored = scratch.join("restored");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(ok, "get -r after the resume failed: {got}");
    assert_tree_equals(&restored, &files);

    // A third run has nothing to do; its text summary goes to stderr.
    let out = cluster.client(["put", "-r", s(&root), "--manifest", s(&manifest)]);
    out.expect_success("third put -r");
    assert!(out.stdout.is_empty(), "without --json nothing goes to stdout: {}", out.describe());
    assert!(out.stderr.contains("uploaded 0 files"), "{}", out.describe());
    assert!(out.stderr.contains(&format!("{} unchanged", files.len())), "{}", out.describe());
    assert!(out.stderr.contains("skipped a/fifo (fifo)"), "{}", out.describe());
}

/// Issue 10, item 4: a rerun adopted a file that another manifest's run had stored under the
/// same path with the same bytes, so removing that other copy broke this manifest's restore.
#[test]
fn a_rerun_never_adopts_a_file_that_another_manifest_stored() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let (tree_a, tree_b) = (scratch.join("A"), scratch.join("B"));
    let y = pseudo_random_bytes(41, 20_000);
    write_files(&tree_a, &[("x".into(), b"only in A".to_vec()), ("y".into(), y.clone())]);
    let files_b: Vec<(String, Vec<u8>)> = vec![("z".into(), b"only in B".to_vec())];
    write_files(&tree_b, &files_b);
    let (manifest_a, manifest_b) = (scratch.join("mA.jsonl"), scratch.join("mB.jsonl"));
    let put_a = ["put", "-r", s(&tree_a), "--manifest", s(&manifest_a), "--json"];
    let put_b = ["put", "-r", s(&tree_b), "--manifest", s(&manifest_b), "--json"];

    let (ok, v) = json_run(&cluster, &put_a);
    assert!(ok, "put -r A failed: {v}");
    let (ok, v) = json_run(&cluster, &put_b);
    assert!(ok, "put -r B failed: {v}");
    fs::copy(tree_a.join("y"), tree_b.join("y")).expect("cp A/y B/y");
    let (ok, again) = json_run(&cluster, &put_b);
    assert!(ok, "second put -r B failed: {again}");
    assert_eq!(n(&again, "adopted"), 0, "A's copy of y belongs to mA, not to mB: {again}");
    assert_eq!(n(&again, "files_done"), 1, "y is uploaded for B: {again}");

    let id_a = manifest_entries(&manifest_a)["y"].0.clone();
    let id_b = manifest_entries(&manifest_b).get("y").unwrap_or_else(|| panic!("mB does not record y")).0.clone();
    assert_ne!(id_a, id_b, "mB recorded the file ID that mA recorded for y");
    cluster.rm(&id_a).unwrap_or_else(|e| panic!("rm {id_a}: {e}"));

    let restored = scratch.join("restored-B");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest_b), "-o", s(&restored), "--json"]);
    assert!(ok, "get -r mB after removing A's y failed: {got}");
    let mut expected = files_b.clone();
    expected.push(("y".into(), y));
    assert_tree_equals(&restored, &expected);
}

/// A run killed after it stored files but before it wrote its first entry line: its manifest
/// holds only the header, written (and synced) before the first upload, and that is enough for
/// the rerun to adopt what the run stored. The kill is simulated by cutting the manifest back to
/// its header, since no signal lands reliably between an upload's commit and its line.
#[test]
fn a_run_killed_before_its_first_entry_line_has_its_files_adopted() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("tree");
    let files: Vec<(String, Vec<u8>)> =
        (0..5).map(|i| (format!("d/f{i}"), pseudo_random_bytes(300 + i, 3000 + i as usize))).collect();
    write_files(&root, &files);
    let manifest = scratch.join("m.jsonl");
    let put = ["put", "-r", s(&root), "--manifest", s(&manifest), "--json"];
    let (ok, first) = json_run(&cluster, &put);
    assert!(ok, "put -r failed: {first}");
    let (origin, _) = manifest_header(&manifest);
    let first_line = fs::read_to_string(&manifest).expect("read").lines().next().map(str::to_string);
    assert!(first_line.is_some_and(|l| l.contains(&origin)), "the header is not the manifest's first line");
    // Every upload carried the manifest's identity.
    let out = cluster.client(["ls", "--json"]);
    let listed: Value = serde_json::from_slice(&out.expect_success("ls").stdout).expect("ls --json prints JSON");
    for f in listed.as_array().expect("array") {
        assert_eq!(f["origin"], Value::from(origin.as_str()), "{f}");
    }

    rewrite_manifest(&manifest, &[]);
    let (ok, again) = json_run(&cluster, &put);
    assert!(ok, "rerun failed: {again}");
    assert_eq!(n(&again, "adopted"), files.len() as u64, "everything the killed run stored is ours: {again}");
    assert_eq!(n(&again, "files_done"), 0, "{again}");
    assert_eq!(cluster.ls().len(), files.len(), "nothing is stored twice");
    assert_eq!(manifest_header(&manifest).0, origin, "the identity is kept");

    let restored = scratch.join("restored");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(ok, "get -r failed: {got}");
    assert_tree_equals(&restored, &files);
}

/// A manifest from before identities has nothing to adopt from: a file its old runs stored but
/// never recorded is uploaded again. Its next run appends a header, and from then on its own
/// files are adopted as usual.
#[test]
fn an_old_manifest_without_an_identity_gets_one_and_adopts_only_after() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("tree");
    let files: Vec<(String, Vec<u8>)> =
        vec![("a".into(), b"a".to_vec()), ("b".into(), pseudo_random_bytes(9, 9000)), ("c".into(), Vec::new())];
    write_files(&root, &files);
    let manifest = scratch.join("old.jsonl");
    let put = ["put", "-r", s(&root), "--manifest", s(&manifest), "--json"];
    let (ok, first) = json_run(&cluster, &put);
    assert!(ok, "put -r failed: {first}");
    let (old_origin, _) = manifest_header(&manifest);
    // What an old client would have written: entry lines only, and the line of `b` lost.
    let entries = manifest_entries(&manifest);
    let old_lines: String = entries.iter().filter(|(p, _)| *p != "b").map(|(_, e)| format!("{}\n", e.1)).collect();
    fs::write(&manifest, old_lines).expect("write an old manifest");

    let (ok, second) = json_run(&cluster, &put);
    assert!(ok, "rerun on an old manifest failed: {second}");
    assert_eq!(n(&second, "skipped_unchanged"), 2, "recorded files are still skipped: {second}");
    assert_eq!((n(&second, "adopted"), n(&second, "files_done")), (0, 1), "b is uploaded again: {second}");
    let (new_origin, _) = manifest_header(&manifest);
    assert_ne!(new_origin, old_origin, "an old manifest gets a fresh identity");
    assert_eq!(manifest_entries(&manifest).len(), files.len());

    // The upgraded manifest loses b's line again: now b carries its identity and is adopted.
    let (_, header) = manifest_header(&manifest);
    let kept: String = manifest_entries(&manifest)
        .iter()
        .filter(|(p, _)| *p != "b")
        .map(|(_, e)| format!("{}\n", e.1))
        .chain(std::iter::once(format!("{header}\n")))
        .collect();
    fs::write(&manifest, kept).expect("rewrite manifest");
    let (ok, third) = json_run(&cluster, &put);
    assert!(ok, "third run failed: {third}");
    assert_eq!((n(&third, "adopted"), n(&third, "files_done")), (1, 0), "{third}");
    assert_eq!(manifest_header(&manifest).0, new_origin, "the identity appended last time is kept");

    let restored = scratch.join("restored");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(ok, "get -r failed: {got}");
    assert_tree_equals(&restored, &files);
}

/// A plain `put` carries no origin, so a tree upload never takes it for one of its own files,
/// even with the same name and bytes.
#[test]
fn a_rerun_never_adopts_a_plain_put_of_the_same_name() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("tree");
    write_files(&root, &[("one".into(), b"one".to_vec())]);
    let manifest = scratch.join("m.jsonl");
    let put = ["put", "-r", s(&root), "--manifest", s(&manifest), "--json"];
    let (ok, first) = json_run(&cluster, &put);
    assert!(ok, "put -r failed: {first}");
    let two = pseudo_random_bytes(77, 5000);
    write_files(&root, &[("two".into(), two.clone())]);
    let plain = cluster.client(["put", s(&root.join("two")), "--name", "two"]);
    let plain_id = plain.expect_success("plain put").stdout_text().trim().to_string();
    let out = cluster.client(["stat", &plain_id, "--json"]);
    let stat: Value = serde_json::from_slice(&out.expect_success("stat").stdout).expect("stat --json prints JSON");
    assert_eq!(stat["origin"], Value::Null, "a plain put carries no origin: {stat}");

    let (ok, again) = json_run(&cluster, &put);
    assert!(ok, "rerun failed: {again}");
    assert_eq!((n(&again, "adopted"), n(&again, "files_done")), (0, 1), "{again}");
    assert_ne!(manifest_entries(&manifest)["two"].0, plain_id, "the manifest recorded the plain put's file");
    cluster.rm(&plain_id).unwrap_or_else(|e| panic!("rm {plain_id}: {e}"));
    let restored = scratch.join("restored");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(ok, "get -r failed: {got}");
    assert_tree_equals(&restored, &[("one".into(), b"one".to_vec()), ("two".into(), two)]);
}

#[test]
fn killing_put_part_way_then_rerunning_uploads_only_the_rest() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("many");
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("d{}/f{i:03}", i % 7), pseudo_random_bytes(100 + i, 1000 + (i as usize * 37) % 9000)))
        .collect();
    write_files(&root, &files);
    // The manifest lives inside the tree it describes: it must not upload itself.
    let manifest = root.join("manifest.jsonl");

    let mut child = cluster.spawn_client(["put", "-r", s(&root), "--manifest", s(&manifest), "--jobs", "1"]);
    dfs_tests::wait_until("put -r to record 5 files", Duration::from_secs(60), || {
        if fs::read_to_string(&manifest).map_or(0, |t| t.matches("\"path\"").count()) >= 5 {
            return true;
        }
        assert!(child.try_wait().expect("try_wait").is_none(), "put -r ended before it could be killed");
        false
    });
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "put -r finished before the kill: {status}");
    // The manifest is synced only at the end of a run: a machine that loses power also loses its
    // last lines, though the engine committed those files. Drop the last 3 to have that case.
    let text = fs::read_to_string(&manifest).expect("read manifest");
    let entry_lines: Vec<&str> =
        text.lines().filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.get("path").is_some())).collect();
    let n_lost = 3;
    rewrite_manifest(&manifest, &entry_lines[..entry_lines.len() - n_lost]);
    let n_recorded = manifest_entries(&manifest).len() as u64;
    assert!(n_recorded < files.len() as u64, "everything was recorded before the kill");

    let (ok, again) = json_run(&cluster, &["put", "-r", s(&root), "--manifest", s(&manifest), "--jobs", "4", "--json"]);
    assert!(ok, "resumed put -r failed: {again}");
    assert_eq!(n(&again, "skipped_unchanged"), n_recorded, "every recorded file is skipped: {again}");
    // The files whose lines were lost carry this manifest's identity: they are found and
    // recorded, not stored again; so may be the file in flight at the kill.
    let n_adopted = n(&again, "adopted");
    assert!((n_lost as u64..=n_lost as u64 + 1).contains(&n_adopted), "{n_lost} lines were lost: {again}");
    assert_eq!(
        n(&again, "files_done") + n(&again, "adopted"),
        files.len() as u64 - n_recorded,
        "the others are uploaded: {again}"
    );
    // Only the file in flight at the kill can be stored twice: its upload may still be committed
    // by the engine after the rerun has listed what is stored.
    let n_stored = cluster.ls().len();
    assert!(n_stored <= files.len() + 1, "{n_stored} files stored for {} in the tree", files.len());

    let restored = scratch.join("restored");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--jobs", "8", "--json"]);
    assert!(ok, "get -r failed: {got}");
    assert_tree_equals(&restored, &files);
}

#[test]
fn an_interrupted_get_leaves_only_whole_files_and_a_rerun_finishes() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("big");
    let files: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("part-{i}.bin"), pseudo_random_bytes(200 + i, 6 << 20))).collect();
    write_files(&root, &files);
    let manifest = scratch.join("m.jsonl");
    let (ok, v) = json_run(&cluster, &["put", "-r", s(&root), "--manifest", s(&manifest), "--json"]);
    assert!(ok, "put -r failed: {v}");

    let restored = scratch.join("restored");
    let mut child = cluster.spawn_client(["get", "-r", s(&manifest), "-o", s(&restored), "--jobs", "1"]);
    let partial = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".dfs-restore-")))
            .collect()
    };
    dfs_tests::wait_until("get -r to start a download", Duration::from_secs(60), || {
        if !partial(&restored).is_empty() {
            return true;
        }
        assert!(child.try_wait().expect("try_wait").is_none(), "get -r ended before it could be interrupted");
        false
    });
    let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success(), "kill -TERM failed");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(128 + 15), "get -r should exit 143 on SIGTERM: {status}");
    assert!(partial(&restored).is_empty(), "partial files left behind: {:?}", partial(&restored));
    let n_whole = walk(&restored).len();
    assert!(n_whole < files.len(), "everything was restored before the interrupt");
    for p in walk(&restored) {
        let rel = p.strip_prefix(&restored).expect("inside").to_str().expect("utf-8").to_string();
        let expected = &files.iter().find(|f| f.0 == rel).expect("a file of the tree").1;
        assert!(fs::read(&p).expect("read") == *expected, "{rel} was left incomplete");
    }

    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(ok, "get -r after the interrupt failed: {got}");
    assert_eq!(n(&got, "skipped_unchanged"), n_whole as u64, "{got}");
    assert_eq!(n(&got, "files_done"), (files.len() - n_whole) as u64, "{got}");
    assert_tree_equals(&restored, &files);
}

#[test]
fn a_hostile_manifest_fails_only_its_bad_lines_and_writes_nothing_outside() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let src = scratch.join("one.txt");
    fs::write(&src, b"payload").expect("write");
    let id = cluster.client(["put", s(&src)]).expect_success("put").stdout_text().trim().to_string();
    let crc = dfs_proto::layout::crc32(b"payload");
    let target = scratch.join("target");
    let outside = scratch.join("outside");
    fs::create_dir_all(&target).expect("mkdir");
    fs::create_dir_all(&outside).expect("mkdir");
    // A symlink already inside the target, pointing out of it.
    std::os::unix::fs::symlink(&outside, target.join("link")).expect("symlink");
    let absolute = scratch.join("escaped-abs.txt");
    let line = |path: &str, id: &str| {
        format!("{{\"path\":{},\"id\":\"{id}\",\"size\":7,\"crc32\":{crc},\"mtime_ns\":0}}\n", Value::from(path))
    };
    let bad: Vec<(&str, &str)> = vec![
        ("../escaped.txt", "`..`"),
        (s(&absolute), "absolute"),
        ("a/../../escaped2.txt", "`..`"),
        ("link/through-symlink.txt", "symlink"),
        ("bad-id.txt", "file ID"),
    ];
    let mut text = line("good/ok.txt", &id);
    for (path, _) in &bad {
        text.push_str(&line(path, if path.starts_with("bad-id") { "not-an-id" } else { &id }));
    }
    let manifest = scratch.join("hostile.jsonl");
    fs::write(&manifest, text).expect("write manifest");

    let (ok, v) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&target), "--json"]);
    assert!(!ok, "get -r with hostile paths succeeded: {v}");
    assert_eq!(n(&v, "files_done"), 1, "the good file is restored: {v}");
    assert_eq!(fs::read(target.join("good/ok.txt")).expect("restored"), b"payload");
    let failed: BTreeMap<String, String> = pairs(&v, "failed", "path", "error").into_iter().collect();
    assert_eq!(failed.len(), bad.len(), "{v}");
    for (path, why) in &bad {
        let error = failed.get(*path).unwrap_or_else(|| panic!("{path} is not among the failed: {v}"));
        assert!(error.contains(why), "the error for {path} should mention {why}: {error}");
    }
    for p in [scratch.join("escaped.txt"), absolute, cluster.root().join("escaped2.txt")] {
        assert!(!p.exists(), "{} was written", p.display());
    }
    assert!(walk(&outside).is_empty(), "something was written through the symlink: {:?}", walk(&outside));

    // Without --json the same run ends with one error line naming how many failed.
    let out = cluster.client(["get", "-r", s(&manifest), "-o", s(&target)]);
    assert!(!out.success());
    let last = out.stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("error: 5 file(s) failed"), "{}", out.describe());

    // A manifest that is not JSON lines is refused as a whole, naming the line.
    fs::write(&manifest, format!("{}this is not json\n", line("x", &id))).expect("write");
    let err =
        cluster.client(["get", "-r", s(&manifest), "-o", s(&scratch.join("t2"))]).expect_error("garbage manifest");
    assert!(err.contains("line 2"), "{err}");
    assert!(!scratch.join("t2").join("x").exists());
}

#[test]
fn follow_symlinks_uploads_what_a_symlink_to_a_file_points_to() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("tree");
    let elsewhere = scratch.join("elsewhere");
    write_files(&root, &[("real.txt".into(), b"real".to_vec())]);
    write_files(&elsewhere, &[("target.bin".into(), pseudo_random_bytes(7, 5000))]);
    std::os::unix::fs::symlink(elsewhere.join("target.bin"), root.join("to-file")).expect("symlink");
    std::os::unix::fs::symlink(&elsewhere, root.join("to-dir")).expect("symlink");
    std::os::unix::fs::symlink("nowhere", root.join("broken")).expect("symlink");
    let manifest = scratch.join("m.jsonl");
    let (ok, v) =
        json_run(&cluster, &["put", "-r", s(&root), "--manifest", s(&manifest), "--follow-symlinks", "--json"]);
    assert!(ok, "put -r --follow-symlinks failed: {v}");
    assert_eq!(n(&v, "files_done"), 2, "{v}");
    assert_eq!(
        pairs(&v, "skipped_not_regular", "path", "kind"),
        [
            ("broken".to_string(), "broken symlink".to_string()),
            ("to-dir".to_string(), "symlink to a directory".to_string())
        ]
    );
    let restored = scratch.join("restored");
    let (ok, got) = json_run(&cluster, &["get", "-r", s(&manifest), "-o", s(&restored), "--json"]);
    assert!(ok, "get -r failed: {got}");
    assert_tree_equals(
        &restored,
        &[("real.txt".into(), b"real".to_vec()), ("to-file".into(), pseudo_random_bytes(7, 5000))],
    );
}

#[test]
fn tree_misuse_is_one_clear_error_line() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let scratch = cluster.root().join("scratch");
    let root = scratch.join("tree");
    write_files(&root, &[("f".into(), b"x".to_vec())]);
    let file = root.join("f");
    let m = scratch.join("m.jsonl");
    fs::write(&m, "").expect("an empty manifest");
    let (nope, deep_manifest) = (scratch.join("nope"), scratch.join("no/such/dir/m"));
    let (missing, out_dir) = (scratch.join("missing.jsonl"), scratch.join("out"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["put", "-r", s(&root)], "--manifest"),
        (vec!["put", "-r", s(&file), "--manifest", s(&m)], "not a directory"),
        (vec!["put", "-r", s(&nope), "--manifest", s(&m)], "cannot read the directory"),
        (vec!["put", "-r", s(&root), "--manifest", s(&deep_manifest)], "manifest"),
        (vec!["get", "-r", s(&missing), "-o", s(&out_dir)], "missing.jsonl"),
        (vec!["get", "-r", s(&m), "-o", s(&file)], "output directory"),
        (vec!["get", "-r", s(&m), "-o", "-"], "directory"),
    ];
    for (args, expected) in cases {
        let err = cluster.client(&args).expect_error(&format!("{args:?}"));
        assert!(err.contains(expected), "{args:?}: {err:?} should mention {expected:?}");
    }
    // A name that is not UTF-8 fails that file alone.
    let odd = root.join(std::ffi::OsStr::from_bytes(b"bad-\xff-name"));
    fs::write(&odd, b"odd").expect("write");
    let (ok, v) = json_run(&cluster, &["put", "-r", s(&root), "--manifest", s(&m), "--json"]);
    assert!(!ok, "a tree with a non-UTF-8 name succeeded: {v}");
    assert_eq!(n(&v, "files_done"), 1, "{v}");
    assert!(v["failed"][0]["error"].as_str().unwrap_or("").contains("UTF-8"), "{v}");
    fs::remove_file(&odd).expect("rm");
    // An engine that cannot be reached is one error, not one per file.
    let out = cluster.client_raw(
        &["--server", "127.0.0.1:1", "put", "-r", s(&root), "--manifest", s(&m)].map(std::ffi::OsString::from),
    );
    let err = out.expect_error("put -r without an engine");
    assert!(err.contains("cannot connect"), "{err}");
    // Usage mistakes are refused by the argument parser, with a non-zero status.
    for args in [
        vec!["put", "-r", s(&root), "--manifest", s(&m), "--jobs", "0"],
        vec!["put", "-r", s(&root), "--manifest", s(&m), "--jobs", "many"],
        vec!["put", s(&file), "--manifest", s(&m)],
        vec!["get", "-r", s(&m)],
        vec!["get", "0123", "-o", "x", "--force"],
    ] {
        let out = cluster.client(&args);
        assert!(!out.success(), "{args:?} was accepted");
        assert!(out.stderr.starts_with("error:"), "{args:?}: {}", out.describe());
    }
}

#[test]
fn completions_and_man_pages_are_generated() {
    let cluster = Cluster::empty();
    let scratch = cluster.root().join("scratch");
    fs::create_dir_all(&scratch).expect("mkdir");
    for (shell, marker) in
        [("bash", "_dfs__client()"), ("zsh", "#compdef dfs-client"), ("fish", "complete -c dfs-client")]
    {
        let out = cluster.client_raw(&["completions".into(), shell.into()]);
        let text = out.expect_success(shell).stdout_text();
        assert!(text.contains(marker), "{shell} completions lack {marker:?}");
        assert!(text.contains("manifest"), "{shell} completions lack put's --manifest");
    }
    assert!(!cluster.client_raw(&["completions".into(), "tcsh".into()]).success(), "an unknown shell was accepted");

    let out = cluster.client_raw(&["man".into()]);
    let page = out.expect_success("man").stdout_text();
    assert!(page.contains(".TH dfs-client"), "not a man page: {}", &page[..page.len().min(200)]);
    let dir = scratch.join("man");
    cluster.client_raw(&["man".into(), "-o".into(), dir.clone().into()]).expect_success("man -o");
    for name in ["dfs-client.1", "dfs-client-put.1", "dfs-client-get.1", "dfs-client-ls.1"] {
        let text = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{name} is not a man page");
    }
    let put_page = fs::read_to_string(dir.join("dfs-client-put.1")).expect("read");
    assert!(put_page.contains("manifest"), "the put page lacks --manifest");
}
