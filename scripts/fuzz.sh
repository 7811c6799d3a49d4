#!/usr/bin/env bash
# Runs every fuzz target (cargo fuzz, libFuzzer) for SECONDS each (default 20),
# seeded from the corpora in fuzz/corpus/. New inputs go to a temporary folder,
# so a run leaves the checkout as it was; with --grow they are added to
# fuzz/corpus/ (commit them). cargo fuzz wants nightly flags: the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1.
#   scripts/fuzz.sh [SECONDS] [--grow]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
grow="${2:-}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  echo "== fuzz $target (${seconds}s)"
  mkdir -p "corpus/$target"
  if [ "$grow" = --grow ]; then
    dirs=("corpus/$target")
  else
    mkdir -p "$scratch/$target"
    dirs=("$scratch/$target" "corpus/$target")
  fi
  cargo fuzz run -O "$target" "${dirs[@]}" -- -max_total_time="$seconds" -print_final_stats=0 2>&1 \
    | grep -E "Done [0-9]+ runs|panicked|SUMMARY" || true
  test "${PIPESTATUS[0]}" -eq 0
done
