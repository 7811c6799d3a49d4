#!/usr/bin/env bash
# Runs every test: installs what is missing, builds the filter (.wasm), the native
# dynamic module (libwsgiproxy.so) and the native binaries, lints, runs the unit tests
# and the tests in real Envoy; the Envoy tests of every role and the hostile cases
# run twice, once per loader.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== build"
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter
cargo build --workspace --bins
# The native module unwinds (its hooks catch panics): its own profile, not release's abort.
cargo build --profile native -p wsgiproxy-native
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$PWD/target/native"

echo "== lint"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p wsgiproxy-filter --target wasm32-wasip1 --release -- -D warnings

echo "== shipped configs"
# envoy/native-*.yaml load target/native/libwsgiproxy.so (ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
for config in envoy/*.yaml; do
  WSGIPROXY_KEY_K1=validate-only-key-0123456789 .venv/envoy --mode validate -c "$config" --log-level error >/dev/null \
    || { echo "envoy refused $config"; exit 1; }
done
if [ -f docker-compose.yml ]; then
  docker-compose -f docker-compose.yml config -q
fi

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

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
echo "== the Envoy tests of every role, the hostile, trust and RFC 9421 ones, on the native module"
# Three trust tests take the Wasm filter's peer network filter away or misplace it to
# show it fails closed; the native module reads the TCP peer itself (and refuses a
# peer configuration at load), so they do not apply to it.
WSGIPROXY_LOADER=native cargo test --no-fail-fast --test app_role --test middleware_role --test exact_role --test spawn_role \
  --test hostile --test trust --test rfc9421_interop "$@" -- \
  --skip app_role_without_the_peer_record_refuses_rather_than_guess \
  --skip without_the_peer_record_nothing_is_trusted_by_address \
  --skip a_role_in_the_wrong_kind_of_filter_fails_closed 2>&1 | tee -a "$log"
native_status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] || status=$native_status
set -e
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
