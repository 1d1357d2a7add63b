//! `--config FILE`: an engine configured by a TOML file, with a command-line flag overriding
//! one of the file's settings, and a file with an unknown setting refused before anything starts.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, bin, pseudo_random_bytes, Cluster};
use std::process::Command;

#[test]
fn an_engine_runs_from_a_config_file_and_flags_override_it() {
    let mut cluster = Cluster::start_nodes(4);
    let nodes: Vec<String> = cluster.node_addrs().iter().map(|a| format!("{a:?}")).collect();
    let config = cluster.root().join("engine.toml");
    let meta = cluster.root().join("meta");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmeta = {:?}\nnode = [{}]\nreplicas = 2\nchunk_size_max = \"1MiB\"\n",
            meta.to_str().expect("utf-8 path"),
            nodes.join(", ")
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(bin("dfs-engine"));
    cmd.arg("--config").arg(&config).args(["--replicas", "1"]);
    cluster.adopt_engine(cmd);

    let data = pseudo_random_bytes(3, 3 << 20);
    let id = cluster.put_bytes(&data, "configured", Chunking::Dynamic);
    let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
    // chunk_size_max from the file: 3 MiB in chunks of at most 1 MiB.
    assert!(stat.chunks.len() >= 4 && stat.chunks.iter().all(|c| c.length <= 1 << 20), "{:?}", stat.chunks);
    // --replicas 1 on the command line beat replicas = 2 in the file.
    assert!(stat.chunks.iter().all(|c| c.nodes.len() == 1), "the flag must override the file: {:?}", stat.chunks);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id}: {e}"));
    assert_bytes_eq(&got, &data, "a file stored by a configured engine");

    let bad = cluster.root().join("bad.toml");
    std::fs::write(&bad, "replicas = 2\nreplicaz = 3\n").expect("write config");
    let out = Command::new(bin("dfs-engine")).arg("--config").arg(&bad).output().expect("run dfs-engine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown setting \"replicaz\"") && stderr.contains("bad.toml"), "{stderr}");
}

/// A setting in the environment that is set but empty (`DFS_TOKEN_FILE=` left in a shell
/// profile) is taken as unset by every binary, not refused as a missing value: an engine and
/// nodes started with empty `DFS_REPLICAS`, `DFS_STORE` and `DFS_SEGMENT_SIZE` run on their
/// defaults, a client with an empty `DFS_TOKEN_FILE` presents the key given by `--token`, and
/// one with an empty `DFS_SERVER` goes to the default address rather than to "".
#[test]
fn empty_settings_in_the_environment_are_taken_as_unset() {
    let empty = |names: &[&str]| names.iter().map(|n| (n.to_string(), String::new())).collect::<Vec<_>>();
    let cluster = Cluster::start(
        4,
        dfs_tests::ClusterOpts {
            access_key: true,
            engine_env: empty(&["DFS_REPLICAS", "DFS_DATA_PATH"]),
            node_env: empty(&["DFS_STORE", "DFS_SEGMENT_SIZE", "DFS_COMMIT_SYNC"]),
            ..dfs_tests::ClusterOpts::default()
        },
    );
    let data = pseudo_random_bytes(11, 100_000);
    let id = cluster.put_bytes(&data, "empty-env.bin", Chunking::Equal);
    let key_file = cluster.root().join("access.key");
    let key = std::fs::read_to_string(&key_file).expect("the cluster's access key");
    let out = Command::new(bin("dfs-client"))
        .args(["--server", cluster.engine_addr(), "--token", key.trim(), "stat", &id])
        .env("DFS_TOKEN_FILE", "")
        .output()
        .expect("run dfs-client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "an empty DFS_TOKEN_FILE beside --token: {stderr}");
    // The default two copies with four nodes: the engine's empty DFS_REPLICAS was ignored.
    let (ok, stat) = cluster.client_json(&["stat", &id]);
    assert!(ok, "stat --json: {stat}");
    let copies: Vec<usize> = stat["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| c["nodes"].as_array().map_or(0, |n| n.len()))
        .collect();
    assert_eq!(copies, [2, 2, 2, 2], "two copies of each chunk: {stat}");
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id}: {e}"));
    assert_bytes_eq(&got, &data, "a file stored with empty settings in the environment");
    let out = Command::new(bin("dfs-client"))
        .args(["ls"])
        .env("DFS_SERVER", "")
        .env("DFS_TOKEN_FILE", &key_file)
        .output()
        .expect("run dfs-client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("invalid socket address"), "an empty DFS_SERVER is not an address: {stderr}");
    assert!(out.status.success() || stderr.contains("127.0.0.1:7700"), "the default address: {stderr}");
}
