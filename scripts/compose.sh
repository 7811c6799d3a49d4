#!/usr/bin/env bash
# The compose stack (docker-compose.yml): builds its image locally, then runs
# Compose — `docker compose` (v2) when the machine has it, else `docker-compose` (v1).
#
#   scripts/compose.sh build          build the image wsgiproxy/stack:local (no pull)
#   scripts/compose.sh up             build, start everything, wait until all serve
#   scripts/compose.sh down           stop and remove containers, networks, volumes
#   scripts/compose.sh swarm-up       build, `docker stack deploy` deploy/swarm/stack.yml
#                                     (the daemon must be a swarm manager), wait until it serves
#   scripts/compose.sh swarm-down     `docker stack rm`, and wait until nothing of it is left
#   scripts/compose.sh ARGS...        any other Compose command, e.g.
#                                     exec client curl -s http://edge:10000/hello
#
# The image is FROM scratch: Envoy from the PyPI wheel (./.venv, scripts/setup.sh),
# Prometheus from Debian's package (its web UI too) with the alert rules,
# the filter (.wasm), the echo app and the sidecar built here, curl, sleep,
# timeout and stdbuf (health checks, the client), the shared libraries `ldd` lists for each of
# them, and the stack's configs (deploy/compose/). It is assembled in a folder and
# `docker import`ed: nothing is pulled.
#
# Environment: WSGIPROXY_COMPOSE_PROFILE=release|debug (cargo profile of the native
# binaries; default release), COMPOSE_PROJECT_NAME (default wsgiproxy), WSGIPROXY_STACK
# (the Swarm stack's name; default wsgiproxy).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=wsgiproxy/stack:local
PROFILE=${WSGIPROXY_COMPOSE_PROFILE:-release}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-wsgiproxy}
export WSGIPROXY_STACK=${WSGIPROXY_STACK:-wsgiproxy}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f docker-compose.yml "$@"
  else
    docker-compose -f docker-compose.yml "$@"
  fi
}

# The services of profile "on-demand" (blog-container) are created by `up` and
# started by the sidecar, never by Compose.
ON_DEMAND_PROFILE=on-demand ON_DEMAND_SERVICE=blog-container

