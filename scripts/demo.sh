#!/usr/bin/env bash
# The whole stack on this machine, end to end, in one command (what `make demo` runs).
#
#   scripts/demo.sh up      engine + images if missing, sandbox server, site.yml, sample channel, report
#   scripts/demo.sh down    remove the sandbox server and its Docker volume
#   scripts/demo.sh replay  post the sample channel again (it is there already: nothing changes) and report
#   scripts/demo.sh report  print the report again (counts, latency, where to look)
#
# The sandbox server is a container named tgstack-sandbox, the same kind of instance as
# Molecule's (molecule/default/molecule.yml): a Debian trixie server with systemd as PID 1 and
# its own Docker engine. site.yml provisions it through inventories/sandbox exactly as it would
# a real server. Its Telegram is the local MTProto test server (unit tgstack-telegram-test, set
# by tgstack_runtime_telegram_test_server in the inventory): the real telethon gateway signs in
# to it with the test code, and the committed sample channel (samples/channel-sample.jsonl) is
# posted through it. A second `up` converges with 0 changed and finds the sample posted already,
# which changes nothing either (each post is stored once).
#
# Knobs: TGSTACK_SANDBOX_NAME (tgstack-sandbox; must match inventories/sandbox),
# TGSTACK_SANDBOX_PRIVILEGED=true (normal CI hosts; these VMs refuse --privileged),
# TGSTACK_SAMPLE (the JSONL file to post, replay format), PYTHON_VENV (.venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="${TGSTACK_SANDBOX_NAME:-tgstack-sandbox}"
VOLUME="$NAME-docker"
IMAGE="tgstack/server:${TESTBED_TAG:-trixie}"
TESTBED_CACHE="${TESTBED_CACHE:-$ROOT/.cache/testbed}"
SAMPLE="${TGSTACK_SAMPLE:-$ROOT/samples/channel-sample.jsonl}"
VENV="${PYTHON_VENV:-$ROOT/.venv}"
STATE="$ROOT/.cache/demo"
T0=$EPOCHSECONDS

say() { printf '[demo %4ds] %s\n' "$((EPOCHSECONDS - T0))" "$*"; }
die() {
  printf '[demo] ERROR: %s\n' "$*" >&2
  exit 1
}
in_sandbox() { docker exec "$NAME" "$@"; }
psql_sandbox() {
  in_sandbox docker exec -u postgres tgstack-postgres \
    psql -X -q -t -A -F '|' -v ON_ERROR_STOP=1 -d telegram_gateway -c "$1"
}

# Same platform settings as molecule/default/molecule.yml (DESIGN.md, "The offline testbed").
CAPS=(AUDIT_CONTROL BLOCK_SUSPEND DAC_READ_SEARCH IPC_LOCK IPC_OWNER LEASE LINUX_IMMUTABLE
  MAC_ADMIN MAC_OVERRIDE NET_ADMIN NET_BROADCAST SYS_ADMIN SYS_BOOT SYS_MODULE SYS_NICE
  SYS_PACCT SYS_PTRACE SYS_RAWIO SYS_TIME SYS_TTY_CONFIG SYSLOG WAKE_ALARM)

start_sandbox() {
  local state
  state="$(docker inspect -f '{{.State.Status}}' "$NAME" 2>/dev/null || true)"
  case "$state" in
    running)
      say "sandbox server $NAME: running"
      return
      ;;
    "") ;;
    *)
      say "sandbox server $NAME: $state, starting it"
      docker start "$NAME" >/dev/null
      return
      ;;
  esac
  say "sandbox server $NAME: creating it from $IMAGE"
  local -a opts=(--detach --name "$NAME" --hostname "$NAME"
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --cgroupns host
    --volume /sys/fs/cgroup:/sys/fs/cgroup:rw
    --volume "$VOLUME:/var/lib/docker"
    --volume "$TESTBED_CACHE:/opt/tgstack-testbed:ro"
    --tmpfs /run --tmpfs /run/lock --tmpfs /tmp
    --stop-signal SIGRTMIN+3
    --label org.tgstack.demo=true)
  if [ "${TGSTACK_SANDBOX_PRIVILEGED:-false}" = true ]; then
    opts+=(--privileged)
  else
    local cap
    for cap in "${CAPS[@]}"; do opts+=(--cap-add "$cap"); done
  fi
  docker run "${opts[@]}" "$IMAGE" /sbin/init >/dev/null
}

