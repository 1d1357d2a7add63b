//! Metadata in PostgreSQL: several engines over one PostgreSQL server and the same nodes. Each
//! test starts a PostgreSQL of its own (`dfs_tests::pg`), real nodes and real engines.

use dfs_proto::Chunking;
use dfs_tests::pg::Postgres;
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, Cluster, ClusterOpts};

fn opts(pg: &Postgres) -> ClusterOpts {
    ClusterOpts { postgres: Some((pg.url(), pg.password_file())), ..ClusterOpts::default() }
}

fn sorted_ls(cluster: &Cluster) -> Vec<(String, String, u64)> {
    let mut ls: Vec<_> = cluster.ls().into_iter().map(|e| (e.id, e.name, e.size)).collect();
    ls.sort();
    ls
}

#[test]
fn a_file_put_through_one_engine_is_listed_read_and_removed_through_the_other() {
    let pg = Postgres::start();
    let mut cluster = Cluster::start(4, opts(&pg));
    let a = cluster.engine_addr().to_string();
    let b = cluster.start_another_engine();
    let sizes = [0usize, 1, 4096, 4097, 1 << 20, (3 << 20) + 5, 64 << 20];
    let mut files = Vec::new();
    cluster.use_server(Some(&a));
    for (i, &size) in sizes.iter().enumerate() {
        let data = pseudo_random_bytes(i as u64, size);
        let chunking = if i % 2 == 0 { Chunking::Equal } else { Chunking::Dynamic };
        let id = cluster.put_bytes(&data, &format!("f{i}"), chunking);
        files.push((id, data));
    }
    let through_a = sorted_ls(&cluster);
    cluster.use_server(Some(&b));
    for (id, data) in &files {
        let got = cluster.get(id).unwrap_or_else(|e| panic!("get {id} ({} bytes) through B: {e}", data.len()));
        assert_bytes_eq(&got, data, &format!("{id} put through A, read through B"));
    }
    let through_b = sorted_ls(&cluster);
    assert_eq!(through_a.len(), sizes.len(), "ls through A lists every file once");
    assert_eq!(through_a, through_b, "ls is the same through both engines");

    // Removed through B: gone through A at once.
    let (gone, _) = &files[2];
    cluster.rm(gone).expect("rm through B");
    cluster.use_server(Some(&a));
    let err = cluster.get(gone).expect_err("a file removed through B must be gone through A");
    assert!(err.contains("not found"), "{err}");
    assert_eq!(sorted_ls(&cluster).len(), sizes.len() - 1);
    // And a file put through B reads through A.
    cluster.use_server(Some(&b));
    let data = pseudo_random_bytes(99, 100_000);
    let id = cluster.put_bytes(&data, "from-b", Chunking::Equal);
    cluster.use_server(Some(&a));
    assert_bytes_eq(&cluster.get(&id).expect("get through A"), &data, "put through B, read through A");
}

#[test]
fn a_database_newer_than_the_engine_is_refused_with_its_version() {
    let pg = Postgres::start();
    let mut cluster = Cluster::start(4, opts(&pg));
    let id = cluster.put_bytes(b"kept", "kept", Chunking::Equal);
    pg.sql("INSERT INTO dfs_schema (version, applied_unix_ms) VALUES (99, 0)");
    cluster.kill_engine();
    let engine = std::process::Command::new(dfs_tests::bin("dfs-engine"))
        .args(["--listen", "127.0.0.1:0", "--meta", &pg.url(), "--meta-password-file"])
        .arg(pg.password_file())
        .args(cluster.node_addrs().iter().flat_map(|a| ["--node".to_string(), a.clone()]))
        .output()
        .expect("run dfs-engine");
    let stderr = String::from_utf8_lossy(&engine.stderr);
    assert!(!engine.status.success(), "an engine must refuse a newer schema");
    assert!(stderr.contains("schema version 99, newer than this engine's 1"), "{stderr}");
    // Nothing was touched: back at the old version, the file is still there.
    pg.sql("DELETE FROM dfs_schema WHERE version = 99");
    cluster.start_engine_again();
    assert_eq!(cluster.get(&id).expect("get after the refused start"), b"kept");
}

#[test]
fn a_wrong_password_is_a_one_line_error_naming_the_database() {
    let pg = Postgres::start();
    let cluster = Cluster::start_nodes(4);
    let wrong = cluster.root().join("wrong.pw");
    std::fs::write(&wrong, "not-the-password\n").expect("write");
    let out = std::process::Command::new(dfs_tests::bin("dfs-engine"))
        .args(["--listen", "127.0.0.1:0", "--meta", &pg.url(), "--meta-password-file"])
        .arg(&wrong)
        .args(cluster.node_addrs().iter().flat_map(|a| ["--node".to_string(), a.clone()]))
        .output()
        .expect("run dfs-engine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("PostgreSQL") && stderr.contains("password authentication failed"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "the password must never be printed: {stderr}");
}
