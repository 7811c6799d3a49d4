#!/usr/bin/env bash
# The replay memory in real Envoy past the old fixed ceiling (2,097,152 live nonces):
# 2.4 million signed requests with fresh nonces at full speed into a verifying
# Envoy with two workers, `max_skew_seconds: 3600` (nothing expires), on both
# loaders; every one accepted, a sample of replays refused, memory per live nonce
# from Envoy's RSS (tests/replay_capacity.rs). A few minutes per loader.
#   WSGIPROXY_REPLAY_REQUESTS=N scripts/replay-capacity.sh   # another count
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter
cargo build --profile native -p wsgiproxy-native
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$target_dir/native"
for loader in wasm native; do
  echo "== $loader"
  WSGIPROXY_LOADER=$loader cargo test --release --test replay_capacity -- --ignored --nocapture
done
