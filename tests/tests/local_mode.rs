//! `dfs-engine --local 4` starts a whole cluster from one command: the engine and four node
//! processes of its own, with their data under `--data`.

use dfs_proto::{Chunking, FileId};
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, store_of, stored_chunk_ids_in, Cluster, Store};
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;

/// Start attempts, each on another run of ports, before the test gives up.
const N_START_ATTEMPTS: usize = 5;

/// A port P such that P..=P+n are free right now, chosen at random below the kernel's ephemeral
/// range, so that neither port-0 listeners nor outgoing connections of parallel tests take them.
fn free_port_run(n: u16) -> u16 {
    let ephemeral_low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(n + 1).max(10_001));
    for _ in 0..100 {
        let mut r = [0u8; 2];
        getrandom::getrandom(&mut r).expect("OS random source");
        let port = low + u16::from_le_bytes(r) % (high - low);
        let all_free = (0..=n).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if all_free {
            return port;
        }
    }
    panic!("found no {} consecutive free ports between {low} and {high}", n + 1)
}

/// Pids of the live processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && fields.first() != Some(&"Z") {
            out.push(pid);
        }
    }
    out
}

/// Ends the local engine and then the node processes it started, by pid, even if the test fails;
/// the engine first, so it cannot start replacements.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn local_mode_starts_four_nodes_and_round_trips() {
    let mut cluster = Cluster::empty();
    let data_dir = cluster.root().join("local");
    let mut errors = Vec::new();
    let engine_pid = loop {
        let port = free_port_run(4);
        match cluster.try_start_local_engine(4, &data_dir, port) {
            Ok(pid) => break pid,
            Err(e) if errors.len() + 1 < N_START_ATTEMPTS => errors.push(e),
            Err(e) => {
                panic!("--local 4 did not start in {N_START_ATTEMPTS} attempts; the last: {e}\nearlier: {errors:#?}")
            }
        }
    };
    let node_pids: Vec<u32> = children_of(engine_pid)
        .into_iter()
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "dfs-node"))
        .collect();
    let _guard = KillOnDrop([vec![engine_pid], node_pids.clone()].concat());
    assert_eq!(node_pids.len(), 4, "--local 4 must run 4 dfs-node child processes, found pids {node_pids:?}");

    let data = pseudo_random_bytes(4, 400_001);
    let id = cluster.put_bytes(&data, "local.bin", Chunking::Equal);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} from a --local cluster: {e}"));
    assert_bytes_eq(&got, &data, "a file round-tripped through --local 4");

    let file_id: FileId = id.parse().expect("well-formed ID");
    // Two copies of each chunk (the default with 4 nodes), in two different node directories,
    // read from disk: chunk files, or segment records (the nodes inherit DFS_STORE).
    let node_dirs: Vec<PathBuf> = fs::read_dir(&data_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", data_dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    let stores: Vec<(PathBuf, Option<Store>)> = node_dirs.iter().map(|d| (d.clone(), store_of(d))).collect();
    assert_eq!(
        stores.iter().filter(|(_, s)| s.is_some()).count(),
        4,
        "--local 4 must keep four node data directories under {}: {stores:?}",
        data_dir.display()
    );
    // The engine's nodes inherit its environment, DFS_STORE included; segments by default.
    let wanted = match std::env::var("DFS_STORE").as_deref() {
        Ok("files") => Store::Files,
        _ => Store::Segments,
    };
    for (dir, store) in &stores {
        assert!(store.is_none() || *store == Some(wanted), "{} holds a {store:?} store, not {wanted:?}", dir.display());
    }
    let mut copies: Vec<(u32, PathBuf)> = stores
        .iter()
        .filter(|(_, s)| s.is_some())
        .flat_map(|(dir, _)| {
            let node_dir = dir.strip_prefix(&data_dir).expect("under the data directory").to_path_buf();
            stored_chunk_ids_in(dir)
                .into_iter()
                .filter(|c| c.file_id == file_id)
                .map(move |c| (c.chunk_idx, node_dir.clone()))
        })
        .collect();
    copies.sort();
    let chunk_idxs: Vec<u32> = copies.iter().map(|(i, _)| *i).collect();
    assert_eq!(chunk_idxs, [0, 0, 1, 1, 2, 2, 3, 3], "copies of {id}'s chunks under {}", data_dir.display());
    for pair in copies.chunks(2) {
        assert_ne!(pair[0].1, pair[1].1, "both copies of chunk {} of {id} are on one node", pair[0].0);
    }
    assert!(cluster.engine_alive(), "the local engine died");
}

#[test]
fn put_bench_local_runs_its_own_cluster_on_free_ports() {
    // `--local` starts `dfs-engine --local 4 --listen 127.0.0.1:0`: every process takes a free
    // port of its own, and the client presents the cluster's own access key.
    for extra in [&[][..], &["--get"][..]] {
        let mut cmd = std::process::Command::new(dfs_tests::bin("dfs-client"));
        cmd.args(["put", "--bench", "--local", "--size", "64KiB", "--count", "20", "--concurrency", "4", "--json"]);
        cmd.args(extra).env_remove("DFS_TOKEN_FILE").env_remove("DFS_SERVER");
        let out = cmd.output().expect("run dfs-client put --bench --local");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "put --bench --local {extra:?} failed: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(report["count"], 20, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["ops_s"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    }
}
