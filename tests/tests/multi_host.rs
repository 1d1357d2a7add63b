//! Several hosts: every node, engine, client and the PostgreSQL server in a network namespace of
//! its own (`dfs_tests::netns`), so that one engine can be cut off from some nodes while the
//! other engine still reaches them. Needs root, iproute2 and nftables.

use dfs_proto::Chunking;
use dfs_tests::netns::Net;
use dfs_tests::pg::Postgres;
use dfs_tests::{assert_bytes_eq, mentions_chunk, pseudo_random_bytes, Cluster, ClusterOpts};
use std::sync::Arc;

/// For each file, the first chunk with no copy outside `cut_off` (by `stat` through the engine
/// clients use now).
fn unreachable_chunks(cluster: &Cluster, files: &[(String, Vec<u8>)], cut_off: &[String]) -> Vec<Option<u32>> {
    files
        .iter()
        .map(|(id, _)| {
            let stat = cluster.stat(id).expect("stat");
            stat.chunks.iter().find(|c| c.nodes.iter().all(|n| cut_off.contains(n))).map(|c| c.index)
        })
        .collect()
}

/// Engine A is cut off from two nodes (packets dropped both ways, as by a partition) while B
/// still reaches every node:
/// 1. from nodes 0 and 2, which never hold both copies of a chunk: A reads every file around
///    the cut, and puts only on the nodes it reaches;
/// 2. from nodes 0 and 1: through A exactly the files with a chunk whose copies are all on
///    those two fail, each with an error naming that chunk, the others read byte-identical;
///    through B, and for a client given A,B, every file reads.
///
/// Once the cut heals, A reads everything again.
#[test]
fn an_engine_cut_off_from_two_nodes_fails_only_what_it_cannot_reach_and_the_other_engine_serves_all() {
    let net = Arc::new(Net::create());
    let pg = Postgres::start_in(&net);
    let opts = ClusterOpts {
        postgres: Some((pg.url(), pg.password_file())),
        net: Some(net.clone()),
        access_key: true,
        cluster_secret: true,
        engine_args: ["--node-connect-timeout-secs", "1", "--node-idle-timeout-secs", "2", "--ping-interval-secs", "1"]
            .map(String::from)
            .to_vec(),
        ..ClusterOpts::default()
    };
    let mut cluster = Cluster::start(4, opts);
    let a = cluster.engine_addr().to_string();
    let b = cluster.start_another_engine();
    let node = |i: usize| cluster.node_addr(i).to_string();
    let (n0, n1, n2) = (node(0), node(1), node(2));
    let both = format!("{a},{b}");

    cluster.use_server(Some(&b));
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let data = pseudo_random_bytes(70 + i, 40_000 + 1000 * i as usize);
            (cluster.put_bytes(&data, &format!("f{i}"), Chunking::Equal), data)
        })
        .collect();
    let a_host = net.label_of(&a);

    // 1. Cut from nodes 0 and 2.
    let cut_off = [n0.clone(), n2.clone()];
    assert!(unreachable_chunks(&cluster, &files, &cut_off).iter().all(Option::is_none));
    net.cut(&a_host, &[&n0, &n2]);
    cluster.use_server(Some(&a));
    for (id, data) in &files {
        assert_bytes_eq(&cluster.get(id).expect("A reads around the cut"), data, id);
    }
    let data = pseudo_random_bytes(99, 123_456);
    let put_while_cut = cluster.put_bytes(&data, "put-while-cut", Chunking::Equal);
    for chunk in &cluster.stat(&put_while_cut).expect("stat").chunks {
        assert!(chunk.nodes.iter().all(|n| !cut_off.contains(n)), "a copy on a node A cannot reach: {chunk:?}");
    }
    cluster.use_server(Some(&b));
    assert_bytes_eq(&cluster.get(&put_while_cut).expect("B reads what A put while cut"), &data, "put-while-cut");
    net.heal(&a_host);

    // 2. Cut from nodes 0 and 1.
    let cut_off = [n0.clone(), n1.clone()];
    let unreachable = unreachable_chunks(&cluster, &files, &cut_off);
    assert!(unreachable.iter().any(Option::is_some), "some chunk has both copies on nodes 0 and 1");
    net.cut(&a_host, &[&n0, &n1]);
    for (id, data) in &files {
        assert_bytes_eq(&cluster.get(id).expect("B reaches every node"), data, id);
    }
    cluster.use_server(Some(&a));
    for ((id, data), chunk) in files.iter().zip(&unreachable) {
        match (cluster.get(id), chunk) {
            (Ok(got), None) => assert_bytes_eq(&got, data, id),
            (Err(e), Some(idx)) => assert!(mentions_chunk(&e, id, *idx), "A's error must name chunk {idx}: {e}"),
            (Ok(_), Some(idx)) => panic!("A read {id} though chunk {idx} has no copy it reaches"),
            (Err(e), None) => panic!("A failed {id}, whose every chunk has a copy it reaches: {e}"),
        }
    }
    cluster.use_server(Some(&both));
    for (id, data) in &files {
        assert_bytes_eq(&cluster.get(id).expect("a client given A,B reads every file"), data, id);
    }

    net.heal(&a_host);
    cluster.use_server(Some(&a));
    // One deadline for all the files, which are read in order, each once it reads.
    let mut n_read = 0;
    dfs_tests::wait_until("A to read every file after the cut healed", std::time::Duration::from_secs(20), || {
        while let Some((id, data)) = files.get(n_read) {
            match cluster.get(id) {
                Ok(got) => {
                    assert_bytes_eq(&got, data, id);
                    n_read += 1;
                }
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    return false;
                }
            }
        }
        true
    });
}
