//! Node health, repair, scrub and orphan collection, on real processes: a dead node, a node
//! replaced by an empty one, a byte flipped on disk, an engine killed mid-upload, a file deleted
//! while its node was down, and a node whose disk fills up.

use dfs_proto::{ChunkId, Chunking, FileId};
use dfs_tests::{assert_bytes_eq, chunk_id, pseudo_random_bytes, Cluster, ClusterOpts, Damage};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn two_copies() -> ClusterOpts {
    ClusterOpts { replicas: Some(2), ..ClusterOpts::default() }
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// Puts `n` files of mixed sizes and returns (id, bytes).
fn put_files(cluster: &Cluster, n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let size = if i % 3 == 0 { 2 * MIB as usize + 7 } else { 100_000 + i as usize };
            let data = pseudo_random_bytes(1000 + i, size);
            (cluster.put_bytes(&data, &format!("f{i}"), Chunking::Equal), data)
        })
        .collect()
}

fn assert_all_readable(cluster: &Cluster, files: &[(String, Vec<u8>)], when: &str) {
    for (id, data) in files {
        let got = cluster.get(id).unwrap_or_else(|e| panic!("{when}: get {id}: {e}"));
        assert_bytes_eq(&got, data, &format!("{when}: {id}"));
    }
}

/// Every chunk of every file has exactly two copies, on distinct live nodes, and each copy's
/// file exists on the node the metadata names.
fn assert_two_sound_copies(cluster: &Cluster, files: &[(String, Vec<u8>)], dead: &BTreeSet<String>, when: &str) {
    for (id, _) in files {
        let stat = cluster.stat(id).unwrap_or_else(|e| panic!("{when}: stat {id}: {e}"));
        for chunk in &stat.chunks {
            let nodes: BTreeSet<&String> = chunk.nodes.iter().collect();
            assert_eq!(nodes.len(), 2, "{when}: chunk {} of {id} is on {:?}", chunk.index, chunk.nodes);
            assert!(
                nodes.iter().all(|n| !dead.contains(*n)),
                "{when}: chunk {} of {id} is on a dead node",
                chunk.index
            );
            let on_disk: BTreeSet<String> = cluster
                .find_chunk_file(id, chunk.index)
                .iter()
                .map(|(node_idx, _)| cluster.node_addr(*node_idx).to_string())
                .collect();
            for n in &nodes {
                assert!(
                    on_disk.contains(*n),
                    "{when}: chunk {} of {id} is recorded on {n} but not on its disk",
                    chunk.index
                );
            }
        }
    }
}

#[test]
fn status_shows_a_dead_node_down_and_a_restarted_one_up() {
    let mut cluster = Cluster::start(4, two_copies());
    let files = put_files(&cluster, 3);
    let (ok, status) = cluster.client_json(&["status"]);
    assert!(ok, "status failed: {status}");
    assert_eq!(u(&status, "/replicas"), 2);
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(4), "status lists every node: {status}");

    cluster.kill_node(1);
    let addr = cluster.node_addr(1).to_string();
    let node_state = |status: &Value| {
        status["nodes"].as_array().and_then(|ns| ns.iter().find(|n| n["addr"] == addr.as_str()).cloned())
    };
    // Node 1's entry in `status`, once `up` is `want`.
    let node_once_up_is = |cluster: &Cluster, want: bool| {
        let (_, status) = cluster.client_json(&["status"]);
        let node = node_state(&status).unwrap_or_else(|| panic!("status does not list {addr}: {status}"));
        if node["up"] == want {
            return Some(node);
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    };
    let node = dfs_tests::wait_for("status to show node 1 down after it was killed", Duration::from_secs(15), || {
        node_once_up_is(&cluster, false)
    });
    assert!(node["last_error"].is_string(), "a down node shows why: {node}");
    cluster.restart_node(1);
    let node = dfs_tests::wait_for("status to show node 1 up after it came back", Duration::from_secs(15), || {
        node_once_up_is(&cluster, true)
    });
    let held = u(&node, "/report/n_chunks");
    let on_disk = cluster.chunk_files(1).len() as u64;
    assert_eq!(held, on_disk, "status counts node 1's chunks as {held}, its disk has {on_disk}");
    assert_all_readable(&cluster, &files, "after node 1 came back");
}

