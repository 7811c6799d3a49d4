#!/usr/bin/env bash
# Instructions per signature verification, natively and in Wasm, for issue #30's
# floors (BENCHMARKS.md): bench/crypto-cost runs each verification N times, callgrind
# counts N = 0 and N = $ROUNDS, and the difference per call is printed. Wasm runs in
# Wasmtime (Cranelift, through its Python package in .venv), not in Envoy's V8: it
# weighs code against code, the in-Envoy figures are scripts/bench.sh --instructions'.
#
#   scripts/crypto-cost.sh            # every build and variant (about 5 minutes)
#   ROUNDS=50 scripts/crypto-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
WASMTIME_VERSION=51.0.0
target=${CARGO_TARGET_DIR:-$PWD/target}/crypto-cost
manifest=bench/crypto-cost/Cargo.toml

command -v valgrind >/dev/null || { echo "valgrind is missing: WSGIPROXY_BENCH_TOOLS=1 scripts/setup.sh" >&2; exit 1; }
[ -x .venv/bin/python ] || bash scripts/setup.sh
if [ "$(.venv/bin/pip show wasmtime 2>/dev/null | sed -n 's/^Version: //p')" != "$WASMTIME_VERSION" ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check "wasmtime==$WASMTIME_VERSION"
fi

# The protocol crate with each loader's features; the native build also with
# curve25519-dalek's portable 64-bit backend, and with its 32-bit one (Wasm's).
build() { # name, cargo args...
  local name=$1; shift
  nice cargo build --quiet --release --manifest-path "$manifest" --target-dir "$target/$name" "$@"
}
build wasm --target wasm32-wasip1 --features wasm-filter
build native --features native-module
RUSTFLAGS='--cfg curve25519_dalek_backend="serial"' build native-serial --features native-module
RUSTFLAGS='--cfg curve25519_dalek_bits="32"' build native-32 --features native-module
bin=wsgiproxy-bench-crypto-cost
wasm=$target/wasm/wasm32-wasip1/release/$bin.wasm

instructions() {
  local out
  out=$(PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1) || { echo "$out" >&2; exit 1; }
  echo "$out" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_call() { # build, variant
  local run
  case $1 in
    wasm) run=(.venv/bin/python bench/crypto-cost/run_wasm.py "$wasm") ;;
    *) run=("$target/$1/release/$bin") ;;
  esac
  "${run[@]}" "$2" 1 >/dev/null || { echo "$1 $2 does not verify" >&2; exit 1; }
  [ "$1" = wasm ] && instructions "${run[@]}" "$2" 0 >/dev/null # compiles the module once
  local none all
  none=$(instructions "${run[@]}" "$2" 0)
  all=$(instructions "${run[@]}" "$2" "$ROUNDS")
  echo $(((all - none) / ROUNDS))
}

declare -A cost
printf '%-14s %-18s %12s\n' build variant instructions
for case in wasm:hmac-sha256 wasm:ed25519 wasm:ed25519-dalek wasm:ecdsa-p256 wasm:p256-ring wasm:p256-0.13 wasm:p256-0.14 \
  native:hmac-sha256 native:ed25519 native:ecdsa-p256 native:p256-0.13 native:p256-0.14 \
  native-serial:hmac-sha256 native-serial:ed25519 native-32:hmac-sha256 native-32:ed25519; do
  cost[$case]=$(per_call "${case%%:*}" "${case#*:}")
  printf '%-14s %-18s %12s\n' "${case%%:*}" "${case#*:}" "${cost[$case]}"
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
over() { echo $((cost[$1:$2] - cost[$1:hmac-sha256])); }
echo
echo "Verification alone (not the whole request, as in scripts/bench.sh --instructions):"
echo "Ed25519 over HMAC-SHA256, Wasm / native module: $(over wasm ed25519) / $(over native ed25519) = $(ratio "$(over wasm ed25519)" "$(over native ed25519)") (issue #30's target, per request in Envoy: 2.0)"
echo "  in Wasm, the key tables / ed25519-dalek's verify_strict: $(ratio "${cost[wasm:ed25519]}" "${cost[wasm:ed25519-dalek]}")"
echo "  ed25519-dalek's 32-bit arithmetic (Wasm's), compiled natively / the native module: $(ratio "$(over native-32 ed25519)" "$(over native ed25519)")"
echo "  its portable 64-bit arithmetic natively (no AVX2) / the native module: $(ratio "$(over native-serial ed25519)" "$(over native ed25519)")"
echo "ECDSA P-256 in Wasm: the key tables / ring: $(ratio "${cost[wasm:ecdsa-p256]}" "${cost[wasm:p256-ring]}"); / p256 0.13: $(ratio "${cost[wasm:ecdsa-p256]}" "${cost[wasm:p256-0.13]}"); / p256 0.14: $(ratio "${cost[wasm:ecdsa-p256]}" "${cost[wasm:p256-0.14]}")"
echo "  over HMAC-SHA256 in Wasm: $(ratio "${cost[wasm:ecdsa-p256]}" "${cost[wasm:hmac-sha256]}")x the verification alone"
