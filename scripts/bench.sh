#!/usr/bin/env bash
# Benchmarks (not part of the tests): prints a table of what the filter costs,
# every figure measured in this run. Takes about 15 minutes on 2 cores.
#   scripts/bench.sh [--rounds N] [--seconds S] [--long-requests N] [--json FILE] [--only A,B]
#   scripts/bench.sh --attribute     (where the app role's CPU goes, by host call)
#   scripts/bench.sh --instructions  (instructions per request under callgrind: ratios
#                                     that hold on a noisy machine; about 5 minutes)
#   scripts/bench.sh --attribute --instructions   (the attribution, counted so)
#   scripts/bench.sh --replay-memory [--rounds N] [--fill N]
#                    (the verifying middleware's CPU per request with millions of live
#                     nonces in its replay memory beside an empty one, both loaders;
#                     add --instructions to count them under callgrind, --fill-instructions N)
#   scripts/bench.sh --signatures [--rounds N] [--instructions]
#                    (RFC 9421 signatures, issue #19: the app role signing and the middleware
#                     verifying with hmac-sha256, ed25519, ecdsa-p256-sha256, ecdsa-p384-sha384,
#                     rsa-pss-sha512 and rsa-v1_5-sha256 (RSA signing: native only), in both loaders,
#                     beside no filter; first the native cost of one sign and one verify
#                     (protocol/examples/sigcost.rs). CPU time: about 4 minutes a round;
#                     --instructions: about 12 minutes. These variants run only when asked for:
#                     --signatures, or an --only pattern naming "RFC 9421")
set -euo pipefail
cd "$(dirname "$0")/.."
WSGIPROXY_BENCH_TOOLS=1 bash scripts/setup.sh
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter -p wsgiproxy-bench-empty-filter
cargo build --release -p wsgiproxy-echo -p wsgiproxy-sidecar
cargo build --profile native -p wsgiproxy-native
exec .venv/bin/python bench/bench.py "$@"