wait_for_sandbox() {
  local state=""
  for _ in $(seq 1 90); do
    state="$(in_sandbox systemctl is-system-running 2>/dev/null || true)"
    if [ "$state" = running ] || [ "$state" = degraded ]; then
      if in_sandbox docker info >/dev/null 2>&1; then
        say "sandbox server booted (systemd $state, Docker engine up)"
        return
      fi
    fi
    sleep 2
  done
  die "$NAME did not boot in 180 s (systemd: ${state:-?}); see: docker logs $NAME"
}

converge() {
  local log="$STATE/site.log" started=$EPOCHSECONDS recap
  say "ansible-playbook ansible/site.yml -i inventories/sandbox (log: ${log#"$ROOT"/})"
  mkdir -p "$STATE"
  if ! (cd "$ROOT" && PATH="$VENV/bin:$PATH" ANSIBLE_FORCE_COLOR=0 \
    "$VENV/bin/ansible-playbook" -i inventories/sandbox ansible/site.yml) >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "site.yml failed (full log: $log)"
  fi
  recap="$(grep -E "^$NAME +: ok=" "$log" | tail -n1)"
  CHANGED="$(sed -E 's/.*changed=([0-9]+).*/\1/' <<<"$recap")"
  SITE_SECONDS=$((EPOCHSECONDS - started))
  say "site.yml: $CHANGED changed in ${SITE_SECONDS} s ($(sed -E 's/ +/ /g' <<<"$recap"))"
  printf '%s %s\n' "$CHANGED" "$SITE_SECONDS" >"$STATE/last-converge"
}

# The sample is posted to the sample channel through the local Telegram test server, with the
# file's message ids: posts the channel already has are skipped, so a second run adds nothing.
post_sample() {
  [ -f "$SAMPLE" ] || die "sample channel $SAMPLE not found"
  local result
  POSTS="$(grep -c . "$SAMPLE")"
  POSTED_AT="$(date +%s.%N)"
  result="$(docker exec -i "$NAME" tgstack-telegram-test post-file "$(sample_channel)" - --keep-ids <"$SAMPLE")" \
    || die "posting the sample through the test server failed (docker exec $NAME journalctl -u tgstack-telegram-test)"
  read -r NEW ALREADY <<<"$("$VENV/bin/python" -c \
    'import json, sys; r = json.load(sys.stdin); print(r["posted"], r["already_there"])' <<<"$result")"
  say "posted $NEW of the $POSTS posts of ${SAMPLE#"$ROOT"/} to the sample channel through the local Telegram server over MTProto ($ALREADY were there already)"
}

sample_channel() { head -n1 "$SAMPLE" | sed -E 's/.*"channel_id": *(-?[0-9]+).*/\1/'; }

counts() {
  psql_sandbox "SELECT count(*),
      count(*) FILTER (WHERE processing_state IN ('pending', 'processing')),
      (SELECT count(*) FROM tp_capital.signals s WHERE s.channel_id = $1),
      count(*) FILTER (WHERE coalesce((metadata->>'marks')::int, 0) <> 1)
    FROM telegram_gateway.messages WHERE channel_id = $1"
}

wait_for_signals() {
  local channel="$1" row deadline=$((EPOCHSECONDS + 90))
  while [ "$EPOCHSECONDS" -lt "$deadline" ]; do
    # Every post of the sample stored by the gateway and processed by the poller.
    row="$(counts "$channel" 2>/dev/null || true)"
    IFS='|' read -r MESSAGES UNPROCESSED SIGNALS NOT_ONCE <<<"${row:-0|1|0|0}"
    if [ "$MESSAGES" -ge "$POSTS" ] && [ "$UNPROCESSED" -eq 0 ]; then
      DONE_AT="$(date +%s.%N)"
      return
    fi
    sleep 0.3
  done
  die "after 90 s: $MESSAGES of $POSTS posts stored, $UNPROCESSED unprocessed (journalctl: docker exec $NAME journalctl -u 'tgstack-*')"
}

