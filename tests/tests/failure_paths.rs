//! Failure paths that once leaked connections, threw away good copies or wrote off live ones:
//! a client that reads slowly and vanishes, a node out of file descriptors, a node restarted a
//! second ago, a pooled connection the node has silently dropped, a metadata commit that
//! reports an error after it was made, gc racing an upload's commit, and a re-read chunk that
//! must stay inside the download budget. Each test names what it catches.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, chunk_id, pseudo_random_bytes, Cluster, ClusterOpts, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Runs an admin command with `--json`; returns whether it succeeded and its JSON.
fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path).and_then(Value::as_u64).unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

/// The addresses `status` shows down.
fn nodes_down(cluster: &Cluster) -> Vec<String> {
    let (ok, status) = cluster.client_json(&["status"]);
    assert!(ok, "status failed: {status}");
    status["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("status lists no nodes: {status}"))
        .iter()
        .filter(|n| n["up"] == false)
        .map(|n| n["addr"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Open descriptors of process `pid`.
fn n_open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn pid_of(cluster: &Cluster, label: &str) -> u32 {
    cluster.pids().into_iter().find(|(l, _)| l == label).map(|(_, p)| p).unwrap_or_else(|| panic!("no {label}"))
}

/// Regression: a streamed download whose client stopped reading, or vanished, left the engine's
/// block reader parked on a buffer pool that never refilled, so the connection task, its slot
/// under `--max-connections` and its node connections were held forever: three such clients
/// locked every later client out.
#[test]
fn abandoned_streamed_downloads_free_their_connection_slots() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            buffer_budget_bytes: Some(MIB),
            replicas: Some(1),
            idle_timeout_secs: Some(2),
            engine_args: args(&["--threads", "1", "--max-connections", "3"]),
            ..ClusterOpts::default()
        },
    );
    let data = pseudo_random_bytes(1, 48 * MIB as usize);
    let id = cluster.put_bytes(&data, "streamed", Chunking::Equal);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = cluster.spawn_client(["get", id.as_str(), "-o", "-"]);
        let mut stdout = client.stdout.take().expect("client stdout is piped");
        let mut head = vec![0u8; 1000];
        stdout.read_exact(&mut head).expect("read the first bytes of a download");
        assert_eq!(head, data[..1000], "first bytes of the download");
        clients.push((client, stdout));
    }
    // Two clients vanish mid-download; the third stops reading and stays connected.
    for (client, _) in &mut clients[..2] {
        client.kill().expect("kill a client");
        client.wait().expect("reap a client");
    }
    let stalled = clients[2].0.id();
    signal(stalled, "STOP");
    cluster.note("killed two downloading clients and stopped a third");

    // Within the idle timeout (2 s) and some slack, every slot is free again.
    dfs_tests::wait_until(
        "the engine to take clients again after three downloads were abandoned",
        Duration::from_secs(15),
        || {
            let ok = cluster.client(["stat", id.as_str()]).success();
            if !ok {
                std::thread::sleep(Duration::from_millis(500));
            }
            ok
        },
    );
    // Free slots are not enough: a whole download must work again, more than once.
    for _ in 0..3 {
        let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} after abandoned downloads: {e}"));
        assert_bytes_eq(&got, &data, "a download after three abandoned ones");
    }
    signal(stalled, "CONT");
    let (mut client, _) = clients.pop().expect("three clients");
    let _ = client.kill();
    let _ = client.wait();
}

