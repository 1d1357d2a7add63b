//! Uploads come back byte for byte, in both chunking modes, at the edge sizes of the four-way
//! split, at a size that spans many checksum blocks, and past the engine's buffer budget.

use dfs_proto::Chunking;
use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, Cluster, ClusterOpts};

const MIB: u64 = 1 << 20;

/// Puts `data`, checks `stat` against it, and reads it back both to a file and to stdout.
fn check_round_trip(cluster: &Cluster, seed: u64, size: usize, chunking: Chunking) {
    let data = pseudo_random_bytes(seed, size);
    let name = format!("rt-{size}-{chunking}.bin");
    let id = cluster.put_bytes(&data, &name, chunking);
    let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id} of {name:?}: {e}"));
    cluster.assert_stat_describes(&id, &stat, &data, &name, chunking);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} ({name:?}, -o file): {e}"));
    assert_bytes_eq(&got, &data, &format!("get {id} ({name:?}) -o file"));
    let got = cluster.get_stdout(&id).unwrap_or_else(|e| panic!("get {id} ({name:?}, -o -): {e}"));
    assert_bytes_eq(&got, &data, &format!("get {id} ({name:?}) -o -"));
}

#[test]
fn edge_sizes_round_trip_byte_identical_in_both_chunkings() {
    let cluster = Cluster::start(4, ClusterOpts { chunk_size_max_bytes: Some(MIB), ..Default::default() });
    // 0 to 5 cover empty and partly empty quarters; 4097 a ragged last quarter; 1 MiB + 3 chunks
    // that are not a whole number of checksum blocks.
    let sizes = [0, 1, 2, 3, 4, 5, 4097, MIB as usize + 3];
    for (i, size) in sizes.into_iter().enumerate() {
        for chunking in [Chunking::Equal, Chunking::Dynamic] {
            check_round_trip(&cluster, i as u64 + 1, size, chunking);
        }
    }
}

#[test]
fn dynamic_chunking_gives_multiples_of_four_chunks_under_the_cap() {
    let cap = MIB;
    let cluster = Cluster::start(4, ClusterOpts { chunk_size_max_bytes: Some(cap), ..Default::default() });
    // (size, expected chunk count): 4 chunks as long as a quarter fits under the cap, then 4 more
    // for every further 4 caps.
    let cases = [(4 * MIB, 4), (4 * MIB + 1, 8), (5 * MIB, 8), (9 * MIB + 1, 12)];
    for (i, (size, n_chunks)) in cases.into_iter().enumerate() {
        let data = pseudo_random_bytes(100 + i as u64, size as usize);
        let name = format!("dyn-{size}");
        let id = cluster.put_bytes(&data, &name, Chunking::Dynamic);
        let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
        assert_eq!(stat.chunks.len(), n_chunks, "{size} bytes with a {cap}-byte cap: chunk count");
        cluster.assert_stat_describes(&id, &stat, &data, &name, Chunking::Dynamic);
        let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} ({size} bytes, dynamic): {e}"));
        assert_bytes_eq(&got, &data, &format!("get {id} ({size} bytes, dynamic)"));
    }
}

#[test]
fn sixty_four_mib_random_file_round_trips_byte_identical() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let size = 64 * MIB as usize + 5;
    let data = pseudo_random_bytes(64, size);
    let id = cluster.put_bytes(&data, "big.bin", Chunking::Equal);
    let stat = cluster.stat(&id).unwrap_or_else(|e| panic!("stat {id}: {e}"));
    cluster.assert_stat_describes(&id, &stat, &data, "big.bin", Chunking::Equal);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} (64 MiB + 5): {e}"));
    assert_bytes_eq(&got, &data, &format!("get {id} (64 MiB + 5)"));
}

/// A file larger than the engine's download buffer budget is streamed (the engine's
/// `dfs_engine_downloads_total{how="streamed"}` counts each such GET, and none is buffered),
/// and arrives byte-identical.
#[test]
fn get_larger_than_the_buffer_budget_streams_byte_identical() {
    let cluster = Cluster::start(
        4,
        ClusterOpts {
            buffer_budget_bytes: Some(MIB),
            chunk_size_max_bytes: Some(MIB),
            engine_args: vec!["--metrics".into(), "127.0.0.1:0".into()],
            ..ClusterOpts::default()
        },
    );
    let metrics = dfs_tests::http::logged_addr(&cluster.engine_stderr_log(), "metrics");
    let downloads = |how: &str| -> f64 {
        let body = dfs_tests::http::get(&metrics, "/metrics", &[]).body;
        let series = format!("dfs_engine_downloads_total{{how=\"{how}\"}} ");
        body.lines().find_map(|l| l.strip_prefix(series.as_str())).map_or(0.0, |v| v.trim().parse().expect("a number"))
    };
    // 8 MiB + 7 is eight times the budget, and its chunks are neither block- nor budget-aligned.
    let size = 8 * MIB as usize + 7;
    for (seed, chunking) in [(80, Chunking::Equal), (81, Chunking::Dynamic)] {
        check_round_trip(&cluster, seed, size, chunking);
    }
    assert_eq!(downloads("streamed"), 4.0, "every download (two files, to a file and to stdout) was streamed");
    assert_eq!(downloads("buffered"), 0.0, "no download was buffered whole");
}
