#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time each (default 60 s), one after the
# other, and lists the targets that crashed at the end. Not part of CI: it needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Each target starts from its seeds (fuzz/corpus/<target>/, copied from tests/fixtures) and
# the inputs earlier runs found (fuzz/generated/<target>/, not committed), and writes what it
# finds to the latter. A crash leaves its input in fuzz/artifacts/<target>/; once fixed, copy
# it to fuzz/regressions/<target>/, which the crates' `fuzz_regressions_do_not_panic` tests
# replay in the ordinary test suite.
#
# `--sanitizer none`: the code under test is safe Rust (`unsafe` is forbidden in these
# crates), so AddressSanitizer would find nothing a panic does not, at about half the speed.
# Debug assertions stay on, so arithmetic overflow panics too.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

# cargo-fuzz builds into fuzz/target, apart from the main build.
unset CARGO_TARGET_DIR
cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer none

crashed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/generated/$target"
    echo "== $target: ${seconds} s"
    cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none "$target" \
        "fuzz/generated/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -dict=fuzz/json.dict -max_len=8192 -print_final_stats=1 ||
        crashed+=("$target")
done
if [[ ${#crashed[@]} -gt 0 ]]; then
    echo "== crashed: ${crashed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "== no crash in ${#targets[@]} targets"
