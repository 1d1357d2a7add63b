#!/usr/bin/env bash
# Runs every test: unit and property tests in each crate, and the integration tests in tests/
# that start real dfs-engine and dfs-node processes on loopback. The binaries are built first
# because the integration tests run them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "cargo-nextest not found; running cargo test instead" >&2
    cargo test --workspace --no-fail-fast "$@"
fi