#[test]
fn repair_moves_copies_off_a_dead_node_so_a_second_loss_costs_nothing() {
    let mut cluster = Cluster::start(4, two_copies());
    let files = put_files(&cluster, 6);
    cluster.kill_node(0);
    let dead: BTreeSet<String> = [cluster.node_addr(0).to_string()].into();
    let held: usize = files
        .iter()
        .map(|(id, _)| {
            cluster.stat(id).map(|s| s.chunks.iter().filter(|c| c.nodes.iter().any(|n| dead.contains(n))).count())
        })
        .map(|r| r.unwrap_or_else(|e| panic!("stat: {e}")))
        .sum();
    assert!(held > 0, "node 0 held no chunk copies; the test needs some");

    let (ok, summary) = cluster.client_json(&["repair"]);
    assert!(ok, "repair with one node of four down failed: {summary}");
    assert_eq!(u(&summary, "/n_copies_made"), held as u64, "one new copy per copy lost with node 0: {summary}");
    assert_eq!(u(&summary, "/n_chunks_unrecoverable"), 0, "{summary}");
    assert_eq!(u(&summary, "/n_chunks_degraded"), 0, "{summary}");
    assert_two_sound_copies(&cluster, &files, &dead, "after repair");

    // A second pass finds nothing to do.
    let (ok, again) = cluster.client_json(&["repair"]);
    assert!(ok && u(&again, "/n_copies_made") == 0, "a second repair pass copied again: {again}");

    // Every chunk now has two copies on the three live nodes: losing one more costs nothing.
    cluster.kill_node(3);
    assert_all_readable(&cluster, &files, "after repair and a second node loss");
}

#[test]
fn a_node_replaced_by_an_empty_one_gets_its_copies_back() {
    let mut cluster = Cluster::start(4, two_copies());
    let files = put_files(&cluster, 6);
    let before: BTreeSet<ChunkId> = cluster.chunk_files(2).into_iter().map(|(c, _)| c).collect();
    assert!(!before.is_empty(), "node 2 held nothing; the test needs some chunks there");
    cluster.kill_node(2);
    let dir = cluster.node_data_dir(2).to_path_buf();
    fs::remove_dir_all(&dir).expect("wipe node 2's disk");
    cluster.note(&format!("wiped {}", dir.display()));
    cluster.restart_node(2);

    let (ok, summary) = cluster.client_json(&["repair"]);
    assert!(ok, "repair after a node was replaced failed: {summary}");
    assert_eq!(u(&summary, "/n_copies_made"), before.len() as u64, "{summary}");
    let after: BTreeSet<ChunkId> = cluster.chunk_files(2).into_iter().map(|(c, _)| c).collect();
    assert_eq!(after, before, "the replaced node must hold exactly the copies it held before");
    assert_two_sound_copies(&cluster, &files, &BTreeSet::new(), "after repair onto the replaced node");
    // Read with only the replaced node's copies available where it holds one.
    let partner = (0..4).find(|&n| n != 2).expect("another node");
    cluster.kill_node(partner);
    for (id, data) in &files {
        let stat = cluster.stat(id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
        let lost = stat.chunks.iter().any(|c| c.length > 0 && c.nodes.iter().all(|n| n == cluster.node_addr(partner)));
        assert!(!lost, "chunk of {id} had both copies on node {partner}");
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} with node {partner} down: {e}"));
        assert_bytes_eq(&got, data, id);
    }
}

