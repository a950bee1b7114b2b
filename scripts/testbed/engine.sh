#!/usr/bin/env bash
# Ensure a Docker engine (and the tools the image builds need) on the controller.
#
#   scripts/testbed/engine.sh            install what is missing, start dockerd, add compose v2
#   scripts/testbed/engine.sh --stop     stop a dockerd that this script started
#
# Idempotent: every step checks first and does nothing when already satisfied.
# - Debian packages (docker.io, containerd, runc, iptables, debootstrap) only when missing.
# - dockerd: left alone when `docker info` answers; on a host with systemd as PID 1 it is
#   started through systemctl, otherwise in the background with its log in
#   /var/log/dockerd.log (pid in /run/docker.pid). A start that fails is cleaned up and
#   retried (DOCKERD_START_ATTEMPTS, default 3; DOCKERD_START_WAIT seconds each, default 120).
# - `docker compose` (v2 plugin): when missing, extracted from trixie's docker-compose .deb,
#   fetched with a throw-away apt configuration so the host's sources stay untouched.
set -euo pipefail
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKERD_PIDFILE="${DOCKERD_PIDFILE:-/run/docker.pid}"
# Where dockerd keeps its managed containerd's pid file and sockets.
CONTAINERD_STATE="${CONTAINERD_STATE:-/var/run/docker/containerd}"
PLUGIN_DIR=/usr/libexec/docker/cli-plugins

