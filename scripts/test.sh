#!/usr/bin/env bash
# Runs every test: installs what is missing, builds the filter (.wasm), the native
# dynamic module (libwsgiproxy.so) and the native binaries, lints, runs the unit tests
# and the tests in real Envoy (1.40, and the roles' again in the oldest supported
# Envoy), the compose stack in containers; the Envoy tests of every role, the
# hostile and trust cases run twice, once per loader.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

echo "== build"
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter
cargo build --workspace --bins
# The native module unwinds (its hooks catch panics): its own profile, not release's abort.
cargo build --profile native -p wsgiproxy-native
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$target_dir/native"

echo "== lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p wsgiproxy-filter --target wasm32-wasip1 --release -- -D warnings

echo "== shipped configs"
# The configs name target/…/wsgiproxy_filter.wasm: validate copies that name the one
# built in CARGO_TARGET_DIR, when it is set. envoy/native-*.yaml load
# libwsgiproxy.so (ENVOY_DYNAMIC_MODULES_SEARCH_PATH), built for 1.40's ABI only.
validate_dir=$(mktemp -d)
for envoy in .venv/envoy .venv/envoy-oldest; do
  for config in envoy/*.yaml; do
    case "$envoy:$(basename "$config")" in .venv/envoy-oldest:native-*) continue ;; esac
    sed "s|target/wasm32-wasip1/|$target_dir/wasm32-wasip1/|" "$config" >"$validate_dir/$(basename "$config")"
    WSGIPROXY_KEY_K1=validate-only-key-0123456789 "$envoy" --mode validate -c "$validate_dir/$(basename "$config")" --log-level error >/dev/null \
      || { echo "$("$envoy" --version) refused $config"; exit 1; }
  done
done
rm -rf "$validate_dir"
bash scripts/compose.sh config -q

echo "== alert rules (deploy/prometheus/)"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
# Every alert has a unit test.
for alert in $(sed -n 's/^ *- alert: //p' deploy/prometheus/alerts.yml); do
  grep -q "alertname: $alert\$" deploy/prometheus/alerts.test.yml || { echo "no promtool test for $alert"; exit 1; }
done

echo "== the protocol's unit tests as the Wasm filter builds it (HMAC on RustCrypto's code, RSA on ring's C, P-256 and Ed25519 on key tables)"
# The workspace run below builds the protocol with every loader's features; these,
# the package alone: with ring-verify alone (P-256 on ring, Ed25519 on
# ed25519-dalek's verify_strict, as the native module verifies) and with the Wasm
# filter's features (the key tables, checked against those).
cargo test -p wsgiproxy-protocol --lib --features ring-verify
cargo test -p wsgiproxy-protocol --lib --features ring-verify,p256-tables,ed25519-key-table

echo "== the native module's binding under a sanitizer"
# Its tests run the binding against stand-in Envoy callbacks: under AddressSanitizer
# with a nightly toolchain, else under valgrind.
if cargo +nightly --version >/dev/null 2>&1 \
   && ls "$(rustc +nightly --print sysroot)"/lib/rustlib/x86_64-unknown-linux-gnu/lib/ 2>/dev/null | grep -q asan; then
  RUSTFLAGS="-Zsanitizer=address" cargo +nightly test -p wsgiproxy-native \
    --target x86_64-unknown-linux-gnu --target-dir target/asan
elif command -v valgrind >/dev/null 2>&1; then
  binding_tests=$(cargo test -p wsgiproxy-native --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | head -1)
  valgrind --error-exitcode=1 --leak-check=no -q "$binding_tests"
else
  echo "no nightly toolchain with AddressSanitizer and no valgrind: the binding runs unsanitised below"
fi

# The hooks' re-entrancy and lifetime rules under Miri too, where it is installed
# (it checks the aliasing of the filter Envoy calls back into; the stand-in Envoy
# reads the clock, hence no isolation).
if cargo +nightly miri --version >/dev/null 2>&1; then
  echo "== the native module's binding under Miri"
  MIRIFLAGS="-Zmiri-disable-isolation" cargo +nightly miri test -p wsgiproxy-native --target-dir target/miri abi::
fi

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "== the Envoy tests of every role, the hostile, trust and RFC 9421 ones, and the docs' examples, on the native module"
# Three trust tests take the Wasm filter's peer network filter away or misplace it to
# show it fails closed; the native module reads the TCP peer itself (and refuses a
# peer configuration at load), so they do not apply to it.
WSGIPROXY_LOADER=native cargo test --no-fail-fast --test app_role --test middleware_role --test exact_role --test spawn_role \
  --test hostile --test trust --test rfc9421_interop --test rfc9421_algorithms --test rfc9421_required --test key_directory --test key_rotation --test replicas --test listener_shapes --test replay_settings --test restarts --test docs \
  --test swarm "$@" -- \
  --skip app_role_without_the_peer_record_refuses_rather_than_guess \
  --skip without_the_peer_record_nothing_is_trusted_by_address \
  --skip a_role_in_the_wrong_kind_of_filter_fails_closed 2>&1 | tee -a "$log"
native_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$native_status

echo "== the replay memories at 50,000 signed requests a second (issue #17), optimised"
cargo test --release -p wsgiproxy-protocol --test replay_memory -- --ignored 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# The roles' tests again in the oldest supported Envoy (faults.rs and compose.rs,
# which test the stack rather than Envoy's API, run in 1.40 only).
oldest=$(.venv/envoy-oldest --version | sed -n 's|.*/\([0-9.]*\)/Clean/.*|\1|p')
echo "== tests in Envoy $oldest"
ENVOY_BIN="$PWD/.venv/envoy-oldest" cargo test --no-fail-fast "$@" \
  --test app_role --test middleware_role --test trust --test hostile --test exact_role \
  --test spawn_role --test istio_examples --test rfc9421_interop --test rfc9421_algorithms --test rfc9421_required --test key_directory --test key_rotation --test listener_shapes --test replicas --test swarm 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
