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
#   /var/log/dockerd.log (pid in /run/docker.pid).
# - `docker compose` (v2 plugin): when missing, extracted from trixie's docker-compose .deb,
#   fetched with a throw-away apt configuration so the host's sources stay untouched.
set -euo pipefail
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKERD_PIDFILE=/run/docker.pid
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

start_dockerd() {
  if docker_ok; then
    log "dockerd: answering ($("$DOCKER" version -f '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    return 0
  fi
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    log "dockerd: starting docker.service through systemd"
    as_root systemctl start docker.service
  else
    if [ -s "$DOCKERD_PIDFILE" ] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
      log "dockerd: pid $(cat "$DOCKERD_PIDFILE") is running but not answering yet; waiting"
    else
      check_iptables
      mkdir -p "$(dirname "$DOCKERD_LOG")"
      log "dockerd: starting in the background (log: $DOCKERD_LOG)"
      # setsid: own session, so it outlives this shell and its job control.
      as_root setsid dockerd --pidfile "$DOCKERD_PIDFILE" </dev/null >>"$DOCKERD_LOG" 2>&1 &
      disown || true
    fi
  fi
  local i
  for i in $(seq 1 60); do
    if docker_ok; then
      log "dockerd: up after ${i}s ($("$DOCKER" version -f '{{.Server.Version}}'))"
      return 0
    fi
    sleep 1
  done
  tail -n 30 "$DOCKERD_LOG" >&2 2>/dev/null || true
  die "dockerd did not answer within 60s"
}

stop_dockerd() {
  if [ -s "$DOCKERD_PIDFILE" ] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
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
    -h | --help) sed -n '2,13p' "$0"; return ;;
    "") ;;
    *) die "unknown argument: $1" ;;
  esac
  install_packages
  start_dockerd
  ensure_compose
}

main "$@"
