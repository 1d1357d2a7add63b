#!/usr/bin/env bash
# The S3 front door's figures in one run, with the same clients on both sides:
#   - 1 GiB through dfs's native client (put, get) and through aws-cli's `s3 cp` (its defaults:
#     8 MiB parts, 10 at once) against dfs's S3 and against SeaweedFS's S3 gateway
#     (../shared/baselines/seaweedfs/run.sh s3), up and down;
#   - 1 GiB through bench's `s3-load` (one streamed PUT, one GET into a file), and 4 KiB
#     objects put and then got by it at concurrency 32 (SMALL of them, every body checked), on
#     both sides; the same 4 KiB c32 figures from dfs's native `dfs-client put --bench` (its
#     put sends one 4 KiB file SMALL times; its get preloads the objects untimed, at most 10000,
#     and reads them round-robin);
#   - `rclone copy` of a real tree (default /usr/share, first FILES files) into each: files/s.
# Every store keeps what it is given (each run writes new keys). dfs runs with one copy of each
# chunk, as SeaweedFS keeps one. Needs the release binaries (cargo build --release --workspace
# --bins, found in $CARGO_TARGET_DIR or target/), aws-cli and rclone (scripts/deps.sh).
#   RUNS    runs per figure (default 3): each figure is the median of its runs
#   BIG_MB  size of the large object in MiB (default 1024)
#   SMALL   4 KiB objects per small run (default 20000)
#   TREE    the tree for rclone copy (default /usr/share)
#   FILES   files of it to copy (default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
big_mb=${BIG_MB:-1024}
small=${SMALL:-20000}
tree=${TREE:-/usr/share}
files=${FILES:-5000}
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
big_bytes=$((big_mb << 20))
if [ $((big_mb % 1024)) -eq 0 ]; then big=$((big_mb / 1024))" GiB"; else big="$big_mb MiB"; fi
baselines=$PWD/../shared/baselines
s3b_work=$(mktemp -d /tmp/dfs-s3-same-run.XXXXXX)
engine_pid=
cleanup() {
    [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
    rm -rf "$s3b_work"
}
trap cleanup EXIT
# rclone refuses a custom CA bundle over plain HTTP.
unset AWS_CA_BUNDLE
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
now() { date +%s.%N; }
mbps() { awk -v b="$1" -v a="$2" -v z="$3" 'BEGIN { printf "%.0f", b / 1e6 / (z - a) }'; }

head -c "$big_bytes" /dev/urandom >"$s3b_work/1g"
mkdir -p "$s3b_work/tree"
(cd "$tree" && find . -type f -size -8M | head -n "$files" | cpio -pdm --quiet "$s3b_work/tree" 2>/dev/null) || true
n_tree=$(find "$s3b_work/tree" -type f | wc -l)
bytes_tree=$(du -sb "$s3b_work/tree" | cut -f1)

# aws-cli 1 GiB up and down against $S3_ENDPOINT; prints "put MB/s" and "get MB/s" medians.
s3_cp() {
    local label=$1 puts=() gets=()
    aws --endpoint-url "$S3_ENDPOINT" s3 mb "s3://bench" >/dev/null 2>&1 || true
    for i in $(seq "$runs"); do
        local t0 t1 t2
        t0=$(now)
        aws --endpoint-url "$S3_ENDPOINT" s3 cp "$s3b_work/1g" "s3://bench/1g-$label-$i" --only-show-errors
        t1=$(now)
        aws --endpoint-url "$S3_ENDPOINT" s3 cp "s3://bench/1g-$label-$i" "$s3b_work/back" --only-show-errors
        t2=$(now)
        cmp -s "$s3b_work/1g" "$s3b_work/back" || { echo "$label: the download differs" >&2; exit 1; }
        rm -f "$s3b_work/back"
        puts+=("$(mbps "$big_bytes" "$t0" "$t1")")
        gets+=("$(mbps "$big_bytes" "$t1" "$t2")")
    done
    echo "$label aws s3 cp $big put: $(printf '%s\n' "${puts[@]}" | median) MB/s (runs: ${puts[*]})"
    echo "$label aws s3 cp $big get: $(printf '%s\n' "${gets[@]}" | median) MB/s (runs: ${gets[*]})"
    rclone_tree "$label"
}

# The figure of an s3-load line ("...: 61 MB/s"), or its four of a small run ("...: 1234 ops/s,
# 5.1 MB/s, p50 1.23 ms, p99 4.56 ms" gives "1234 5.1 1.23 4.56").
load_mbps() { sed -n 's|.*: \([0-9.]*\) MB/s$|\1|p'; }
load_small() { sed -n 's|.*: \([0-9.]*\) ops/s, \([0-9.]*\) MB/s, p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms$|\1 \2 \3 \4|p'; }

# One line for small runs given as lines "ops/s MB/s p50 p99": the median of each column.
small_line() {
    local label=$1 results=$2 col med=()
    for col in 1 2 3 4; do med+=("$(printf '%s\n' "$results" | cut -d' ' -f"$col" | median)"); done
    echo "$label: ${med[0]} ops/s, ${med[1]} MB/s, p50 ${med[2]} ms, p99 ${med[3]} ms (medians; ops/s runs: $(printf '%s\n' "$results" | cut -d' ' -f1 | tr '\n' ' ' | sed 's/ $//'))"
}

# bench's s3-load against $S3_ENDPOINT: 1 GiB as one streamed PUT and one GET into a file
# (checked against the source after the timing), then SMALL 4 KiB objects put and got back at
# concurrency 32 (every body checked); medians of RUNS.
s3_load() {
    local label=$1 puts=() gets=() small_puts=() small_gets=() line
    for i in $(seq "$runs"); do
        line=$("$bin/s3-load" large --op put --file "$s3b_work/1g" --key "1g-s3load-$label-$i")
        puts+=("$(load_mbps <<<"$line")")
        line=$("$bin/s3-load" large --op get --key "1g-s3load-$label-$i" --out "$s3b_work/back" --check "$s3b_work/1g")
        gets+=("$(load_mbps <<<"$line")")
        rm -f "$s3b_work/back"
    done
    echo "$label s3-load $big put: $(printf '%s\n' "${puts[@]}" | median) MB/s (runs: ${puts[*]})"
    echo "$label s3-load $big get: $(printf '%s\n' "${gets[@]}" | median) MB/s (runs: ${gets[*]})"
    for i in $(seq "$runs"); do
        line=$("$bin/s3-load" small --op put --size 4096 --count "$small" --concurrency 32 --prefix "small-$label-$i")
        small_puts+=("$(load_small <<<"$line")")
        line=$("$bin/s3-load" small --op get --size 4096 --count "$small" --concurrency 32 --prefix "small-$label-$i")
        small_gets+=("$(load_small <<<"$line")")
    done
    small_line "$label s3-load 4 KiB put x $small c32" "$(printf '%s\n' "${small_puts[@]}")"
    small_line "$label s3-load 4 KiB get x $small c32" "$(printf '%s\n' "${small_gets[@]}")"
}

rclone_tree() {
    local label=$1 t0 t1
    export RCLONE_CONFIG=/dev/null RCLONE_CONFIG_B_TYPE=s3 RCLONE_CONFIG_B_PROVIDER=Other \
        RCLONE_CONFIG_B_ENDPOINT="$S3_ENDPOINT" RCLONE_CONFIG_B_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
        RCLONE_CONFIG_B_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" RCLONE_CONFIG_B_REGION=us-east-1 \
        RCLONE_CONFIG_B_FORCE_PATH_STYLE=true
    t0=$(now)
    rclone copy "$s3b_work/tree" "b:bench/tree-$label" --transfers 16 --checkers 16
    t1=$(now)
    awk -v n="$n_tree" -v b="$bytes_tree" -v a="$t0" -v z="$t1" -v l="$label" \
        'BEGIN { printf "%s rclone copy of %d files (%.0f MB): %.0f files/s, %.0f MB/s\n", l, n, b / 1e6, n / (z - a), b / 1e6 / (z - a) }'
}

echo "# S3 same run, $(date -u +%FT%TZ), $(git rev-parse --short HEAD), $(nproc) cores, $runs run(s) per figure"

# dfs: one local cluster, one copy per chunk; native figures first, then S3.
"$bin/dfs-engine" --local 4 --data "$s3b_work/dfs" --listen 127.0.0.1:0 --replicas 1 >"$s3b_work/engine.out" 2>"$s3b_work/engine.log" &
engine_pid=$!
for _ in $(seq 100); do grep -q '^listening' "$s3b_work/engine.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^listening //p' "$s3b_work/engine.out")
s3=$(sed -n 's|.*S3 API on http://\([^/]*\)/.*|\1|p' "$s3b_work/engine.log" | head -1)
export DFS_SERVER=$addr DFS_TOKEN_FILE=$s3b_work/dfs/access.key
puts=() gets=()
for i in $(seq "$runs"); do
    t0=$(now); id=$("$bin/dfs-client" put "$s3b_work/1g" --name "1g-$i"); t1=$(now)
    "$bin/dfs-client" get "$id" -o "$s3b_work/back"; t2=$(now)
    rm -f "$s3b_work/back"
    puts+=("$(mbps "$big_bytes" "$t0" "$t1")"); gets+=("$(mbps "$big_bytes" "$t1" "$t2")")
done
echo "dfs native $big put: $(printf '%s\n' "${puts[@]}" | median) MB/s (runs: ${puts[*]})"
echo "dfs native $big get: $(printf '%s\n' "${gets[@]}" | median) MB/s (runs: ${gets[*]})"
# The native small-object figures: `put --bench --json` gives ops/s, MiB/s and latencies in µs.
native_small() {
    "$bin/dfs-client" put --bench "$@" --size 4KiB --count "$small" --concurrency 32 --keep --json |
        python3 -c 'import json, sys; r = json.load(sys.stdin); l = r["latency_us"]
print("%.0f %.1f %.2f %.2f" % (r["ops_s"], r["mib_s"] * 1.048576, l["p50"] / 1e3, l["p99"] / 1e3))'
}
small_puts=() small_gets=()
for i in $(seq "$runs"); do
    small_puts+=("$(native_small)")
    small_gets+=("$(native_small --get)")
done
small_line "dfs native 4 KiB put x $small c32" "$(printf '%s\n' "${small_puts[@]}")"
small_line "dfs native 4 KiB get x $small c32" "$(printf '%s\n' "${small_gets[@]}")"
read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY <"$s3b_work/dfs/s3.keys"
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=us-east-1 S3_ENDPOINT=http://$s3
s3_cp dfs
s3_load dfs
kill "$engine_pid"; wait "$engine_pid" 2>/dev/null || true; engine_pid=

# SeaweedFS's S3 gateway, the same clients.
export -f s3_cp rclone_tree median now mbps s3_load load_mbps load_small small_line
export s3b_work runs n_tree bytes_tree bin big big_bytes small
# bash -c starts without this script's options: a failed client must stop that side too.
"$baselines/seaweedfs/run.sh" s3 bash -c 'set -euo pipefail; s3_cp seaweedfs; s3_load seaweedfs'
