#!/usr/bin/env bash
# The cost of keeping metadata in PostgreSQL, and of a second engine, measured in one run:
#   embedded  one engine, --meta DIR (redb)
#   pg1       one engine, --meta postgres://... (a PostgreSQL started here: initdb, pg_ctl)
#   pg2       two engines over the same PostgreSQL and nodes; the client names both
#             (--server A,B), so its connections are spread over them
# Each configuration gets fresh nodes (4, on loopback, two copies of each chunk, data kept for
# the whole configuration) and a fresh PostgreSQL, then runs:
#   put4k   put --bench --size 4KiB --count 10000 --concurrency 32
#   put1g   put --bench --size 1GiB --count 2
#   get1g   put --bench --get --size 1GiB --count 2
# ROUNDS times, in the order embedded, pg1, pg2, embedded, ..., and prints each run's figure
# and the median per configuration. Nothing is deleted while timed (--keep); each
# configuration's data is removed after it.
# Usage: bench/meta-backends.sh [ROUNDS] (default 3); BIN=DIR for other binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
BIN="${BIN:-target/release}"
for b in dfs-engine dfs-node dfs-client; do
    [ -x "$BIN/$b" ] || { echo "error: $BIN/$b not found (cargo build --release)" >&2; exit 1; }
done
PGBIN="$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")"
[ -x "$PGBIN/initdb" ] || { echo "error: PostgreSQL not installed (scripts/deps.sh installs it)" >&2; exit 1; }
WORK="$(mktemp -d)"
chmod 755 "$WORK"
PIDS=()
PGDATA_DIR=""
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_pg() { [ -n "$PGDATA_DIR" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true; PGDATA_DIR=""; }
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; stop_pg; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_listening() { # out-file
    for _ in $(seq 200); do grep -q listening "$1" 2>/dev/null && { awk '/listening/ {print $2; exit}' "$1"; return; }; sleep 0.1; done
    echo "error: $1: no listening line" >&2; exit 1
}

start_pg() { # dir
    mkdir -p "$1/data" "$1/sock"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1/pw"
    chmod 600 "$1/pw"
    cp "$1/pw" "$1/initdb.pw"
    [ "$(id -u)" = 0 ] && chown -R postgres "$1/data" "$1/sock" "$1/initdb.pw"
    as_pg "$PGBIN/initdb" -D "$1/data" -U dfs --auth-local=trust --auth-host=scram-sha-256 \
        --pwfile="$1/initdb.pw" >"$1/initdb.log" 2>&1
    PGPORT=$(free_port)
    as_pg "$PGBIN/pg_ctl" -D "$1/data" -o "-p $PGPORT -k $1/sock -c listen_addresses=127.0.0.1" \
        -l "$1/sock/server.log" -w start >/dev/null
    PGDATA_DIR="$1/data"
}

# Runs one configuration; prints "config bench value" lines.
run_config() { # name
    local name="$1" dir="$WORK/$1"
    mkdir -p "$dir"
    local nodes=()
    for i in 0 1 2 3; do
        "$BIN/dfs-node" --listen 127.0.0.1:0 --data "$dir/n$i" >"$dir/node$i.out" 2>"$dir/node$i.err" &
        PIDS+=("$!")
        nodes+=(--node "$(wait_listening "$dir/node$i.out")")
    done
    local meta=(--meta "$dir/meta") n_engines=1
    if [ "$name" != embedded ]; then
        start_pg "$dir/pg"
        meta=(--meta "postgres://dfs@127.0.0.1:$PGPORT/postgres" --meta-password-file "$dir/pg/pw")
    fi
    [ "$name" = pg2 ] && n_engines=2
    local servers=()
    for e in $(seq "$n_engines"); do
        "$BIN/dfs-engine" --listen 127.0.0.1:0 "${meta[@]}" "${nodes[@]}" >"$dir/engine$e.out" 2>"$dir/engine$e.err" &
        PIDS+=("$!")
        servers+=("$(wait_listening "$dir/engine$e.out")")
    done
    local server; server=$(IFS=,; echo "${servers[*]}")
    bench() { # label, args...
        local label="$1"; shift
        "$BIN/dfs-client" --server "$server" put --bench --keep --json "$@" | head -1 |
            python3 -c "import json,sys; r=json.load(sys.stdin); print('$name', '$label', round(r['ops_s'] if '$label'=='put4k' else r['mib_s'], 1), r['latency_us']['p50'], r['latency_us']['p99'])"
    }
    bench put4k --size 4KiB --count 10000 --concurrency 32
    bench put1g --size 1GiB --count 2
    bench get1g --get --size 1GiB --count 2
    kill "${PIDS[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    PIDS=()
    stop_pg
    rm -rf "$dir"
}

echo "# config bench value(ops/s for put4k, MiB/s otherwise) p50_us p99_us"
for r in $(seq "$ROUNDS"); do
    for c in embedded pg1 pg2; do run_config "$c"; done
done | tee "$WORK/results"
echo "# medians"
python3 - "$WORK/results" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if not l.startswith('#')]
out = {}
for c, b, v, p50, p99 in rows:
    out.setdefault((b, c), []).append((float(v), int(p50), int(p99)))
for b in ('put4k', 'put1g', 'get1g'):
    base = statistics.median(v for v, _, _ in out.get((b, 'embedded'), [(0, 0, 0)]))
    for c in ('embedded', 'pg1', 'pg2'):
        runs = out.get((b, c))
        if not runs:
            continue
        m = statistics.median(v for v, _, _ in runs)
        p50 = statistics.median(p for _, p, _ in runs)
        ratio = f"{m / base:.2f}x embedded" if base else ""
        print(f"{b:6} {c:9} median {m:10.1f}  p50 {p50/1000:8.2f} ms  {ratio}  runs {[v for v, _, _ in runs]}")
EOF
