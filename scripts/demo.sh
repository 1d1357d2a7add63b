#!/usr/bin/env bash
# The main job on the embedded local default: builds dfs, starts an engine with 4 storage nodes
# on loopback, uploads a random file, downloads it, checks it is byte-identical, shows its chunk
# table, deletes it and stops the cluster.
#   DFS_DEMO_SIZE  file size in MiB (default 256)
#   DFS_DEMO_PORT  engine port; the nodes take the 4 ports after it (default 7700)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${DFS_DEMO_SIZE:-256}
port=${DFS_DEMO_PORT:-7700}
cargo build --release --workspace --bins
bin="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
engine_pid=
cleanup() {
    status=$?
    # The engine ends by SIGTERM; its exit status is not the demo's.
    if [ -n "$engine_pid" ]; then
        kill "$engine_pid" 2>/dev/null || true
        wait "$engine_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
rate() { awk -v s="$size_mib" -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", s / (b - a) }'; }
export DFS_SERVER=127.0.0.1:$port
# The local cluster makes a random access key in its data directory; the client presents it.
export DFS_TOKEN_FILE="$work/cluster/access.key"

echo "== starting engine + 4 nodes on 127.0.0.1:$port..$((port + 4)), data in $work/cluster"
"$bin/dfs-engine" --local 4 --data "$work/cluster" --listen "$DFS_SERVER" >"$work/engine.out" 2>"$work/engine.log" &
engine_pid=$!
for _ in $(seq 100); do
    grep -q '^listening' "$work/engine.out" 2>/dev/null && break
    kill -0 "$engine_pid" 2>/dev/null || { cat "$work/engine.log"; exit 1; }
    sleep 0.1
done
grep -q '^listening' "$work/engine.out" || { echo "engine did not start"; cat "$work/engine.log"; exit 1; }

echo "== writing a random ${size_mib} MiB file"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/input"

t0=$(date +%s.%N)
id=$("$bin/dfs-client" put "$work/input" --name "demo input.bin")
t1=$(date +%s.%N)
echo "== put: file ID $id ($(rate "$t0" "$t1") MiB/s)"

"$bin/dfs-client" get "$id" -o "$work/output"
t2=$(date +%s.%N)
echo "== get: $(rate "$t1" "$t2") MiB/s"

cmp "$work/input" "$work/output"
echo "== round trip is byte-identical"
"$bin/dfs-client" stat "$id"
"$bin/dfs-client" ls
"$bin/dfs-client" rm "$id"
echo "== removed $id"

# The same cluster speaks S3 on the port after its nodes', with the key pair it made.
s3="http://127.0.0.1:$((port + 5))"
if command -v aws >/dev/null 2>&1; then
    read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY <"$work/cluster/s3.keys"
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=us-east-1
    head -c $((4 * 1024 * 1024)) "$work/input" >"$work/s3-input"
    aws --endpoint-url "$s3" s3 mb s3://demo >/dev/null
    aws --endpoint-url "$s3" s3 cp "$work/s3-input" s3://demo/input.bin --only-show-errors
    aws --endpoint-url "$s3" s3 cp s3://demo/input.bin "$work/s3-output" --only-show-errors
    cmp "$work/s3-input" "$work/s3-output"
    echo "== S3 at $s3: aws s3 cp up and down, byte-identical"
    aws --endpoint-url "$s3" s3 ls s3://demo/
    aws --endpoint-url "$s3" s3 rm s3://demo/input.bin --only-show-errors
    aws --endpoint-url "$s3" s3 rb s3://demo >/dev/null
else
    echo "== S3 is served at $s3 (key pair in the data directory's s3.keys); install aws-cli to try it"
fi
echo "== stopping the cluster"
