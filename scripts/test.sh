#!/usr/bin/env bash
# Runs every test: installs what is missing, builds the filter (.wasm) and the
# native binaries, lints, runs the unit tests and the tests in real Envoy.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== build"
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter
cargo build --workspace --bins

echo "== lint"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p wsgiproxy-filter --target wasm32-wasip1 --release -- -D warnings

echo "== shipped configs"
for config in envoy/*.yaml; do
  WSGIPROXY_KEY_K1=validate-only-key-0123456789 .venv/envoy --mode validate -c "$config" --log-level error >/dev/null \
    || { echo "envoy refused $config"; exit 1; }
done
bash scripts/compose.sh config -q

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
