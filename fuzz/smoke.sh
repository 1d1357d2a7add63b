#!/usr/bin/env bash
# A short run of every fuzz target, as CI does: installs cargo-fuzz if needed, then runs each
# target from its committed corpus for FUZZ_SMOKE_RUNS executions (default 200000). Fails on
# the first crash, panic or failed assertion.
#
# cargo fuzz needs a nightly compiler. Without a nightly toolchain the stable one is used with
# RUSTC_BOOTSTRAP=1 and no sanitizer (panics and assertions are still caught; memory errors
# are not, which for this safe-Rust decoder code loses little).
set -euo pipefail
cd "$(dirname "$0")"
runs=${FUZZ_SMOKE_RUNS:-200000}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz run)
else
    echo "fuzz smoke: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1 and no sanitizer" >&2
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz run --sanitizer none)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    echo "== fuzz smoke: $target, $runs runs"
    mkdir -p "corpus/$target"
    # The committed corpus seeds the run; new inputs go to a scratch copy so the tree stays clean.
    scratch=$(mktemp -d)
    cp -r "corpus/$target/." "$scratch/"
    status=0
    "${fuzz[@]}" "$target" "$scratch" -- -runs="$runs" -jobs=1 >"$log" 2>&1 || status=$?
    rm -rf "$scratch"
    grep -E "^Done|DONE" "$log" | tail -1 || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz smoke: $target failed (exit $status); the input is under fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
done
echo "fuzz smoke: every target passed"