#[test]
fn scrub_quarantines_a_corrupt_copy_and_repair_replaces_it() {
    let mut cluster = Cluster::start(4, two_copies());
    let data = pseudo_random_bytes(5, 3 * MIB as usize);
    let id = cluster.put_bytes(&data, "scrubbed", Chunking::Equal);
    let copies = cluster.find_copies(&id, 1);
    assert_eq!(copies.len(), 2, "chunk 1 must have two copies: {copies:?}");
    let bad_node = copies[0];
    let chunk = chunk_id(&id, 1);
    let bytes = cluster.corrupt_copy(bad_node, chunk, Damage::Data(1234));
    let before = dfs_tests::node_report(cluster.node_addr(bad_node)).scrub;
    assert_eq!(before, dfs_proto::ScrubReport::default(), "no pass has run on node {bad_node} yet");

    let (ok, report) = cluster.client_json(&["scrub"]);
    assert!(ok, "scrub failed: {report}");
    assert_eq!(u(&report, "/scrub/n_corrupt"), 1, "{report}");
    assert_eq!(u(&report, "/scrub/n_checked"), 8, "4 chunks × 2 copies: {report}");
    assert_eq!(u(&report, "/repair/n_copies_made"), 1, "{report}");
    // Set aside, not destroyed: a file in quarantine/ (files), or the record left in its
    // segment under a tombstone (segments), holding exactly the corrupt bytes.
    let set_aside = cluster.set_aside_copies(bad_node);
    let chunks: Vec<_> = set_aside.iter().map(|(c, _)| c.to_string()).collect();
    assert_eq!(chunks, [chunk.to_string()], "the corrupt copy, and only it, is kept aside on node {bad_node}");
    assert_eq!(set_aside[0].1, bytes, "the copy kept aside is the corrupt one");
    let n_quarantined = dfs_tests::node_report(cluster.node_addr(bad_node)).n_quarantined;
    assert_eq!(n_quarantined, 1, "node {bad_node} must count the copy it set aside");
    // Each node reports the pass it finished (the status page shows it): together the 8
    // copies checked, and the one corrupt copy on the node that held it.
    let scrubs: Vec<_> = (0..4).map(|n| dfs_tests::node_report(cluster.node_addr(n)).scrub).collect();
    assert!(scrubs.iter().all(|s| !s.running && s.n_checked == 0 && s.last_finished_unix_ms > 0), "{scrubs:?}");
    assert_eq!(scrubs.iter().map(|s| s.last_checked).sum::<u64>(), 8, "{scrubs:?}");
    // And `status` shows it once the engine's next health check has brought the node's report.
    let n = scrubs[bad_node].last_checked;
    dfs_tests::wait_until(&format!("status to show node {bad_node}'s scrub"), Duration::from_secs(15), || {
        let text = cluster.client(["status"]).expect_success("status").stdout_text();
        let line = text.lines().find(|l| l.contains(cluster.node_addr(bad_node))).unwrap_or_else(|| panic!("{text}"));
        let shown = line.contains(&format!("  {n} checked, 1 corrupt, ")) && line.ends_with("; 1 set aside");
        if !shown {
            std::thread::sleep(Duration::from_millis(200));
        }
        shown
    });
    assert_eq!(
        scrubs.iter().map(|s| s.last_corrupt).collect::<Vec<_>>(),
        (0..4).map(|n| u64::from(n == bad_node)).collect::<Vec<_>>()
    );

    // The repaired copy is sound: read the file with the other copy's node gone.
    let other = copies[1];
    cluster.kill_node(other);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} from the repaired copy: {e}"));
    assert_bytes_eq(&got, &data, "the file read from its repaired copy");
}

