#!/usr/bin/env bash
# The demo stack, on loopback, with real Envoy:
#   client -> edge Envoy (app role, :10000) -> backend Envoy (middleware role, :10001) -> echo app (:8080)
#   client -> Envoy (spawn + app roles, :10002) -> app "blog" started on demand by the sidecar (:9090)
#   client -> Envoy (exact role, :10003) -> the server its Host names (127.0.0.1:8080 allowed)
# The echo app answers with the request it received, so curl shows the protocol at work.
# `scripts/demo.sh --native` (or WSGIPROXY_LOADER=native) runs every role in the
# native dynamic module (envoy/native-*.yaml) instead of the Wasm filter.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

loader="${WSGIPROXY_LOADER:-wasm}"
[ "${1:-}" = --native ] && loader=native
case "$loader" in
  wasm | native) ;;
  *) echo "unknown loader $loader: wasm or native" >&2; exit 2 ;;
esac
# Where cargo builds (CARGO_TARGET_DIR, when it is set).
target_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
# The shipped configs (and sidecar/example.toml) name target/…: run copies that name
# $target_dir (in $run_dir, made below), so that the demo works wherever cargo builds.
localize() { sed "s|\([\" ]\)target/|\1$target_dir/|g" "$1" >"$run_dir/$(basename "$1")"; echo "$run_dir/$(basename "$1")"; }
# envoy/app.yaml or envoy/native-app.yaml, and so on.
config_of() { if [ "$loader" = native ]; then echo "envoy/native-$1.yaml"; else echo "envoy/$1.yaml"; fi; }

bash scripts/setup.sh
cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter
cargo build --release -p wsgiproxy-echo -p wsgiproxy-sidecar
if [ "$loader" = native ]; then
  cargo build --profile native -p wsgiproxy-native
  export ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$target_dir/native"
fi

export WSGIPROXY_KEY_K1="${WSGIPROXY_KEY_K1:-demo-only-shared-key-change-me}"
pids=()
run_dir="$(mktemp -d)"
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$run_dir"; }
trap cleanup EXIT INT TERM

"$target_dir/release/wsgiproxy-echo" --listen 127.0.0.1:8080 --name demo-app & pids+=($!)
.venv/envoy -c "$(localize "$(config_of middleware)")" --concurrency 1 --disable-hot-restart --log-level warn & pids+=($!)
.venv/envoy -c "$(localize "$(config_of app)")" --concurrency 1 --disable-hot-restart --log-level warn & pids+=($!)
"$target_dir/release/wsgiproxy-sidecar" --config "$(localize sidecar/example.toml)" --listen 127.0.0.1:9090 & pids+=($!)
.venv/envoy -c "$(localize "$(config_of spawn)")" --concurrency 1 --disable-hot-restart --log-level warn & pids+=($!)
.venv/envoy -c "$(localize "$(config_of exact)")" --concurrency 1 --disable-hot-restart --log-level warn & pids+=($!)

for port in 8080 10001 10000 9090 10002 10003; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
done

echo
echo "every role runs in the $loader loader ($(config_of app), $(config_of middleware), $(config_of spawn), $(config_of exact))"
cat <<'MSG'

WSGIProxy demo is up:
  edge Envoy (app role)            http://127.0.0.1:10000   admin http://127.0.0.1:9901
  backend Envoy (middleware role)  http://127.0.0.1:10001   admin http://127.0.0.1:9902
  echo app                         http://127.0.0.1:8080
  Envoy (spawn + app roles)        http://127.0.0.1:10002   admin http://127.0.0.1:9904
  sidecar                          http://127.0.0.1:9090/v1/status
  Envoy (exact role)               http://127.0.0.1:10003   admin http://127.0.0.1:9903

Try:
  curl -s -H 'X-Demo-User: alice' http://127.0.0.1:10000/hello?x=1
      the app sees Host, X-Forwarded-For/-Proto/-Host, X-Remote-User: alice, X-Roles
  curl -s -H 'X-Remote-User: root' -H 'X-WSGIProxy-Str-0: REMOTE_USER root' http://127.0.0.1:10001/
      straight to the backend Envoy, unsigned: the forged headers are stripped
  curl -s http://127.0.0.1:9902/stats?filter=wsgiproxy
  curl -si http://127.0.0.1:10002/
      the first request waits for "blog" to start (x-wsgiproxy-cold-start-ms); it stops after 30 s idle
  curl -s -H 'Host: 127.0.0.1:8080' http://127.0.0.1:10003/exact?q=1
      the exact proxy: the echo app sees the request as curl sent it

Ctrl-C to stop.
MSG
wait