/// Regression: a streamed download opened the next chunk's FETCH while the current one drained,
/// and held a node connection unread for as long as the client took; past the node's idle
/// timeout the node closed it, the engine took that for a dead node, marked it down, and with
/// one copy the download failed.
#[test]
fn a_slow_client_does_not_make_a_healthy_node_time_out() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            buffer_budget_bytes: Some(MIB),
            replicas: Some(1),
            node_args: args(&["--idle-timeout-secs", "1"]),
            engine_args: args(&["--ping-interval-secs", "3600"]),
            ..ClusterOpts::default()
        },
    );
    // Chunks of 32 MiB: more than the socket buffers and the engine's read-ahead hold.
    let data = pseudo_random_bytes(2, 128 * MIB as usize);
    let id = cluster.put_bytes(&data, "read slowly", Chunking::Equal);
    // Let the nodes close the upload's idle pooled connections first (a separate failure,
    // covered by a_stale_pooled_connection_is_retried_on_a_fresh_one).
    std::thread::sleep(Duration::from_secs(3));
    let mut client = cluster.spawn_client(["get", id.as_str(), "-o", "-"]);
    let mut stdout = client.stdout.take().expect("client stdout is piped");
    let mut got = vec![0u8; MIB as usize];
    stdout.read_exact(&mut got).expect("read the first MiB");
    // Four times the nodes' idle timeout without reading, twice.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(4));
        let mut more = vec![0u8; 40 * MIB as usize];
        stdout.read_exact(&mut more).expect("read on after a pause");
        got.extend_from_slice(&more);
    }
    stdout.read_to_end(&mut got).expect("read the rest");
    let status = client.wait().expect("wait for the client");
    assert!(status.success(), "a download paused for longer than the nodes' idle timeout failed ({status})");
    assert_bytes_eq(&got, &data, "a download read with long pauses");
    assert_eq!(nodes_down(&cluster), Vec::<String>::new(), "healthy nodes were marked down for the client's pauses");
}

/// Regression: repair took any failed check (here EMFILE on a node out of descriptors) for a
/// bad copy, deleted it and then failed to copy it back: the count of sound copies went down.
/// A copy that cannot be checked must be left alone.
///
/// The nodes run `--store files` whatever `DFS_STORE` says: the failed check this needs is a
/// chunk-file node's EXISTS, which opens the chunk's file and so fails with EMFILE. A segment
/// node answers EXISTS from its in-memory index on a connection it already has, so its checks
/// do not fail for want of descriptors and the regression cannot be provoked this way.
#[test]
fn repair_leaves_alone_copies_it_cannot_check_on_a_node_out_of_descriptors() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            replicas: Some(2),
            // One runtime, so repair runs where the pooled connections of the uploads are.
            engine_args: args(&["--threads", "1", "--ping-interval-secs", "3600"]),
            node_args: args(&["--store", "files"]),
            ..ClusterOpts::default()
        },
    );
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let data = pseudo_random_bytes(10 + i, 300_000);
            (cluster.put_bytes(&data, &format!("f{i}"), Chunking::Equal), data)
        })
        .collect();
    let before: BTreeSet<_> = cluster.chunk_files(0).into_iter().map(|(c, _)| c).collect();
    assert!(!before.is_empty(), "node 0 holds no chunks");

    // Node 0 may keep only a few more descriptors than it has open; fill them with connections.
    let pid = pid_of(&cluster, "node 0");
    let limit = n_open_fds(pid) + 8;
    let ok = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "prlimit --pid {pid} failed");
    let mut hogs = Vec::new();
    dfs_tests::wait_until(
        &format!("node 0 to reach its limit of {limit} descriptors"),
        Duration::from_secs(20),
        || {
            if n_open_fds(pid) >= limit {
                return true;
            }
            hogs.push(TcpStream::connect(cluster.node_addr(0)).expect("connect to node 0"));
            std::thread::sleep(Duration::from_millis(50));
            false
        },
    );
    cluster.note(&format!("node 0 (pid {pid}) is at its descriptor limit of {limit}"));

    let (_, report) = cluster.client_json(&["repair"]);
    drop(hogs);
    assert_eq!(u(&report, "/n_copies_made"), 0, "every copy was sound, yet repair replaced some: {report}");
    // A fixed wait: a DELETE repair sent node 0 would land in the background, and that none
    // does is not a condition one can wait for.
    std::thread::sleep(Duration::from_millis(200));
    let after: BTreeSet<_> = cluster.chunk_files(0).into_iter().map(|(c, _)| c).collect();
    let lost: Vec<_> = before.difference(&after).collect();
    assert!(lost.is_empty(), "repair deleted sound copies it could not check from node 0: {lost:?}; report {report}");
    assert_eq!(u(&report, "/n_chunks_unrecoverable"), 0, "{report}");
    let problems = report["problems"].to_string();
    assert!(problems.contains("could not be checked"), "the report must say which copies went unchecked: {report}");
    // Every file still reads from node 0's copy alone once its descriptors are back.
    for (id, data) in &files {
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id}: {e}"));
        assert_bytes_eq(&got, data, id);
    }
}

