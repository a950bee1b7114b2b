#!/usr/bin/env bash
# Smoke test of the Molecule instance shape on this machine: start tgstack/server with the
# platform settings of DESIGN.md (molecule/*/molecule.yml), wait for systemd, check its own
# dockerd, `docker load` the stack tarball inside it, run a stand-in with a port published on
# 127.0.0.1 and reach it, then a one-service `docker compose up --wait`. Cleans up after itself.
#
#   scripts/testbed/smoke.sh [--no-build] [--keep]
#
#   --no-build  use the images and tarball as they are (default: run engine.sh,
#               build-images.sh server stack and save-images.sh first; fast when current)
#   --keep      leave the instance running (name printed) instead of removing it
# SMOKE_PRIVILEGED=true runs the instance with --privileged instead of the capability list
# (fails on these VMs, works on a normal CI host).
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/testbed/lib.sh
. "$here/lib.sh"

BUILD=1
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

NAME="tgstack-smoke-$$"
VOLUME="$NAME-docker"
TARBALL="$TESTBED_CACHE/stack-images.tar"
SERVER="$(image_ref server)"
REDIS="$(image_ref redis)"
# The platform of molecule.yml (DESIGN.md, "The offline testbed").
CAPS=(AUDIT_CONTROL BLOCK_SUSPEND DAC_READ_SEARCH IPC_LOCK IPC_OWNER LEASE LINUX_IMMUTABLE
  MAC_ADMIN MAC_OVERRIDE NET_ADMIN NET_BROADCAST SYS_ADMIN SYS_BOOT SYS_MODULE SYS_NICE
  SYS_PACCT SYS_PTRACE SYS_RAWIO SYS_TIME SYS_TTY_CONFIG SYSLOG WAKE_ALARM)

step() { log "== $*"; }
in_server() { "$DOCKER" exec "$NAME" "$@"; }

cleanup() {
  local rc=$?
  if [ "$KEEP" -eq 1 ] && [ $rc -eq 0 ]; then
    log "kept: instance $NAME (volume $VOLUME); remove with: docker rm -f $NAME && docker volume rm $VOLUME"
    return
  fi
  if "$DOCKER" container inspect "$NAME" >/dev/null 2>&1; then
    if [ $rc -ne 0 ]; then
      log "instance journal (last 40 lines):"
      in_server journalctl --no-pager -n 40 2>&1 | sed 's/^/    /' || true
    fi
    "$DOCKER" rm -f "$NAME" >/dev/null 2>&1 || true
  fi
  "$DOCKER" volume rm "$VOLUME" >/dev/null 2>&1 || true
  log "cleaned up $NAME"
}

prepare() {
  step "engine and images"
  "$here/engine.sh"
  "$here/build-images.sh" server stack
  "$here/save-images.sh"
}

start_instance() {
  step "start $SERVER as $NAME (systemd PID 1, cgroupns host, /var/lib/docker volume)"
  local -a opts=(--detach --name "$NAME" --hostname server
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --cgroupns host
    --volume /sys/fs/cgroup:/sys/fs/cgroup:rw
    --volume "$VOLUME:/var/lib/docker"
    --volume "$TESTBED_CACHE:/opt/tgstack-testbed:ro"
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp)
  if [ "${SMOKE_PRIVILEGED:-false}" = true ]; then
    opts+=(--privileged)
  else
    local cap
    for cap in "${CAPS[@]}"; do opts+=(--cap-add "$cap"); done
  fi
  "$DOCKER" volume create "$VOLUME" >/dev/null
  "$DOCKER" run "${opts[@]}" "$SERVER" /sbin/init >/dev/null
}

wait_systemd() {
  step "wait for systemd to finish booting"
  local state="" i
  for i in $(seq 1 120); do
    state="$(in_server systemctl is-system-running 2>/dev/null || true)"
    case "$state" in
      running | degraded) break ;;
    esac
    sleep 1
  done
  log "systemd: $state after ${i}s ($(in_server systemctl --version | head -n1))"
  case "$state" in
    running) ;;
    degraded)
      log "failed units:"
      in_server systemctl --failed --no-legend --plain | sed 's/^/    /'
      ;;
    *) die "systemd did not reach running/degraded (state: ${state:-none})" ;;
  esac
}

check_inner_docker() {
  step "inner Docker engine (docker.service)"
  in_server systemctl is-active --quiet docker.service || {
    in_server journalctl -u docker.service --no-pager -n 30 | sed 's/^/    /'
    die "docker.service is not active in the instance"
  }
  local i
  for i in $(seq 1 30); do in_server docker info >/dev/null 2>&1 && break; sleep 1; done
  log "dockerd: $(in_server docker info -f 'server {{.ServerVersion}}, storage {{.Driver}}, cgroup {{.CgroupDriver}} v{{.CgroupVersion}}')"
  log "compose: $(in_server docker compose version --short)"
}

load_images() {
  step "docker load the stack images inside the instance"
  [ -s "$TARBALL" ] || die "$TARBALL missing: run scripts/testbed/save-images.sh"
  in_server docker load -i /opt/tgstack-testbed/stack-images.tar | sed 's/^/    /'
}

run_standin() {
  step "docker run $REDIS inside, published on 127.0.0.1:16379, and PING it"
  in_server docker run -d --name smoke-redis -p 127.0.0.1:16379:6379 "$REDIS" >/dev/null
  local reply="" i
  for i in $(seq 1 30); do
    reply="$(in_server timeout 5 bash -c \
      'exec 3<>/dev/tcp/127.0.0.1/16379 && printf "PING\r\n" >&3 && head -c 5 <&3' 2>/dev/null | tr -d '\r\n' || true)"
    [ "$reply" = "+PONG" ] && break
    sleep 1
  done
  [ "$reply" = "+PONG" ] || die "no PONG from 127.0.0.1:16379 inside the instance (got '${reply}')"
  log "redis answered +PONG through the published port after ${i}s"
  in_server docker rm -f smoke-redis >/dev/null
}

compose_up() {
  step "docker compose up --wait (redis with a healthcheck) inside the instance"
  "$DOCKER" exec -i "$NAME" bash -c "mkdir -p /tmp/smoke && cat >/tmp/smoke/compose.yml" <<EOF
services:
  redis:
    image: $REDIS
    ports: ["127.0.0.1:16380:6379"]
    healthcheck:
      test: ["CMD", "redis-cli", "ping"]
      interval: 1s
      timeout: 3s
      retries: 30
EOF
  in_server docker compose -f /tmp/smoke/compose.yml -p smoke up -d --wait --quiet-pull 2>&1 | sed 's/^/    /'
  log "compose: $(in_server docker compose -f /tmp/smoke/compose.yml -p smoke ps --format '{{.Service}} {{.Status}}')"
  in_server docker compose -f /tmp/smoke/compose.yml -p smoke down -v 2>&1 | sed 's/^/    /'
}

main() {
  [ "$BUILD" -eq 0 ] || timed prepare prepare
  docker_ok || die "no Docker engine answering: run scripts/testbed/engine.sh"
  "$DOCKER" image inspect "$SERVER" >/dev/null 2>&1 || die "$SERVER missing: run scripts/testbed/build-images.sh"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  timed start start_instance
  timed systemd wait_systemd
  timed inner-docker check_inner_docker
  timed docker-load load_images
  timed run-redis run_standin
  timed compose-up compose_up
  print_timings
  log "SMOKE PASSED"
}

main
