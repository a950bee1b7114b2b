#!/usr/bin/env bash
# Install the Debian packages the real-server tests and benchmarks need, only when missing.
# Safe to run repeatedly; uses sudo when not root.
set -euo pipefail

declare -A need=(
  [/usr/lib/postgresql]="postgresql postgresql-contrib"
  [/usr/sbin/pgbouncer]="pgbouncer"
  [/usr/bin/redis-server]="redis-server"
  [/usr/bin/redis-sentinel]="redis-sentinel"
  [/usr/lib/rabbitmq/bin/rabbitmq-server]="rabbitmq-server"
  [/usr/bin/promtool]="prometheus"
  # make docs: PlantUML renders the diagrams (Graphviz lays them out), npm installs OpenSpec
  [/usr/bin/plantuml]="plantuml default-jre-headless"
  [/usr/bin/dot]="graphviz"
  [/usr/bin/npm]="nodejs npm"
)

missing=()
for path in "${!need[@]}"; do
  if [ ! -e "$path" ] || { [ "$path" = /usr/lib/postgresql ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; }; then
    read -r -a pkgs <<<"${need[$path]}"
    missing+=("${pkgs[@]}")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages must not start their own daemons: tests start servers on free ports themselves.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  created_policy=1
fi
trap '[ $created_policy -eq 1 ] && $sudo rm -f "$policy"' EXIT
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system packages: done"
