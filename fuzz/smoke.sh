#!/usr/bin/env bash
# The CI fuzz smoke: a short run of every fuzz target, seeded from its committed corpus. Installs
# cargo-fuzz if it is missing. Fails on the first crash, panic, failed assertion, over-limit
# allocation or input that runs longer than 10 s; the input is left in fuzz/artifacts/<target>/.
#
#   FUZZ_SMOKE_RUNS=N   executions per target (default 100000; at most 60 s each)
#
# cargo fuzz needs a nightly compiler. Without a nightly toolchain the stable one is used with
# RUSTC_BOOTSTRAP=1 and no sanitizer: panics, assertions and the targets' own allocation bound
# still fail the run; only AddressSanitizer's memory checks are lost, which matters little for
# decoders written in safe Rust.
set -euo pipefail
cd "$(dirname "$0")"
runs=${FUZZ_SMOKE_RUNS:-100000}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    sanitizer=()
else
    echo "fuzz smoke: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1 and no sanitizer" >&2
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    sanitizer=(--sanitizer none)
fi
"${fuzz[@]}" build "${sanitizer[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
    # New inputs go to the scratch directory (the first one named); the committed corpus is
    # only read, so the tree stays clean.
    mkdir -p "$scratch/$target" "corpus/$target"
    log=$scratch/$target.log
    status=0
    "${fuzz[@]}" run "${sanitizer[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
        -runs="$runs" -max_total_time=60 -timeout=10 >"$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        # From the first panic or libFuzzer/sanitizer error on; the whole log if there is none.
        if grep -qE 'panicked at|ERROR:' "$log"; then
            sed -nE '/panicked at|ERROR:/,$p' "$log" | head -80 >&2 || true
        else
            cat "$log" >&2
        fi
        echo "fuzz smoke: $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
        exit "$status"
    fi
    echo "fuzz smoke: $target: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)"
done
echo "fuzz smoke: every target passed"
