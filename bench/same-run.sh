#!/usr/bin/env bash
# The storage-engine figures of perf.md in one run, each next to its baseline on this machine:
#   - 1 GiB put and get, one copy and two, against the ideal relay with --keep in its four
#     modes (rw, splice, each with and without --direct) and its get in both modes;
#   - 4 KiB puts and gets, 10,000 at concurrency 32, one copy and two, against SeaweedFS
#     (../shared/baselines/seaweedfs/run.sh small 4096 10000 32, writes with -fsync);
#   - put -r of a real tree (default /usr/share): files/s.
# Needs the release binaries (cargo build --release --workspace --bins). Every dfs figure runs
# on a fresh `--local` cluster that keeps what it is given until the run ends.
#   RUNS   runs per 1 GiB figure (default 3)
#   TREE   the tree for put -r (default /usr/share)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
tree=${TREE:-/usr/share}
bin=$PWD/target/release
baselines=$PWD/../shared/baselines
work=$(mktemp -d /tmp/dfs-same-run.XXXXXX)
trap 'rm -rf "$work"' EXIT
say() { printf '\n## %s\n$ %s\n' "$1" "$2"; }
only() { grep -E "$1" || true; }

cargo build --release --quiet --manifest-path "$baselines/relay/Cargo.toml" --target-dir "$PWD/target/baselines"
relay=$PWD/target/baselines/release/relay

echo "# same run, $(date -u +%FT%TZ), $(git rev-parse --short HEAD), $(nproc) cores"
for mode in rw splice; do
    for direct in "" --direct; do
        cmd="relay put --size 1073741824 --mode $mode --keep $direct --runs $runs"
        say "relay put 1 GiB, $mode ${direct:-buffered}, kept" "$cmd"
        mkdir -p "$work/relay" && "$relay" put --size 1073741824 --dir "$work/relay" --mode "$mode" --keep $direct \
            --runs "$runs" | only median
        rm -rf "$work/relay"
    done
    say "relay get 1 GiB, $mode" "relay get --size 1073741824 --mode $mode --runs $runs"
    mkdir -p "$work/relay" && "$relay" get --size 1073741824 --dir "$work/relay" --mode "$mode" --runs "$runs" | only median
    rm -rf "$work/relay"
done
for r in 1 2; do
    cmd="DFS_REPLICAS=$r dfs-client put --bench --local --size 1GiB --count $runs"
    say "dfs put 1 GiB, $r cop$([ "$r" = 1 ] && echo y || echo ies)" "$cmd"
    DFS_REPLICAS=$r "$bin/dfs-client" put --bench --local --size 1GiB --count "$runs" | only 'throughput|latency p50'
    cmd="DFS_REPLICAS=$r dfs-client put --bench --get --local --size 1GiB --count $runs"
    say "dfs get 1 GiB, $r cop$([ "$r" = 1 ] && echo y || echo ies)" "$cmd"
    DFS_REPLICAS=$r "$bin/dfs-client" put --bench --get --local --size 1GiB --count "$runs" | only 'throughput|latency p50'
done
say "SeaweedFS 4 KiB" "run.sh small 4096 10000 32"
"$baselines/seaweedfs/run.sh" small 4096 10000 32
for r in 1 2; do
    cmd="DFS_REPLICAS=$r dfs-client put --bench --local --size 4KiB --count 10000 --concurrency 32"
    say "dfs put 4 KiB, $r cop$([ "$r" = 1 ] && echo y || echo ies)" "$cmd"
    DFS_REPLICAS=$r "$bin/dfs-client" put --bench --local --size 4KiB --count 10000 --concurrency 32 |
        only 'ops/s|latency p50|latency p99 '
    cmd="DFS_REPLICAS=$r dfs-client put --bench --get --local --size 4KiB --count 10000 --concurrency 32"
    say "dfs get 4 KiB, $r cop$([ "$r" = 1 ] && echo y || echo ies)" "$cmd"
    DFS_REPLICAS=$r "$bin/dfs-client" put --bench --get --local --size 4KiB --count 10000 --concurrency 32 |
        only 'ops/s|latency p50|latency p99 '
done
if [ -d "$tree" ]; then
    say "dfs put -r $tree, 2 copies" "dfs-engine --local 4 & dfs-client put -r $tree --manifest m.jsonl"
    port=$((20000 + RANDOM % 20000))
    "$bin/dfs-engine" --local 4 --data "$work/cluster" --listen "127.0.0.1:$port" >"$work/engine.out" 2>"$work/engine.log" &
    engine=$!
    for _ in $(seq 100); do grep -q '^listening' "$work/engine.out" 2>/dev/null && break; sleep 0.1; done
    n_files=$(find "$tree" -type f | wc -l)
    start=$(date +%s.%N)
    DFS_SERVER=127.0.0.1:$port DFS_TOKEN_FILE=$work/cluster/access.key \
        "$bin/dfs-client" put -r "$tree" --manifest "$work/m.jsonl" 2>&1 | tail -2
    end=$(date +%s.%N)
    kill "$engine"; wait "$engine" 2>/dev/null || true
    awk -v n="$n_files" -v a="$start" -v b="$end" 'BEGIN { printf "%d files in %.1f s: %.0f files/s\n", n, b - a, n / (b - a) }'
fi