# Copies a dynamically linked executable into the root at `dest`, with every
# library `ldd` lists for it (at the same path) and the loader.
add_executable() {
  local root=$1 src=$2 dest=$3
  install -D -m 0755 "$src" "$root$dest"
  ldd "$src" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
    # 0755: the loader among them is executed.
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

build_image() {
  if [ ! -x .venv/envoy ] || ! command -v prometheus >/dev/null 2>&1; then
    bash scripts/setup.sh
  fi
  local cargo_profile=()
  [ "$PROFILE" = release ] && cargo_profile=(--release)
  # The compose test runs inside `cargo test`, which holds cargo's lock: it asks
  # for the image to be assembled from what scripts/test.sh has built already.
  if [ "${WSGIPROXY_COMPOSE_SKIP_CARGO:-0}" != 1 ]; then
    cargo build --release --target wasm32-wasip1 -p wsgiproxy-filter
    cargo build "${cargo_profile[@]}" -p wsgiproxy-echo -p wsgiproxy-sidecar
  fi
  local bins="$TARGET_DIR/$PROFILE"
  local root
  root=$(mktemp -d)
  chmod 0755 "$root"
  trap 'rm -rf "$root"' RETURN
  add_executable "$root" "$(readlink -f .venv/envoy)" /usr/local/bin/envoy
  add_executable "$root" "$bins/wsgiproxy-echo" /usr/local/bin/wsgiproxy-echo
  add_executable "$root" "$bins/wsgiproxy-sidecar" /usr/local/bin/wsgiproxy-sidecar
  # Prometheus from Debian's package, with its web UI's assets (the package links most
  # of them from /usr/share/javascript: copied as files, without the 200 MB of
  # time-zone data the one page it uses needs a single file of).
  add_executable "$root" "$(command -v prometheus)" /usr/bin/prometheus
  local web=/usr/share/prometheus/web
  mkdir -p "$root$web/static/moment-timezone"
  cp -rL "$web/templates" "$root$web/"
  for asset in "$web"/static/*; do
    [ "$(basename "$asset")" = moment-timezone ] || cp -rL "$asset" "$root$web/static/"
  done
  cp -L "$web/static/moment-timezone/moment-timezone-with-data.min.js" "$root$web/static/moment-timezone/"
  install -D -m 0644 deploy/prometheus/alerts.yml "$root/etc/wsgiproxy/prometheus/alerts.yml"
  add_executable "$root" "$(command -v curl)" /usr/bin/curl
  add_executable "$root" "$(command -v sleep)" /usr/bin/sleep
  add_executable "$root" "$(command -v timeout)" /usr/bin/timeout
  # stdbuf -oL: the client's load reports each answer as it comes, not by the 4 KiB.
  add_executable "$root" "$(command -v stdbuf)" /usr/bin/stdbuf
  add_executable "$root" /usr/libexec/coreutils/libstdbuf.so /usr/libexec/coreutils/libstdbuf.so
  install -D -m 0644 "$TARGET_DIR/wasm32-wasip1/release/wsgiproxy_filter.wasm" "$root/etc/envoy/wsgiproxy_filter.wasm"
  for config in deploy/compose/*.yaml deploy/compose/*.yml deploy/compose/*.toml; do
    install -D -m 0644 "$config" "$root/etc/wsgiproxy/$(basename "$config")"
  done
  for config in deploy/swarm/*.yaml deploy/swarm/*.toml; do
    install -D -m 0644 "$config" "$root/etc/wsgiproxy/swarm/$(basename "$config")"
  done
  printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  install -d -m 1777 "$root/tmp"
  # The image this replaces is removed once nothing uses it (no dangling copies).
  local previous
  previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin' \
    --change 'WORKDIR /' \
    --message "wsgiproxy stack ($PROFILE binaries)" - "$IMAGE" >/dev/null
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true
  fi
  echo "built $IMAGE"
}

# Compose v1 has no `up --wait`: start detached, then wait until every container
# with a health check reports healthy (and fail at once if one is unhealthy or exits).
wait_healthy() {
  local deadline=$((SECONDS + ${WSGIPROXY_COMPOSE_WAIT:-180}))
  while :; do
    local pending=0 id state health
    for id in $(compose ps -q); do
      # Created by `up`, started by the sidecar on demand: not waited for.
      [ "$(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}' "$id")" = "$ON_DEMAND_SERVICE" ] && continue
      state=$(docker inspect -f '{{.State.Status}}' "$id")
      health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
      if [ "$state" != running ] || [ "$health" = unhealthy ]; then
        echo "$(docker inspect -f '{{.Name}}' "$id") is $state/$health" >&2
        compose logs --tail 50 >&2
        return 1
      fi
      [ "$health" = healthy ] || [ "$health" = none ] || pending=$((pending + 1))
    done
    [ "$pending" = 0 ] && return 0
    if [ $SECONDS -ge $deadline ]; then
      echo "the stack did not become healthy in time" >&2
      compose ps >&2
      return 1
    fi
    sleep 1
  done
}

# The Swarm stack: every service but the on-demand one has its task running (a task
# with a healthcheck runs only once healthy).
swarm_wait() {
  local deadline=$((SECONDS + ${WSGIPROXY_COMPOSE_WAIT:-180})) service
  for service in echo backend edge spawn sidecar client; do
    until [ "$(docker service ls --filter "name=${WSGIPROXY_STACK}_$service" --format '{{.Replicas}}')" = 1/1 ]; do
      if [ $SECONDS -ge $deadline ]; then
        echo "${WSGIPROXY_STACK}_$service did not become healthy in time" >&2
        docker service ps --no-trunc "${WSGIPROXY_STACK}_$service" >&2
        docker service logs --tail 50 "${WSGIPROXY_STACK}_$service" >&2
        return 1
      fi
      sleep 1
    done
  done
  # And the Envoys have found by name what they send to (the edge the backend, the
  # spawn Envoy the sidecar).
  local envoy cluster id
  for envoy in edge:backend spawn:wsgiproxy_sidecar; do
    cluster=${envoy#*:}
    id=$(docker ps -q --filter "label=com.docker.swarm.service.name=${WSGIPROXY_STACK}_${envoy%%:*}" | head -1)
    until docker exec "$id" curl -fsS http://127.0.0.1:9901/clusters | grep -q "^$cluster::[0-9]"; do
      if [ $SECONDS -ge $deadline ]; then
        echo "the ${envoy%%:*} Envoy did not find $cluster in time" >&2
        return 1
      fi
      sleep 1
    done
  done
}

swarm_leftovers() {
  local label="label=com.docker.stack.namespace=$WSGIPROXY_STACK"
  { docker service ls -q --filter "$label"; docker network ls -q --filter "$label"; docker ps -aq --filter "$label"; } | sort -u
}

case "${1:-}" in
  build)
    build_image
    ;;
  up)
    shift
    build_image
    # Created first (the sidecar checks at its start that its containers exist),
    # then everything else started: the on-demand container stays stopped.
    compose --profile "$ON_DEMAND_PROFILE" up --no-start "$ON_DEMAND_SERVICE" || { compose logs --tail 50 >&2; exit 1; }
    if docker compose version >/dev/null 2>&1 && docker compose up --help 2>/dev/null | grep -q -- '--wait'; then
      compose up -d --wait "$@" || { compose logs --tail 50 >&2; exit 1; }
    else
      compose up -d "$@" || { compose logs --tail 50 >&2; exit 1; }
      wait_healthy
    fi
    compose ps
    ;;
  down)
    shift
    compose --profile "$ON_DEMAND_PROFILE" down --volumes --remove-orphans "$@"
    ;;
  swarm-up)
    if [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" != true ]; then
      echo "the Docker daemon is not a swarm manager: run \`docker swarm init\` first" >&2
      exit 1
    fi
    build_image
    # The image is local: never ask a registry for its digest.
    docker stack deploy --resolve-image never -c deploy/swarm/stack.yml "$WSGIPROXY_STACK"
    swarm_wait
    docker stack services "$WSGIPROXY_STACK"
    ;;
  swarm-down)
    docker stack rm "$WSGIPROXY_STACK" >/dev/null 2>&1 || true
    # `docker stack rm` returns before its containers and networks are gone.
    deadline=$((SECONDS + 60))
    while [ -n "$(swarm_leftovers)" ]; do
      if [ $SECONDS -ge $deadline ]; then
        echo "left of the stack $WSGIPROXY_STACK: $(swarm_leftovers | tr '\n' ' ')" >&2
        exit 1
      fi
      sleep 1
    done
    ;;
  "")
    sed -n '2,23p' "$0"
    exit 2
    ;;
  *)
    compose "$@"
    ;;
esac