/// Puts files until some chunk has its two copies on two distinct nodes; returns the files and
/// that pair of node indices.
fn files_with_a_shared_pair(cluster: &Cluster) -> (Vec<(String, Vec<u8>)>, usize, usize) {
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let data = pseudo_random_bytes(20 + i, 200_000 + i as usize);
            (cluster.put_bytes(&data, &format!("f{i}"), Chunking::Equal), data)
        })
        .collect();
    let stat = cluster.stat(&files[0].0).unwrap_or_else(|e| panic!("stat: {e}"));
    let pair = &stat.chunks[0].nodes;
    assert_eq!(pair.len(), 2, "two copies of chunk 0: {pair:?}");
    let a = cluster.node_idx_of(&pair[0]).expect("a cluster node");
    let b = cluster.node_idx_of(&pair[1]).expect("a cluster node");
    (files, a, b)
}

/// Reads every file until the engine has noticed that node `victim` is gone.
fn wait_until_marked_down(cluster: &Cluster, files: &[(String, Vec<u8>)], victim: usize) {
    let addr = cluster.node_addr(victim).to_string();
    dfs_tests::wait_until(&format!("the engine to mark node {victim} down"), Duration::from_secs(30), || {
        if nodes_down(cluster).contains(&addr) {
            return true;
        }
        for (id, _) in files {
            let _ = cluster.get(id);
        }
        false
    });
}

/// Regression: right after a node restart, repair still believed the node down (until the next
/// ping) and called chunks whose only sound copy was there unrecoverable.
#[test]
fn repair_right_after_a_restart_probes_the_node_instead_of_writing_its_copies_off() {
    let mut cluster = Cluster::start(
        4,
        ClusterOpts { replicas: Some(2), engine_args: args(&["--ping-interval-secs", "3600"]), ..Default::default() },
    );
    let (files, a, b) = files_with_a_shared_pair(&cluster);
    cluster.kill_node(a);
    wait_until_marked_down(&cluster, &files, a);
    // Node b loses its disk; then both come back.
    cluster.kill_node(b);
    let wiped = cluster.root().join("nodes").join(format!("n{b}-new"));
    cluster.restart_node_with_data(b, wiped);
    cluster.restart_node(a);

    let (ok, report) = cluster.client_json(&["repair"]);
    assert!(ok, "repair right after the restart failed: {report}");
    assert_eq!(u(&report, "/n_chunks_unrecoverable"), 0, "{report}");
    assert_eq!(u(&report, "/n_chunks_unavailable"), 0, "{report}");
    assert!(u(&report, "/n_copies_made") >= 1, "node {b}'s copies were not made again: {report}");
    // Node a goes for good: every file must now read from the copies repair made.
    cluster.kill_node(a);
    for (id, data) in &files {
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} after repair and losing node {a}: {e}"));
        assert_bytes_eq(&got, data, id);
    }
}

