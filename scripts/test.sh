#!/usr/bin/env bash
# Runs every test: unit and property tests in each crate, and the integration tests in tests/
# that start real dfs-engine and dfs-node processes on loopback. The binaries are built first
# because the integration tests run them.
set -euo pipefail
cd "$(dirname "$0")/.."
# PostgreSQL, when missing (the PostgreSQL metadata tests start servers of their own).
./scripts/deps.sh
cargo build --workspace --bins
# Nodes run the segment store (the default) with 16 MiB segments instead of 64 MiB: every test
# starts its own nodes, and each prepares a segment and a spare ahead of need.
export DFS_SEGMENT_SIZE="${DFS_SEGMENT_SIZE:-16MiB}"
run() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --no-fail-fast "$@"
    else
        echo "cargo-nextest not found; running cargo test instead" >&2
        cargo test --no-fail-fast "$@"
    fi
}
# The test that moves up to 1 GiB through each S3 client (two minutes) runs in the first
# pass only: the other passes' data paths are exercised by every other S3 test, at sizes that
# cover the same multipart and streaming cases.
once=each_client_moves_0_b_to_1_gib_with_its_own_multipart
run_again() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --no-fail-fast -E "not test(=$once)" "$@"
    else
        cargo test --no-fail-fast "$@" -- --skip "$once"
    fi
}
# Everything with engine and nodes on the splice path, then the integration suite again with the
# engine and nodes forced onto the copy path, so both data paths pass every test.
echo "== all tests, data path: splice"
DFS_DATA_PATH=splice run --workspace "$@"
# The copy pass also writes segments with O_DIRECT (`--segment-io direct`), so both ways a node
# can write its records pass every test.
echo "== integration tests, data path: copy, segments written with O_DIRECT"
DFS_DATA_PATH=copy DFS_SEGMENT_IO=direct run_again -p dfs-tests "$@"
# And once more with io_uring switched off, as where a kernel or container refuses it.
echo "== integration tests, I/O backend: epoll (io_uring off)"
DFS_IO=epoll DFS_DATA_PATH=copy run_again -p dfs-tests "$@"
# And the integration suite once more with every node on the chunk-file store (`--store files`,
# the layout before segments), which a node can still run. Tests that find, delete or damage
# copies on disk do it through the harness's store-neutral helpers; the two that need what only
# chunk files do pin `--store files` and say why.
echo "== integration tests, node store: files"
DFS_STORE=files run_again -p dfs-tests "$@"
# The deterministic simulation of the engine's failure handling: a bounded number of seeds on
# every run, plus every seed that ever failed. A longer run: `cargo run --release -p dfs-sim --
# --seeds 100000`; one seed replayed with what it did: `-- --seed S --trace`.
echo "== simulation: ${DFS_SIM_SEEDS:-2000} seeds and the regression seeds"
cargo run --release -p dfs-sim -- --seeds "${DFS_SIM_SEEDS:-2000}" --regressions sim/regressions.txt
