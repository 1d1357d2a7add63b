#!/usr/bin/env bash
# Node requests needed to give a replaced node its copies back: the repair queue against a full
# repair pass, on the same data. NODES nodes on loopback (default 4), two copies of each chunk,
# FILES files of 4 KiB put with `put -r`; node 2's data directory is replaced (stopped, started
# on an empty directory at the same address), then the copies it held are made again:
#   1. by the repair queue alone (the engine's default), until `status` shows it empty;
#   2. the same again with the queue off (--repair-queue-secs 0) and one `dfs-client repair`.
# Prints the node requests each took, by kind, summed over the nodes' /metrics (the pinger's
# NODESTAT included).
# Usage: bench/repair-queue.sh [FILES] [NODES] (defaults 1000, 4); BIN=DIR for other binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES="${1:-1000}"
NODES="${2:-4}"
IDX=$(seq 0 $((NODES - 1)))
BIN="${BIN:-target/release}"
for b in dfs-engine dfs-node dfs-client; do
    [ -x "$BIN/$b" ] || { echo "error: $BIN/$b not found (cargo build --release)" >&2; exit 1; }
done
WORK="$(mktemp -d)"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -a NODE_PORT METRICS_PORT NODE_PID
start_node() { # index, data dir
    "$BIN/dfs-node" --listen "127.0.0.1:${NODE_PORT[$1]}" --data "$2" --metrics "127.0.0.1:${METRICS_PORT[$1]}" \
        >"$WORK/node$1.out" 2>>"$WORK/node$1.err" &
    NODE_PID[$1]=$!
    PIDS+=("$!")
    for _ in $(seq 100); do grep -q listening "$WORK/node$1.out" 2>/dev/null && return; sleep 0.1; done
    echo "error: node $1 did not start" >&2; exit 1
}

# Sum of dfs_node_requests_total by op over all nodes, as "op=count" lines.
requests() {
    for i in $IDX; do curl -s "http://127.0.0.1:${METRICS_PORT[$i]}/metrics" || true; done |
        awk -F'[{}" ]' '/^dfs_node_requests_total\{/ { for (k = 1; k <= NF; k++) if ($k == "op=") op = $(k+1); n[op] += $NF }
                        END { for (o in n) print o "=" n[o] }' | sort
}

diff_requests() { # before-file after-file
    join -t= -a2 -e0 -o 0,1.2,2.2 "$1" "$2" | awk -F= '{ d = $3 - $2; if (d > 0) { printf "  %-12s %8d\n", $1, d; t += d } } END { printf "  %-12s %8d\n", "total", t }'
}

run() { # label, engine args...
    local label="$1"; shift
    rm -rf "$WORK/data" "$WORK/meta" "$WORK/tree"
    for i in $IDX; do NODE_PORT[$i]=$(free_port); METRICS_PORT[$i]=$(free_port); start_node "$i" "$WORK/data/n$i"; done
    local eport; eport=$(free_port)
    "$BIN/dfs-engine" --listen "127.0.0.1:$eport" --meta "$WORK/meta" --replicas 2 --ping-interval-secs 1 \
        --repair-interval-secs 0 "$@" \
        $(for i in $IDX; do echo --node "127.0.0.1:${NODE_PORT[$i]}"; done) >"$WORK/engine.out" 2>"$WORK/engine.err" &
    local epid=$!
    PIDS+=("$epid")
    for _ in $(seq 100); do grep -q listening "$WORK/engine.out" 2>/dev/null && break; sleep 0.1; done
    export DFS_SERVER="127.0.0.1:$eport"
    mkdir -p "$WORK/tree"
    python3 -c "
import os, sys
for k in range($FILES):
    with open(os.path.join('$WORK/tree', f'f{k:05d}'), 'wb') as f: f.write(os.urandom(4096))"
    "$BIN/dfs-client" put -r "$WORK/tree" --manifest "$WORK/manifest" >/dev/null
    sleep 2
    kill "${NODE_PID[2]}"; wait "${NODE_PID[2]}" 2>/dev/null || true
    requests >"$WORK/before"
    local started; started=$(date +%s.%N)
    start_node 2 "$WORK/data/n2-replaced"
    if [ "$label" = queue ]; then
        # Wait for the queue to have settled something and be empty again.
        for _ in $(seq 600); do
            local q; q=$("$BIN/dfs-client" status --json | python3 -c 'import json,sys; q=json.load(sys.stdin)["repair_queue"]; print(q["n_queued"], q["n_settled"], q["n_copies_made"])')
            set -- $q
            [ "$1" = 0 ] && [ "$2" -gt 0 ] && break
            sleep 0.5
        done
        echo "$label: queue settled $2 chunk(s), made $3 cop(ies)"
    else
        "$BIN/dfs-client" repair --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print("full pass: checked", r["n_chunks_checked"], "chunk(s), made", r["n_copies_made"], "cop(ies)")'
    fi
    local ended; ended=$(date +%s.%N)
    requests >"$WORK/after"
    echo "$label: node requests while repairing ($(python3 -c "print(f'{$ended - $started:.1f}')") s):"
    diff_requests "$WORK/before" "$WORK/after"
    kill "$epid" "${NODE_PID[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}

echo "$FILES files of 4 KiB, 2 copies, $NODES nodes; node 2 replaced by an empty one at its address"
run queue --repair-queue-secs 1
run full --repair-queue-secs 0
