#!/usr/bin/env bash
# Runs every fuzz target (cargo fuzz, libFuzzer) for SECONDS each (default 20),
# growing the corpora in fuzz/corpus/. cargo fuzz wants nightly flags: the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for target in $(cargo fuzz list); do
  echo "== fuzz $target (${seconds}s)"
  cargo fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=0 2>&1 | grep -E "Done [0-9]+ runs|panicked|SUMMARY" || true
  test "${PIPESTATUS[0]}" -eq 0
done
