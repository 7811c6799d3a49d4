#!/usr/bin/env bash
# A 10-minute soak of the two-Envoy chain with memory sampled (not part of the tests).
#   scripts/soak.sh [--minutes M]
set -euo pipefail
cd "$(dirname "$0")/.."
WSGIPROXY_BENCH_TOOLS=1 bash scripts/setup.sh
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter -p wsgiproxy-bench-empty-filter
cargo build --release -p wsgiproxy-echo -p wsgiproxy-sidecar
exec .venv/bin/python bench/soak.py "$@"