#[test]
fn gc_collects_what_a_killed_engine_and_a_delete_during_an_outage_leave_behind() {
    let mut cluster = Cluster::start(4, two_copies());
    let kept = put_files(&cluster, 2);

    // An engine killed while chunks of an upload are already on the nodes.
    let big = pseudo_random_bytes(77, 64 * MIB as usize);
    let input = cluster.write_input(&big);
    let mut client = cluster.spawn_client(["put".as_ref(), input.as_os_str()]);
    let known: BTreeSet<FileId> = kept.iter().map(|(id, _)| id.parse().expect("ID")).collect();
    dfs_tests::wait_until("a chunk of the upload to reach a node", Duration::from_secs(60), || {
        let stray = (0..4).flat_map(|n| cluster.chunk_files(n)).any(|(c, _)| !known.contains(&c.file_id));
        if !stray {
            assert!(
                client.try_wait().ok().flatten().is_none(),
                "the upload finished before the engine could be killed"
            );
        }
        stray
    });
    cluster.restart_engine();
    let _ = client.wait();
    let listed = cluster.ls();
    assert_eq!(listed.len(), 2, "after the crash only the acknowledged files are listed: {listed:?}");

    // A file deleted while one of its nodes was down.
    let (gone_id, _) = &kept[1];
    let stat = cluster.stat(gone_id).unwrap_or_else(|e| panic!("stat {gone_id}: {e}"));
    let down = cluster.node_idx_of(&stat.chunks[0].nodes[0]).expect("stat names a cluster node");
    cluster.kill_node(down);
    cluster.rm(gone_id).unwrap_or_else(|e| panic!("rm {gone_id}: {e}"));
    cluster.restart_node(down);
    let gone: FileId = gone_id.parse().expect("ID");

    let stray = |cluster: &Cluster| -> Vec<ChunkId> {
        (0..4)
            .flat_map(|n| cluster.chunk_files(n))
            .map(|(c, _)| c)
            .filter(|c| c.file_id == gone || !known.contains(&c.file_id))
            .collect()
    };
    // Wait for the engine's background deletes of the removed file to settle (a fixed wait:
    // nothing tells which of its copies are still to go).
    std::thread::sleep(Duration::from_millis(500));
    let orphans = stray(&cluster);
    assert!(!orphans.is_empty(), "the test should leave orphans behind");

    // Young chunks are not collected under the default grace period of an hour.
    let (ok, dry) = cluster.client_json(&["gc", "--dry-run"]);
    assert!(ok && u(&dry, "/n_orphans") == 0, "gc with the default grace counted young chunks as orphans: {dry}");
    let (ok, dry) = cluster.client_json(&["gc", "--dry-run", "--grace-secs", "0"]);
    assert!(ok, "{dry}");
    assert_eq!(u(&dry, "/n_orphans"), orphans.len() as u64, "dry run must find every orphan {orphans:?}: {dry}");
    assert_eq!(u(&dry, "/n_deleted"), 0, "a dry run deletes nothing: {dry}");
    assert_eq!(stray(&cluster).len(), orphans.len(), "a dry run deleted chunk files");

    let (ok, done) = cluster.client_json(&["gc", "--grace-secs", "0"]);
    assert!(ok, "{done}");
    assert_eq!(u(&done, "/n_deleted"), orphans.len() as u64, "{done}");
    assert_eq!(stray(&cluster), Vec::<ChunkId>::new(), "orphans left after gc");
    assert_all_readable(&cluster, &kept[..1], "after gc");
    let stat_after = cluster.stat(&kept[0].0).unwrap_or_else(|e| panic!("stat: {e}"));
    assert!(stat_after.chunks.iter().all(|c| c.nodes.len() == 2), "gc touched a referenced chunk");
}

/// Mounts a small tmpfs over a node's data directory, and unmounts it when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        fs::create_dir_all(dir).ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_node_with_a_full_disk_fails_its_copies_cleanly_and_the_upload_goes_elsewhere() {
    let mut cluster = Cluster::start(4, two_copies());
    let before = put_files(&cluster, 2);
    cluster.kill_node(0);
    let dir = cluster.node_data_dir(0).join("small");
    let Some(_disk) = SmallDisk::mount(&dir, "4m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root); the full-disk case is not tested");
        return;
    };
    // Node 0 now stores on a 4 MiB file system.
    cluster.restart_node_with_data(0, dir.clone());
    let data = pseudo_random_bytes(9, 48 * MIB as usize);
    let id = cluster
        .try_put_bytes(&data, "bigger than one disk", Chunking::Equal)
        .unwrap_or_else(|out| panic!("put with node 0's disk too small failed: {}", out.describe()));
    let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
    for chunk in &stat.chunks {
        assert!(!chunk.nodes.contains(&cluster.node_addr(0).to_string()), "a 12 MiB chunk placed on a 4 MiB disk");
        assert_eq!(chunk.nodes.iter().collect::<BTreeSet<_>>().len(), 2, "chunk {}: {:?}", chunk.index, chunk.nodes);
    }
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id}: {e}"));
    assert_bytes_eq(&got, &data, "a file whose upload hit a full disk");
    let leftovers = cluster.temp_files(0);
    let partial = cluster.partial_copies(0);
    assert!(
        leftovers.is_empty() && partial.is_empty(),
        "partial chunks left on the full disk: temp files {leftovers:?}, partial copies {partial:?}"
    );
    assert_all_readable(&cluster, &before, "after the full-disk upload");
}

