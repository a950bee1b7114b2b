#!/usr/bin/env bash
# Entrypoint of tgstack/rabbitmq: run the broker in the foreground as user rabbitmq, logging
# to stdout (Debian's /usr/sbin/rabbitmq-server wrapper would send it to a log file).
set -euo pipefail

case "${1:-}" in
  -*) set -- rabbitmq-server "$@" ;;
esac

if [ "${1:-}" = rabbitmq-server ]; then
  shift
  if [ "$(id -u)" = 0 ]; then
    find /var/lib/rabbitmq /var/log/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
      env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
  fi
  exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi

exec "$@"
