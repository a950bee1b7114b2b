#!/usr/bin/env bash
# Entrypoint of tgstack/pgbouncer: `docker run IMAGE` runs pgbouncer on the mounted
# /etc/pgbouncer/pgbouncer.ini; options or an .ini path alone are passed to pgbouncer.
# PgBouncer refuses to run as root: drop to postgres first.
set -euo pipefail

case "${1:-}" in
  -* | *.ini) set -- pgbouncer "$@" ;;
esac

if [ "${1:-}" = pgbouncer ] && [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

exec "$@"
