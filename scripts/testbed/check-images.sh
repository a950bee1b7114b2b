#!/usr/bin/env bash
# shellcheck disable=SC2016 # the single-quoted commands are expanded inside the containers
# Contract check of the stand-in stack images on the controller's engine: each one started
# the way the stack starts the official image (env, mounted config, ports) and probed with
# its healthcheck command. A user-defined network joins them; everything is removed at exit.
#
#   scripts/testbed/check-images.sh
set -euo pipefail
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
  -h | --help) sed -n '3,7p' "$0"; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1" ;;
esac

P="tgstack-check-$$"
NET="$P"
WORK="$(mktemp -d)"
started=()
fails=0
passes=0

cleanup() {
  local c
  for c in "${started[@]}"; do "$DOCKER" rm -f -v "$c" >/dev/null 2>&1 || true; done
  "$DOCKER" network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run NAME IMAGE [docker run args] -- [command args]
run() {
  local name="$1" image
  image="$(image_ref "$2")"
  shift 2
  local -a opts=() args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ $# -eq 0 ] || { shift; args=("$@"); }
  "$DOCKER" run -d --name "$P-$name" --hostname "$name" --network "$NET" --network-alias "$name" \
    "${opts[@]}" "$image" "${args[@]}" >/dev/null
  started+=("$P-$name")
}

# check WHAT SECONDS CONTAINER CMD...: retry CMD in CONTAINER until it succeeds.
check() {
  local what="$1" secs="$2" c="$P-$3" i
  shift 3
  for i in $(seq 1 "$secs"); do
    if "$DOCKER" exec "$c" "$@" >/dev/null 2>&1; then
      log "ok    $what (${i}s)"
      passes=$((passes + 1))
      return 0
    fi
    [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$c" 2>/dev/null)" = true ] || break
    sleep 1
  done
  log "FAIL  $what ($c $("$DOCKER" inspect -f '{{.State.Status}}' "$c" 2>/dev/null)); last lines of its log:"
  "$DOCKER" logs --tail 15 "$c" 2>&1 | sed 's/^/    /'
  fails=$((fails + 1))
}

docker_ok || die "no Docker engine answering: run scripts/testbed/engine.sh"
for n in "${STACK_IMAGES[@]}"; do
  "$DOCKER" image inspect "$(image_ref "$n")" >/dev/null 2>&1 || die "$(image_ref "$n") missing: run scripts/testbed/build-images.sh"
done
"$DOCKER" network create "$NET" >/dev/null
chmod 755 "$WORK"

# PostgreSQL: env-driven init, initdb.d script, TimescaleDB preloaded.
mkdir -p "$WORK/initdb"
printf 'CREATE TABLE probe (id int);\nINSERT INTO probe VALUES (42);\nCREATE EXTENSION timescaledb;\n' >"$WORK/initdb/01-probe.sql"
run postgres postgres -e POSTGRES_PASSWORD=secret -e POSTGRES_USER=tg -e POSTGRES_DB=tgdb \
  -v "$WORK/initdb:/docker-entrypoint-initdb.d:ro"
# PgBouncer with mounted ini + userlist.
mkdir -p "$WORK/pgbouncer"
cat >"$WORK/pgbouncer/pgbouncer.ini" <<'INI'
[databases]
tgdb = host=postgres port=5432 dbname=tgdb
[pgbouncer]
listen_addr = 0.0.0.0
listen_port = 6432
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/userlist.txt
pool_mode = transaction
admin_users = tg
ignore_startup_parameters = extra_float_digits,options
INI
printf '"tg" "secret"\n' >"$WORK/pgbouncer/userlist.txt"
chmod 644 "$WORK/pgbouncer/"*
run pgbouncer pgbouncer -v "$WORK/pgbouncer/pgbouncer.ini:/etc/pgbouncer/pgbouncer.ini:ro" \
  -v "$WORK/pgbouncer/userlist.txt:/etc/pgbouncer/userlist.txt:ro"
# Redis + a sentinel watching it (writable config copy, as with the official image).
run redis redis
mkdir -p "$WORK/sentinel"
printf 'port 26379\nsentinel resolve-hostnames yes\nsentinel monitor mymaster redis 6379 1\n' >"$WORK/sentinel/sentinel.conf"
chmod 777 "$WORK/sentinel"
chmod 666 "$WORK/sentinel/sentinel.conf"
run sentinel redis -v "$WORK/sentinel:/data/conf" -- redis-sentinel /data/conf/sentinel.conf
# RabbitMQ with mounted config + definitions.
mkdir -p "$WORK/rabbitmq"
printf 'load_definitions = /etc/rabbitmq/definitions.json\n' >"$WORK/rabbitmq/rabbitmq.conf"
cat >"$WORK/rabbitmq/definitions.json" <<'JSON'
{"vhosts": [{"name": "telegram"}],
 "users": [{"name": "tg", "password": "secret", "tags": ["administrator"]}],
 "permissions": [{"user": "tg", "vhost": "telegram", "configure": ".*", "write": ".*", "read": ".*"}],
 "exchanges": [{"name": "telegram.messages", "vhost": "telegram", "type": "topic", "durable": true,
                "auto_delete": false, "internal": false, "arguments": {}}],
 "queues": [{"name": "telegram.messages.dlq", "vhost": "telegram", "durable": true, "auto_delete": false,
             "arguments": {"x-queue-type": "quorum"}}]}
JSON
chmod 644 "$WORK/rabbitmq/"*
run rabbitmq rabbitmq -v "$WORK/rabbitmq/rabbitmq.conf:/etc/rabbitmq/rabbitmq.conf:ro" \
  -v "$WORK/rabbitmq/definitions.json:/etc/rabbitmq/definitions.json:ro"
# Exporters and Prometheus scraping them all.
run postgres-exporter postgres-exporter -e 'DATA_SOURCE_NAME=postgresql://tg:secret@postgres:5432/tgdb?sslmode=disable'
run redis-exporter redis-exporter -e REDIS_ADDR=redis://redis:6379
run node-exporter node-exporter
mkdir -p "$WORK/prometheus"
cat >"$WORK/prometheus/prometheus.yml" <<'YML'
global: {scrape_interval: 2s}
scrape_configs:
  - {job_name: postgres, static_configs: [{targets: ['postgres-exporter:9187']}]}
  - {job_name: redis, static_configs: [{targets: ['redis-exporter:9121']}]}
  - {job_name: node, static_configs: [{targets: ['node-exporter:9100']}]}
  - {job_name: rabbitmq, static_configs: [{targets: ['rabbitmq:15692']}]}
YML
chmod 644 "$WORK/prometheus/prometheus.yml"
run prometheus prometheus -v "$WORK/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"

log "checks:"
PSQL=(env PGPASSWORD=secret psql -h 127.0.0.1 -U tg -d tgdb -Atc)
check "postgres: pg_isready" 60 postgres pg_isready -h 127.0.0.1 -U tg -d tgdb
check "postgres: init script ran, password auth over TCP" 30 postgres \
  bash -c '[ "$(PGPASSWORD=secret psql -h 127.0.0.1 -U tg -d tgdb -Atc "select id from probe")" = 42 ]'
check "postgres: timescaledb extension" 10 postgres "${PSQL[@]}" "select extversion from pg_extension where extname = 'timescaledb'"
check "postgres: server runs as postgres" 5 postgres bash -c '[ "$(stat -c %U /proc/1)" = postgres ]'
check "pgbouncer: pg_isready on 6432" 30 pgbouncer pg_isready -h 127.0.0.1 -p 6432
check "pgbouncer: query through the pool" 30 pgbouncer \
  bash -c '[ "$(PGPASSWORD=secret psql -h 127.0.0.1 -p 6432 -U tg -d tgdb -Atc "select id from probe")" = 42 ]'
run pgbouncer-exporter pgbouncer-exporter -- '--pgBouncer.connectionString=postgres://tg:secret@pgbouncer:6432/pgbouncer?sslmode=disable'
check "redis: redis-cli ping" 30 redis redis-cli ping
check "redis: runs as redis" 5 redis bash -c '[ "$(stat -c %U /proc/1)" = redis ]'
check "sentinel: knows the master" 30 sentinel bash -c 'redis-cli -p 26379 sentinel get-master-addr-by-name mymaster | grep -q 6379'
check "rabbitmq: rabbitmq-diagnostics ping" 90 rabbitmq rabbitmq-diagnostics -q ping
check "rabbitmq: definitions loaded (quorum DLQ)" 60 rabbitmq \
  bash -c 'rabbitmqctl -q list_queues -p telegram name type | grep -q "telegram.messages.dlq.*quorum"'
check "rabbitmq: plugins management + prometheus" 10 rabbitmq \
  bash -c 'p="$(rabbitmq-plugins -q list -E)"; grep -q "rabbitmq_management " <<<"$p" && grep -q rabbitmq_prometheus <<<"$p"'
check "rabbitmq: management API on 15672" 30 rabbitmq \
  bash -c 'exec 3<>/dev/tcp/127.0.0.1/15672; printf "GET /api/overview HTTP/1.0\r\nAuthorization: Basic dGc6c2VjcmV0\r\n\r\n" >&3; head -n1 <&3 | grep -q " 200 "'
check "postgres-exporter: pg_up 1" 30 postgres-exporter sh -c 'wget -qO- http://127.0.0.1:9187/metrics | grep -q "^pg_up 1"'
check "pgbouncer-exporter: pgbouncer_up 1" 30 pgbouncer-exporter sh -c 'wget -qO- http://127.0.0.1:9127/metrics | grep -q "^pgbouncer_up 1"'
check "redis-exporter: redis_up 1" 30 redis-exporter sh -c 'wget -qO- http://127.0.0.1:9121/metrics | grep -q "^redis_up 1"'
check "node-exporter: metrics" 30 node-exporter sh -c 'wget -qO- http://127.0.0.1:9100/metrics | grep -q "^node_memory_MemAvailable_bytes"'
check "prometheus: healthy" 30 prometheus wget -qO- http://127.0.0.1:9090/-/healthy
check "prometheus: promtool check config" 5 prometheus promtool check config /etc/prometheus/prometheus.yml
check "prometheus: all 4 targets up" 40 prometheus \
  sh -c '[ "$(wget -qO- "http://127.0.0.1:9090/api/v1/query?query=sum(up)" | grep -o "\"[0-9]*\"]" | tr -dc 0-9)" = 4 ]'

log "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
