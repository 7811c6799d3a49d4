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
# The configs name target/…/wsgiproxy_filter.wasm: validate copies that name the one
# built in CARGO_TARGET_DIR, when it is set.
target_dir=${CARGO_TARGET_DIR:-target}
validate_dir=$(mktemp -d)
for envoy in .venv/envoy .venv/envoy-oldest; do
  for config in envoy/*.yaml; do
    sed "s|target/wasm32-wasip1/|$target_dir/wasm32-wasip1/|" "$config" >"$validate_dir/$(basename "$config")"
    WSGIPROXY_KEY_K1=validate-only-key-0123456789 "$envoy" --mode validate -c "$validate_dir/$(basename "$config")" --log-level error >/dev/null \
      || { echo "$("$envoy" --version) refused $config"; exit 1; }
  done
done
rm -rf "$validate_dir"
bash scripts/compose.sh config -q

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The roles' tests again in the oldest supported Envoy (faults.rs and compose.rs,
# which test the stack rather than Envoy's API, run in 1.40 only).
oldest=$(.venv/envoy-oldest --version | sed -n 's|.*/\([0-9.]*\)/Clean/.*|\1|p')
echo "== tests in Envoy $oldest"
ENVOY_BIN="$PWD/.venv/envoy-oldest" cargo test --no-fail-fast "$@" \
  --test app_role --test middleware_role --test trust --test hostile --test exact_role \
  --test spawn_role --test istio_examples --test rfc9421_interop 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