report() {
  local channel latency converge_line=""
  channel="$(sample_channel)"
  POSTS="${POSTS:-$(grep -c . "$SAMPLE")}"
  IFS='|' read -r MESSAGES UNPROCESSED SIGNALS NOT_ONCE <<<"$(counts "$channel")"
  # Per post: stored by the gateway -> its signal stored by the poller.
  latency="$(psql_sandbox "SELECT
      round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM s.created_at - m.received_at)))::int,
      round(1000 * percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM s.created_at - m.received_at)))::int,
      round(1000 * max(extract(epoch FROM s.created_at - m.received_at)))::int
    FROM tp_capital.signals s JOIN telegram_gateway.messages m
      ON m.channel_id = s.channel_id AND m.message_id = s.message_id
    WHERE s.channel_id = $channel")"
  IFS='|' read -r P50 P95 PMAX <<<"$latency"
  # What the channel's follow-ups made of its signals (docs/signal-lifecycle.md).
  lifecycle="$(psql_sandbox "SELECT coalesce(string_agg(s.status || ' ' || n, ', ' ORDER BY s.status), 'none'),
      (SELECT count(*) FROM tp_capital.signal_events e WHERE e.channel_id = $channel AND e.retired_at IS NULL AND e.signal_id IS NOT NULL),
      (SELECT count(*) FROM tp_capital.signal_reviews v WHERE v.channel_id = $channel AND v.retired_at IS NULL)
    FROM (SELECT status, count(*) AS n FROM tp_capital.signals
           WHERE channel_id = $channel AND retired_at IS NULL GROUP BY status) s")"
  IFS='|' read -r STATUSES EVENTS REVIEWS <<<"$lifecycle"
  if [ -f "$STATE/last-converge" ]; then
    read -r c s <"$STATE/last-converge"
    converge_line="site.yml        $c changed ($s s)"
  fi
  cat <<EOF

==================== tgstack demo: $NAME ====================
$converge_line
messages in     $MESSAGES stored of $POSTS posts in ${SAMPLE#"$ROOT"/} (channel $channel)
signals out     $SIGNALS TP Capital signals; posts not marked exactly once: $NOT_ONCE; unprocessed: $UNPROCESSED
latency         post stored -> signal stored: p50 ${P50:-?} ms, p95 ${P95:-?} ms, max ${PMAX:-?} ms
follow-ups      ${EVENTS:-0} linked to their signals; signals by status: ${STATUSES:-none}; posts to review: ${REVIEWS:-0}
EOF
  if [ -n "${DONE_AT:-}" ] && [ -n "${POSTED_AT:-}" ]; then
    awk -v a="$POSTED_AT" -v b="$DONE_AT" -v n="$NEW" -v d="$ALREADY" 'BEGIN {
      printf "this run        %d new posts through the local Telegram server (%d there already); posted -> all processed in %.1f s\n", n, d, b - a }'
  fi
  cat <<EOF

where to look (everything listens on the server's loopback; reach it with docker exec):
  services      docker exec $NAME systemctl status 'tgstack-*'
  logs          docker exec $NAME journalctl -u 'tgstack-*' -f
  prometheus    docker exec $NAME curl -s 'http://127.0.0.1:9090/api/v1/query?query=up'
  metrics       docker exec $NAME curl -s http://127.0.0.1:4006/metrics | grep ^tgstack_gateway
  api           docker exec $NAME sh -c 'curl -s -H "Authorization: Bearer \$(sed -n "s/^TGSTACK_API_READ_TOKENS=//p" /etc/tgstack/tgstack.env)" "http://127.0.0.1:4010/v1/signals?limit=3"'
  review        docker exec $NAME sudo -u tgstack tgstack signals review
  database      docker exec -it $NAME docker exec -it -u postgres tgstack-postgres psql -d telegram_gateway
  telegram      docker exec $NAME tgstack-telegram-test info        (the local Telegram server; --help lists its commands)
  more posts    docker exec $NAME tgstack-telegram-test post tgstack_sample 'Ativo: PETR4 Compra: 36,50 Alvo: 38,90 Stop: 34,80'
  replay a file docker exec -i $NAME sh -c 'cat > /tmp/more.jsonl && sudo -u tgstack tgstack replay /tmp/more.jsonl' < FILE.jsonl   (docs/replay-format.md)
  health        make health
  remove it     make demo-down
EOF
}

up() {
  say "tgstack demo: engine, images, sandbox server, site.yml, sample channel"
  "$ROOT/scripts/testbed/engine.sh"
  "$ROOT/scripts/testbed/build-images.sh" server stack
  "$ROOT/scripts/testbed/save-images.sh"
  start_sandbox
  wait_for_sandbox
  converge
  post_sample
  wait_for_signals "$(sample_channel)"
  report
  say "done"
}

down() {
  if docker inspect "$NAME" >/dev/null 2>&1; then
    docker rm --force --volumes "$NAME" >/dev/null
    say "removed the sandbox server $NAME"
  else
    say "no sandbox server $NAME"
  fi
  if docker volume inspect "$VOLUME" >/dev/null 2>&1; then
    docker volume rm "$VOLUME" >/dev/null
    say "removed its volume $VOLUME"
  fi
  rm -f "$STATE/last-converge"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  replay)
    post_sample
    wait_for_signals "$(sample_channel)"
    report
    ;;
  report) report ;;
  -h | --help) sed -n '2,20p' "$0" ;;
  *) die "usage: $0 up|down|replay|report" ;;
esac