/// Scrub lists a copy and finds it corrupt; before it writes its tombstone, a read finds the
/// same rot and sets the copy aside, and repair stores a fresh copy back on that node. Scrub's
/// late tombstone must delete only the copy it checked: after a restart the node still serves
/// the fresh copy it acknowledged. (Issue 23, item 3: on the old code the tombstone outranked
/// the fresh copy, which was gone after the restart.)
#[test]
fn a_scrub_that_sets_a_copy_aside_late_spares_the_fresh_copy_repair_made() {
    let mut cluster = Cluster::start(
        4,
        ClusterOpts {
            node_args: ["--store", "segments"].iter().map(|s| s.to_string()).collect(),
            node_env: vec![("DFS_FAILPOINTS".into(), "scrub-before-set-aside=10000".into())],
            engine_args: ["--repair-queue-secs", "1"].iter().map(|s| s.to_string()).collect(),
            ..two_copies()
        },
    );
    let data = pseudo_random_bytes(23, 400_000);
    let id = cluster.put_bytes(&data, "rotting", Chunking::Equal);
    let chunk = chunk_id(&id, 0);
    // The copy the engine reads first.
    let first_addr = cluster.stat(&id).expect("stat").chunks[0].nodes[0].clone();
    let bad = cluster.node_idx_of(&first_addr).expect("a node of the cluster");
    cluster.corrupt_copy(bad, chunk, Damage::Data(1234));
    let mut scrub = cluster.spawn_client(["scrub"]);
    let log = cluster.node_stderr_log(bad);
    let logged = |what: &str| std::fs::read_to_string(&log).is_ok_and(|l| l.contains(what));
    dfs_tests::wait_until(&format!("scrub to reach the corrupt copy on node {bad}"), Duration::from_secs(5), || {
        logged("scrub-before-set-aside")
    });
    // The read finds the rot (and reads the other copy); repair writes a fresh copy back.
    let got = cluster.get(&id).expect("the other copy serves the read");
    assert_bytes_eq(&got, &data, "read during the scrub");
    assert!(logged("failed a block check on FETCH; set aside"), "the read did not set the copy aside on node {bad}");
    dfs_tests::wait_until(
        &format!("repair to store a fresh copy on node {bad} while scrub is held"),
        Duration::from_secs(8),
        || dfs_tests::node_chunk_ids(cluster.node_addr(bad)).contains(&chunk),
    );
    // Scrub goes on and sets aside the copy it checked.
    let status = scrub.wait().expect("dfs-client scrub");
    cluster.note(&format!("dfs-client scrub exited with {status}"));
    assert!(logged("chunk(s) checked"), "the scrub pass on node {bad} did not end");
    cluster.kill_node(bad);
    cluster.restart_node(bad);
    assert!(
        dfs_tests::node_chunk_ids(cluster.node_addr(bad)).contains(&chunk),
        "node {bad} lost the fresh copy of {chunk} it acknowledged, after a restart"
    );
    // And the copy it serves is the right one: with the other copy's node down, the file reads.
    let other = cluster.stat(&id).expect("stat").chunks[0]
        .nodes
        .iter()
        .filter_map(|a| cluster.node_idx_of(a))
        .find(|&n| n != bad)
        .expect("a second copy");
    cluster.kill_node(other);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get with only node {bad}'s copy of chunk 0: {e}"));
    assert_bytes_eq(&got, &data, "read from the fresh copy");
}