install_packages() {
  local -a missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io containerd runc iptables)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  # debootstrap verifies Release files with the Debian archive keyring.
  [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  if [ ${#missing[@]} -eq 0 ]; then
    log "packages: docker.io, debootstrap present"
    return 0
  fi
  log "packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Block maintainer scripts from starting dockerd through the SysV script: this script
  # starts it itself, with its own log.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    created=1
  fi
  local rc=0 aptlog
  aptlog="$(mktemp)"
  {
    as_root apt-get update -qq &&
      as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >"$aptlog" 2>&1 || rc=$?
  [ $created -eq 0 ] || as_root rm -f "$policy"
  if [ $rc -ne 0 ]; then
    tail -n 20 "$aptlog" >&2
    rm -f "$aptlog"
    die "apt-get install ${missing[*]} failed"
  fi
  rm -f "$aptlog"
  log "packages: done"
}

# The nft backend of iptables needs nf_tables in the kernel; fall back to the legacy backend
# when only that one works (dockerd fails to start without a working iptables).
check_iptables() {
  command -v iptables >/dev/null 2>&1 || return 0
  if as_root iptables -t nat -S >/dev/null 2>&1; then
    return 0
  fi
  if command -v iptables-legacy >/dev/null 2>&1 && as_root iptables-legacy -t nat -S >/dev/null 2>&1; then
    log "iptables: nft backend unusable here, switching to iptables-legacy"
    as_root update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
    as_root update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null || true
    return 0
  fi
  log "iptables: no working backend; dockerd may fail (see $DOCKERD_LOG)"
}

# pidfile_runs FILE NAME: FILE holds the pid of a running process called NAME. The name is
# checked because /run outlives the processes on these machines: a pid file left by an
# earlier boot can name a pid that now belongs to something else.
pidfile_runs() {
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# dockerd_alive: a dockerd is running.
dockerd_alive() {
  pidfile_runs "$DOCKERD_PIDFILE" dockerd || pgrep -x dockerd >/dev/null 2>&1
}

# clear_stale_containerd: what a dockerd that is gone leaves behind. dockerd trusts the pid
# file of its managed containerd: when that names a live pid of another process, dockerd
# waits for a containerd that never answers and gives up ("containerd is still running",
# then "failed to start containerd: timeout waiting for containerd to start"). Seen in CI
# on 2026-12-07 with a pid file from the previous boot.
clear_stale_containerd() {
  local state="$CONTAINERD_STATE" pid
  if pidfile_runs "$state/containerd.pid" containerd; then
    pid="$(cat "$state/containerd.pid")"
    log "dockerd: stopping the managed containerd left running (pid $pid)"
    as_root kill "$pid" 2>/dev/null || true
    sleep 2
    as_root kill -9 "$pid" 2>/dev/null || true
  fi
  as_root rm -f "$state/containerd.pid" "$state/containerd.sock" "$state/containerd.sock.ttrpc"
  pidfile_runs "$DOCKERD_PIDFILE" dockerd || as_root rm -f "$DOCKERD_PIDFILE"
}

# wait_for_dockerd SECONDS: 0 once `docker info` answers, 1 on timeout, 2 when dockerd died.
wait_for_dockerd() {
  local i
  for i in $(seq 1 "$1"); do
    if docker_ok; then
      log "dockerd: up after ${i}s ($("$DOCKER" version -f '{{.Server.Version}}'))"
      return 0
    fi
    # A few seconds of grace: the pid file appears only once dockerd is past its start.
    if [ "$i" -gt 5 ] && ! dockerd_alive; then
      return 2
    fi
    sleep 1
  done
  return 1
}

# Stale state is cleared before each start; a start that still dies or hangs (dockerd gives
# up on a slow managed containerd now and then, moby/moby#38636) is stopped, cleaned up and
# tried again, DOCKERD_START_ATTEMPTS times, DOCKERD_START_WAIT seconds each.
start_dockerd() {
  if docker_ok; then
    log "dockerd: answering ($("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    return 0
  fi
  local attempts="${DOCKERD_START_ATTEMPTS:-3}" wait_s="${DOCKERD_START_WAIT:-120}" attempt rc
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for attempt in $(seq 1 "$attempts"); do
      log "dockerd: starting docker.service through systemd (attempt $attempt/$attempts)"
      as_root systemctl start docker.service || true
      rc=0
      wait_for_dockerd "$wait_s" || rc=$?
      [ $rc -ne 0 ] || return 0
      as_root systemctl stop docker.service || true
    done
    die "docker.service did not answer after $attempts attempts"
  fi
  check_iptables
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  for attempt in $(seq 1 "$attempts"); do
    if dockerd_alive; then
      log "dockerd: running but not answering yet; waiting (attempt $attempt/$attempts)"
    else
      clear_stale_containerd
      log "dockerd: starting in the background (attempt $attempt/$attempts, log: $DOCKERD_LOG)"
      # setsid: own session, so it outlives this shell and its job control.
      as_root setsid dockerd --pidfile "$DOCKERD_PIDFILE" </dev/null >>"$DOCKERD_LOG" 2>&1 &
      disown || true
    fi
    rc=0
    wait_for_dockerd "$wait_s" || rc=$?
    [ $rc -ne 0 ] || return 0
    tail -n 5 "$DOCKERD_LOG" >&2 2>/dev/null || true
    if [ $rc -eq 1 ]; then
      log "dockerd: no answer within ${wait_s}s; stopping it to start again"
      stop_dockerd || true
      as_root pkill -x dockerd 2>/dev/null || true
      sleep 2
    else
      log "dockerd: exited during start-up"
    fi
  done
  tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
  die "dockerd did not answer after $attempts attempts of ${wait_s}s (log: $DOCKERD_LOG)"
}

stop_dockerd() {
  if pidfile_runs "$DOCKERD_PIDFILE" dockerd; then
    local pid
    pid="$(cat "$DOCKERD_PIDFILE")"
    log "dockerd: stopping pid $pid"
    as_root kill "$pid"
    local i
    for i in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || { log "dockerd: stopped"; return 0; }
      sleep 1
    done
    die "dockerd pid $pid did not stop within 30s"
  fi
  log "dockerd: no background dockerd (pidfile $DOCKERD_PIDFILE) running"
}

ensure_compose() {
  if "$DOCKER" compose version >/dev/null 2>&1; then
    log "compose: $("$DOCKER" compose version --short 2>/dev/null || echo present)"
    return 0
  fi
  local mirror tmp deb
  mirror="$(detect_mirror)"
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  log "compose: fetching docker-compose from $TESTBED_SUITE ($mirror) with a temporary apt config"
  mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/parts" "$tmp/prefs" "$tmp/x"
  printf 'deb %s %s main\n' "$mirror" "$TESTBED_SUITE" >"$tmp/sources.list"
  local -a apt_opts=(
    -o "Dir::Etc::SourceList=$tmp/sources.list"
    -o "Dir::Etc::SourceParts=$tmp/parts"
    -o "Dir::Etc::PreferencesParts=$tmp/prefs"
    -o "Dir::Etc::Preferences=$tmp/prefs/none"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp"
    -o "Dir::Cache::archives=$tmp/archives"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
  )
  apt-get "${apt_opts[@]}" update -qq
  (cd "$tmp" && apt-get "${apt_opts[@]}" download -qq docker-compose)
  deb="$(ls "$tmp"/docker-compose_*.deb)"
  dpkg-deb -x "$deb" "$tmp/x"
  as_root install -D -m 0755 "$tmp/x$PLUGIN_DIR/docker-compose" "$PLUGIN_DIR/docker-compose"
  log "compose: installed $PLUGIN_DIR/docker-compose ($("$DOCKER" compose version --short))"
}

main() {
  case "${1:-}" in
    --stop) stop_dockerd; return ;;
    -h | --help) sed -n '2,14p' "$0"; return ;;
    "") ;;
    *) die "unknown argument: $1" ;;
  esac
  install_packages
  start_dockerd
  ensure_compose
}

# Sourced (by the tests), it only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