/// A chunk whose copies are on a down node and a wiped one is unavailable, not lost; a chunk
/// whose every copy is gone from live nodes is lost. The report and the exit status say which.
#[test]
fn repair_tells_unavailable_chunks_from_lost_ones() {
    let mut cluster = Cluster::start(
        4,
        ClusterOpts { replicas: Some(2), engine_args: args(&["--ping-interval-secs", "3600"]), ..Default::default() },
    );
    let (files, a, b) = files_with_a_shared_pair(&cluster);
    cluster.kill_node(a);
    cluster.kill_node(b);
    let wiped = cluster.root().join("nodes").join(format!("n{b}-new"));
    cluster.restart_node_with_data(b, wiped);
    let out = cluster.client(["repair", "--json"]);
    assert!(!out.success(), "repair with chunks unavailable must fail: {}", out.describe());
    let report: Value = serde_json::from_slice(&out.stdout).expect("repair --json prints JSON");
    assert_eq!(u(&report, "/n_chunks_unrecoverable"), 0, "a chunk with a copy on a down node is not lost: {report}");
    assert!(u(&report, "/n_chunks_unavailable") >= 1, "{report}");
    assert!(
        out.stderr.contains("unavailable") && !out.stderr.contains("lost"),
        "the error line must say unavailable, not lost: {}",
        out.stderr
    );

    // Now a chunk loses both copies on live nodes: that one is lost.
    cluster.restart_node(a);
    let (ok, report) = cluster.client_json(&["repair"]);
    assert!(ok, "repair with node {a} back: {report}");
    let (id, _) = &files[1];
    // Every file of the chunk, including any copy a repair moved away from (gc's to collect).
    let copies = cluster.find_copies(id, 2);
    assert!(copies.len() >= 2, "chunk 2 of {id}: {copies:?}");
    for &node_idx in &copies {
        cluster.delete_copy(node_idx, chunk_id(id, 2));
    }
    let out = cluster.client(["repair", "--json"]);
    assert!(!out.success(), "repair with a lost chunk must fail: {}", out.describe());
    let report: Value = serde_json::from_slice(&out.stdout).expect("repair --json prints JSON");
    assert_eq!(u(&report, "/n_chunks_unrecoverable"), 1, "{report}");
    assert_eq!(u(&report, "/n_chunks_unavailable"), 0, "{report}");
    assert!(
        out.stderr.contains("lost") && !out.stderr.contains("unavailable"),
        "the error line must say lost, not unavailable: {}",
        out.stderr
    );
}

/// A TCP relay between the engine and a node that can make every connection open so far go
/// stale: the next bytes the engine sends on it close it instead of reaching the node, as a
/// connection the node dropped while it sat in the engine's pool would.
struct StaleProxy {
    addr: String,
    generation: Arc<AtomicU64>,
}

impl StaleProxy {
    fn start(upstream: String) -> StaleProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let generation = Arc::new(AtomicU64::new(0));
        let current = generation.clone();
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(&upstream) else { continue };
                let born = current.load(Ordering::SeqCst);
                let (down2, up2) = (down.try_clone().expect("clone"), up.try_clone().expect("clone"));
                let now = current.clone();
                // Engine to node: checks, before forwarding, whether the connection went stale.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (down, up);
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if now.load(Ordering::SeqCst) != born || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let (mut from, mut to) = (up2, down2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        StaleProxy { addr, generation }
    }

    fn make_open_connections_stale(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Regression: a pooled connection that failed on first use marked a healthy node down and
/// failed the read, where a fresh connection would have worked.
#[test]
fn a_stale_pooled_connection_is_retried_on_a_fresh_one() {
    let mut cluster = Cluster::start_nodes(4);
    let proxies: Vec<StaleProxy> = (0..4).map(|i| StaleProxy::start(cluster.node_addr(i).to_string())).collect();
    let mut cmd = Command::new(dfs_tests::bin("dfs-engine"));
    cmd.args(["--listen", "127.0.0.1:0", "--replicas", "1", "--threads", "1", "--ping-interval-secs", "3600"])
        .arg("--meta")
        .arg(cluster.root().join("meta"));
    for p in &proxies {
        cmd.arg("--node").arg(&p.addr);
    }
    cluster.adopt_engine(cmd);
    let data = pseudo_random_bytes(3, 3 * MIB as usize);
    let id = cluster.put_bytes(&data, "behind a proxy", Chunking::Equal);

    proxies.iter().for_each(StaleProxy::make_open_connections_stale);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} over stale pooled connections: {e}"));
    assert_bytes_eq(&got, &data, "a download over stale pooled connections");
    assert_eq!(nodes_down(&cluster), Vec::<String>::new(), "a stale pooled connection marked its node down");

    proxies.iter().for_each(StaleProxy::make_open_connections_stale);
    let (ok, report) = cluster.client_json(&["repair"]);
    assert!(ok, "repair over stale pooled connections: {report}");
    assert_eq!(u(&report, "/n_copies_made"), 0, "repair took stale connections for missing copies: {report}");
    assert_eq!(nodes_down(&cluster), Vec::<String>::new(), "a stale pooled connection marked its node down");
}

/// Regression: when the metadata commit returned an error after the record was in fact
/// committed, the upload was answered with an error and its chunks deleted, leaving a record
/// that points at nothing.
#[test]
fn a_commit_error_after_the_commit_does_not_delete_the_chunks() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            replicas: Some(1),
            engine_env: vec![("DFS_FAILPOINTS".into(), "meta-insert-commit-then-error".into())],
            ..ClusterOpts::default()
        },
    );
    let data = pseudo_random_bytes(4, 2 * MIB as usize);
    let id = cluster
        .try_put_bytes(&data, "commit error", Chunking::Equal)
        .unwrap_or_else(|out| panic!("a put whose record was committed failed: {}", out.describe()));
    // Chunks of a failed upload are deleted in the background: give that a moment (a fixed
    // wait: that no delete comes is not a condition one can wait for).
    std::thread::sleep(Duration::from_secs(1));
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id}: {e}"));
    assert_bytes_eq(&got, &data, "a file whose commit reported an error");
    assert_eq!(cluster.ls().len(), 1, "exactly the one file is listed");
}

