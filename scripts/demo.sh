#!/usr/bin/env bash
# The demo stack, on loopback, with real Envoy:
#   client -> edge Envoy (app role, :10000) -> backend Envoy (middleware role, :10001) -> echo app (:8080)
# The echo app answers with the request it received, so curl shows the protocol at work.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter
cargo build --release -p wsgiproxy-echo

export WSGIPROXY_KEY_K1="${WSGIPROXY_KEY_K1:-demo-only-shared-key-change-me}"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

target/release/wsgiproxy-echo --listen 127.0.0.1:8080 --name demo-app & pids+=($!)
.venv/envoy -c envoy/middleware.yaml --concurrency 1 --disable-hot-restart --log-level warn & pids+=($!)
.venv/envoy -c envoy/app.yaml --concurrency 1 --disable-hot-restart --log-level warn & pids+=($!)

for port in 8080 10001 10000; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done

cat <<'MSG'

WSGIProxy demo is up:
  edge Envoy (app role)            http://127.0.0.1:10000   admin http://127.0.0.1:9901
  backend Envoy (middleware role)  http://127.0.0.1:10001   admin http://127.0.0.1:9902
  echo app                         http://127.0.0.1:8080

Try:
  curl -s -H 'X-Demo-User: alice' http://127.0.0.1:10000/hello?x=1
      the app sees Host, X-Forwarded-For/-Proto/-Host, X-Remote-User: alice, X-Roles
  curl -s -H 'X-Remote-User: root' -H 'X-WSGIProxy-Str-0: REMOTE_USER root' http://127.0.0.1:10001/
      straight to the backend Envoy, unsigned: the forged headers are stripped
  curl -s http://127.0.0.1:9902/stats?filter=wsgiproxy

Ctrl-C to stop.
MSG
wait
