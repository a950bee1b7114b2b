#!/usr/bin/env bash
# Entrypoint of tgstack/redis, after the official image's: options alone go to redis-server,
# a bare `redis-server` listens on all interfaces without protected mode (as the official
# image is built), and the server drops from root to user redis after owning /data.
set -euo pipefail

case "${1:-}" in
  -* | *.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ] && [ $# -eq 1 ]; then
  set -- redis-server --protected-mode no
fi

if { [ "${1:-}" = redis-server ] || [ "${1:-}" = redis-sentinel ]; } && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
  umask 0077
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

exec "$@"