/// Regression: gc read a chunk's file record before it looked at the uploads in progress, so an
/// upload that committed between the two steps lost a chunk. The engine pauses gc right after
/// the record is read (a test failpoint) while the upload finishes.
#[test]
fn gc_does_not_collect_a_chunk_whose_upload_commits_meanwhile() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            replicas: Some(1),
            engine_env: vec![("DFS_FAILPOINTS".into(), "gc-after-record-read=2000".into())],
            ..ClusterOpts::default()
        },
    );
    let data = pseudo_random_bytes(5, 256 * MIB as usize);
    let input = cluster.write_input(&data);
    let mut client = cluster.spawn_client(["put".as_ref(), input.as_os_str()]);
    // Wait for the first chunk to be durable on its node, then hold the client there.
    dfs_tests::wait_until("a chunk of the upload to be durable on its node", Duration::from_secs(60), || {
        if (0..4).any(|n| !cluster.chunk_files(n).is_empty()) {
            return true;
        }
        assert!(client.try_wait().expect("poll the client").is_none(), "the upload ended too soon");
        false
    });
    signal(client.id(), "STOP");
    let gc = cluster.spawn_client(["gc", "--grace-secs", "0"]);
    // A fixed wait for gc to reach the upload's chunk: the buggy gc then pauses in the failpoint
    // after reading the record, but a correct one sees the upload in progress and never reaches
    // the failpoint, so its log line cannot be waited for.
    std::thread::sleep(Duration::from_millis(700));
    signal(client.id(), "CONT");
    let out = client.wait_with_output().expect("wait for the upload");
    assert!(out.status.success(), "the upload failed ({})", out.status);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let gc_out = gc.wait_with_output().expect("wait for gc");
    assert!(gc_out.status.success(), "gc failed: {}", String::from_utf8_lossy(&gc_out.stdout));
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} after gc ran during its upload: {e}"));
    assert_bytes_eq(&got, &data, "a file uploaded while gc ran");
}

/// Regression (found by dfs-sim): gc's DELETE of an orphan copy could land after a repair had
/// written the chunk to that node again (a DELETE delayed on a node that hung, or that timed
/// out and was carried out later), deleting the new copy. gc now deletes only a copy stored
/// before its listing. Here gc pauses between its decision and its DELETE (a test failpoint)
/// while a new copy of the chunk replaces the orphan.
#[test]
fn gc_keeps_a_copy_written_after_its_listing() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            replicas: Some(1),
            engine_env: vec![("DFS_FAILPOINTS".into(), "gc-before-delete=3000".into())],
            ..ClusterOpts::default()
        },
    );
    let data = pseudo_random_bytes(9, 64 * 1024);
    let id = cluster.put_bytes(&data, "kept", Chunking::Equal);
    let chunk = chunk_id(&id, 0);
    let holder = cluster.find_copies(&id, 0);
    let other = (0..4).find(|n| !holder.contains(n)).expect("a node without the chunk");
    let quarter = &data[..16 * 1024];
    // An orphan: a copy on a node the file does not place it on.
    cluster.store_copy(other, chunk, quarter);
    let gc = cluster.spawn_client(["gc", "--grace-secs", "0", "--json"]);
    // Once gc has listed the node and pauses before its DELETE, the orphan is replaced by a new
    // copy, as a repair writing there would. (A fixed wait here let a slow gc list the node
    // after the new copy was written, and rightly delete it.) The short sleep leaves the new
    // copy clearly younger than the listing.
    let log = cluster.engine_stderr_log();
    dfs_tests::wait_until("gc to pause before its DELETE", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("failpoint gc-before-delete: pausing"))
    });
    std::thread::sleep(Duration::from_millis(100));
    cluster.delete_copy(other, chunk);
    cluster.store_copy(other, chunk, quarter);
    let out = gc.wait_with_output().expect("wait for gc");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gc failed: {report}");
    assert!(
        cluster.stored_chunk_ids(other).contains(&chunk),
        "gc deleted the copy written on node {other} after it listed the node: {report}"
    );
    assert!(report.contains("kept, written again since the listing"), "gc must say why it kept the copy: {report}");
}

/// The `dfs_engine_get_buffer_bytes_peak` value an engine's metrics show.
fn buffer_peak(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let addr = text
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ' ', '\n']).next())
        .unwrap_or_else(|| panic!("the engine logged no metrics address: {text}"))
        .to_string();
    let mut s = TcpStream::connect(&addr).expect("connect to metrics");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("dfs_engine_get_buffer_bytes_peak "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no dfs_engine_get_buffer_bytes_peak in {body}"))
}

/// Regression: a buffered download that re-read a chunk from its second copy allocated a new
/// buffer for it outside `--buffer-budget`.
#[test]
fn a_chunk_read_again_stays_inside_the_buffer_budget() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            replicas: Some(2),
            buffer_budget_bytes: Some(4 * MIB),
            engine_args: args(&["--metrics", "127.0.0.1:0"]),
            ..ClusterOpts::default()
        },
    );
    // Exactly the budget, so any buffer beyond the file's own shows.
    let data = pseudo_random_bytes(6, 4 * MIB as usize);
    let id = cluster.put_bytes(&data, "fills the budget", Chunking::Equal);
    let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
    for chunk in &stat.chunks {
        // The copy read first is the first one placed: take it away.
        let first = cluster.node_idx_of(&chunk.nodes[0]).expect("a cluster node");
        assert!(
            cluster.find_copies(&id, chunk.index).contains(&first),
            "chunk {} has no copy on node {first}",
            chunk.index
        );
        cluster.delete_copy(first, chunk_id(&id, chunk.index));
    }
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} with every first copy gone: {e}"));
    assert_bytes_eq(&got, &data, "a buffered download read from second copies");
    let peak = buffer_peak(&cluster.engine_stderr_log());
    assert!(peak <= 4 * MIB, "download buffers peaked at {peak} bytes with a budget of {} bytes", 4 * MIB);
    assert!(peak >= 4 * MIB, "the download's own buffer was not counted: peak {peak}");
}

/// Regression: a node whose idle timeout expired did not really close the connection: the
/// abandoned read kept the descriptor open until the peer next sent something, so an engine
/// saw a pooled connection as alive, sent a request into it and had it reset.
#[test]
fn an_idle_timeout_closes_the_connection_at_once() {
    use dfs_proto::io_std::{read_frame, write_msg, Frame};
    use dfs_proto::{Hello, Msg, Role};
    let cluster = Cluster::start(4, ClusterOpts { idle_timeout_secs: Some(1), ..ClusterOpts::default() });
    for (what, addr, role) in
        [("node", cluster.node_addr(0), Role::Engine), ("engine", cluster.engine_addr(), Role::Client)]
    {
        let mut s = dfs_tests::raw_connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("set read timeout");
        write_msg(&mut s, &Msg::Hello(Hello::new(role))).expect("send Hello");
        match read_frame(&mut s) {
            Ok(Frame::Msg(Msg::HelloOk(h))) => assert_eq!(h.idle_timeout_ms, 1000, "{what} announces its idle timeout"),
            other => panic!("{what} answered Hello with {other:?}"),
        }
        // Say nothing: within the idle timeout and some slack, the server must hang up.
        let started = Instant::now();
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what}: an idle connection was not closed after {:?}: {other:?}", started.elapsed()),
        }
        assert!(started.elapsed() < Duration::from_secs(4), "{what} took {:?} to close", started.elapsed());
    }
}
