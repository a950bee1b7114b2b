"""One failover drill, run ON the server with the runtime's Python (it imports tgstack).

    /opt/tgstack/runtime/venv/bin/python drill.py DRILL --posts N --seed S

Posts N synthetic posts, round-robin over the gateway's channels, through the sandbox's local
Telegram test server (its control port; the real telethon gateway receives them over MTProto):
B bursts, one every INTERVAL seconds. Injects the fault after K bursts while the feed goes on,
measures the recovery, waits until every post is stored and processed, and prints one JSON
document of figures and checks. Telegram gives the message ids, so a drill's posts are, per
channel, the ids from its first post to its last. Times are taken here, next to the services,
with a monotonic clock.

Drills: redis-master (docker stop the Redis master: Sentinel promotes the replica), kill-gateway
(SIGKILL the gateway: systemd restarts it on the same Telegram session, and the posts made while
it was down are backfilled), restart-db (docker restart PostgreSQL: PgBouncer and the pools
reconnect), restart-rabbitmq (docker restart RabbitMQ: the outbox relay republishes), none (only
the feed: for a playbook run alongside).

No credentials: queries go through `docker exec` (PostgreSQL's socket as postgres, redis-cli
with the containers' own REDISCLI_AUTH).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tgstack.gateway.synthetic import generate
from tgstack.keys import dedup_key
from tgstack.signals import parse_signal

# The test server's code, installed by the runtime role beside the virtualenv.
sys.path.insert(0, "/opt/tgstack/telegram-test")
from tgstack_testing.telegram.control import ControlClient

ENV_FILE = Path("/etc/tgstack/tgstack.env")
SENTINEL = "tgstack-redis-sentinel-1"
MASTER_NAME = "tgstack"
GATEWAY_UNIT = "tgstack-gateway@main.service"


def env_settings() -> dict[str, str]:
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def run(*argv: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def sql(query: str) -> list[list[str]]:
    done = run(
        "docker", "exec", "-u", "postgres", "tgstack-postgres", "psql", "-X", "-At", "-F", "|",
        "-d", "telegram_gateway", "-c", query,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return [line.split("|") for line in done.stdout.strip().splitlines()]


def try_sql(query: str) -> list[list[str]] | None:
    try:
        return sql(query)
    except (RuntimeError, subprocess.TimeoutExpired):
        return None


def redis_cli(port: int, *args: str) -> str:
    done = run("docker", "exec", SENTINEL, "redis-cli", "-h", "127.0.0.1", "-p", str(port), *args)
    return done.stdout.strip()


def sentinel_master() -> tuple[str, int] | None:
    lines = redis_cli(26379, "SENTINEL", "get-master-addr-by-name", MASTER_NAME).splitlines()
    return (lines[0], int(lines[1])) if len(lines) == 2 and lines[1].isdigit() else None


def http_json(port: int, path: str = "/health") -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            data = json.loads(response.read())
            return data if isinstance(data, dict) else {"body": data}
    except Exception:
        return None


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return bool(response.status == 200)
    except Exception:
        return False


def wait(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.2) -> float:
    """Seconds until probe() is truthy; raises TimeoutError naming `what`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if probe():
            return time.monotonic() - started
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


# ----- the feed ------------------------------------------------------------------------------


class Feed:
    """Post the drill's posts through the test server's control port, a burst at a time."""

    def __init__(self, args: argparse.Namespace, channels: list[int]) -> None:
        self.interval = args.interval
        self.control_address = _address(args.control)
        self.channels = channels
        records = list(generate(args.posts, channels=channels, seed=args.seed))
        self.posts = len(records)
        self.signals_expected = sum(1 for r in records if parse_signal(r.text) is not None)
        per_burst = -(-len(records) // args.bursts)
        self.bursts = [
            [(r.channel_id, r.text) for r in records[i : i + per_burst]]
            for i in range(0, len(records), per_burst)
        ]
        self.ranges: dict[int, tuple[int, int]] = {}
        self.lock = threading.Lock()
        self.probes: list[tuple[int, int]] = []
        self.sent_bursts = 0
        self.posted = 0
        self.done = threading.Event()
        self.started_at = 0.0
        self.finished_at = 0.0

    def _post(self, client: ControlClient, channel: int, text: str) -> int:
        message_id = int(client.post(-channel - 10**12, text)["id"])  # bare id of -100<id>
        with self.lock:
            first, last = self.ranges.get(channel, (message_id, message_id))
            self.ranges[channel] = (min(first, message_id), max(last, message_id))
            self.posted += 1
        return message_id

    def run(self) -> None:
        self.started_at = time.monotonic()
        with ControlClient(*self.control_address) as client:
            for burst in self.bursts:
                for channel, text in burst:
                    self._post(client, channel, text)
                self.sent_bursts += 1
                time.sleep(self.interval)
        self.finished_at = time.monotonic()
        self.done.set()

    def probe(self) -> tuple[int, int]:
        """One more post (chatter, in the first channel); it counts as sent."""
        channel = self.channels[0]
        with ControlClient(*self.control_address) as client:
            message_id = self._post(client, channel, f"probe {len(self.probes) + 1}")
        self.posts += 1
        self.probes.append((channel, message_id))
        return channel, message_id

    def where(self, alias: str = "") -> str:
        """SQL: the rows of this drill's posts (per channel, its first to its last id)."""
        prefix = f"{alias}." if alias else ""
        with self.lock:
            ranges = sorted(self.ranges.items())
        return "(" + " OR ".join(
            f"({prefix}channel_id = {channel} AND {prefix}message_id BETWEEN {lo} AND {hi})"
            for channel, (lo, hi) in ranges
        ) + ")" if ranges else "false"

    def wait_bursts(self, count: int) -> None:
        while self.sent_bursts < count and not self.done.is_set():
            time.sleep(0.05)


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def test_server_counters(address: tuple[str, int]) -> dict[str, Any]:
    with ControlClient(*address) as client:
        return client.counters()


def drill_counts(feed: Feed) -> dict[str, int]:
    where = feed.where()
    rows = sql(
        "SELECT count(*), count(DISTINCT (channel_id, message_id)),"
        " count(*) FILTER (WHERE processing_state IN ('processed', 'ignored')),"
        " count(*) FILTER (WHERE coalesce((metadata ->> 'marks')::int, 0) > 1),"
        " (SELECT count(*) FROM telegram_gateway.message_outbox"
        f" WHERE published_at IS NULL AND {where}),"
        f" (SELECT count(*) FROM tp_capital.signals WHERE {where}),"
        f" (SELECT count(*) FROM telegram_gateway.message_keys WHERE {where})"
        f" FROM telegram_gateway.messages WHERE {where}"
    )[0]
    keys = ("rows", "distinct_keys", "processed", "processed_twice", "unpublished", "signals",
            "message_keys")  # fmt: skip
    return dict(zip(keys, (int(v) for v in rows), strict=True))


def dlq_depth() -> int | None:
    done = run(
        "docker", "exec", "tgstack-rabbitmq", "rabbitmqctl", "-q", "list_queues", "-p", "telegram",
        "name", "messages", "--no-table-headers",
    )  # fmt: skip
    for line in done.stdout.splitlines():
        name, _, depth = line.partition("\t")
        if name.strip() == "telegram.messages.dlq" and depth.strip().isdigit():
            return int(depth)
    return None


# ----- faults ----------------------------------------------------------------------------------


def fault_redis_master(feed: Feed, figures: dict[str, Any]) -> None:
    before = sentinel_master()
    assert before is not None, "no Redis master known to Sentinel"
    container = "tgstack-redis-master" if before[1] == 6379 else "tgstack-redis-replica"
    figures["old_master"] = f"{before[0]}:{before[1]} ({container})"
    t0 = time.monotonic()
    run("docker", "stop", container, check=True)
    stopped = time.monotonic() - t0
    wait(
        "a replica promoted",
        lambda: (m := sentinel_master()) is not None and m != before,
        timeout=30,
    )
    promoted = time.monotonic() - t0
    after = sentinel_master()
    assert after is not None
    figures["new_master"] = f"{after[0]}:{after[1]}"
    figures["stop_seconds"] = round(stopped, 2)
    figures["promotion_seconds"] = round(promoted, 2)
    figures["promotion_after_stopped_seconds"] = round(promoted - stopped, 2)
    try:
        # The gateway follows: a post sent now (one every 2 s until then) gets its dedup key on
        # the new master (the body key is short-lived: the poller drops it once processed).
        feed.done.wait()
        first_probe = time.monotonic()

        def probe_cached() -> bool:
            if not feed.probes or time.monotonic() - first_probe > 2 * len(feed.probes):
                feed.probe()
            return any(
                redis_cli(after[1], "EXISTS", dedup_key(ch, mid)) == "1"
                for ch, mid in feed.probes
            )

        wait("a new post's dedup key on the new master", probe_cached, timeout=120, interval=0.5)
        figures["gateway_follows_seconds"] = round(time.monotonic() - first_probe, 2)
        figures["probe_posts"] = len(feed.probes)
        figures["poller_follows_seconds"] = round(
            wait("the poller's cache on the new master",
                 lambda: (h := http_json(4007)) is not None and h.get("redis") is True,
                 timeout=120),
            2,
        )  # fmt: skip
    finally:
        # Whatever happened, the old master comes back (Sentinel makes it a replica).
        run("docker", "start", container, check=True)

        def old_master_is_a_replica() -> bool:
            info = redis_cli(before[1], "INFO", "replication")
            return "role:slave" in info and "master_link_status:up" in info

        figures["old_master_rejoined_as_replica_seconds"] = round(
            wait("the old master back as a replica", old_master_is_a_replica, timeout=90), 2
        )


def gateway_pid() -> int:
    out = run("systemctl", "show", "-p", "MainPID", "--value", GATEWAY_UNIT).stdout.strip()
    return int(out) if out.isdigit() else 0


def session_auth_key(path: Path) -> str | None:
    """sha256 of the auth key in a Telethon session file (the account's login on that key)."""
    if not path.exists():
        return None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT auth_key FROM sessions").fetchone()
    return hashlib.sha256(row[0]).hexdigest() if row and row[0] else None


def fault_kill_gateway(feed: Feed, figures: dict[str, Any]) -> None:
    settings = env_settings()
    session = Path(settings.get("TGSTACK_TELEGRAM_SESSION", "/var/lib/tgstack/gateway.session"))
    control = feed.control_address
    key_before = session_auth_key(session)
    handshakes_before = test_server_counters(control)["handshakes"]
    old = gateway_pid()
    assert old > 0, "the gateway is not running"
    t0 = time.monotonic()
    run("kill", "-9", str(old), check=True)
    posted_at_kill = feed.posted
    restarted = wait(
        "systemd restarting the gateway",
        lambda: gateway_pid() not in (0, old),
        timeout=60,
        interval=0.1,
    )
    ready = wait("the restarted gateway healthy", lambda: healthy(4006), timeout=60, interval=0.2)
    figures["killed_pid"] = old
    figures["new_pid"] = gateway_pid()
    figures["restart_seconds"] = round(restarted, 2)
    figures["healthy_after_kill_seconds"] = round(time.monotonic() - t0, 2)
    figures["healthy_after_restart_seconds"] = round(ready, 2)
    # Posted while no gateway was connected: only the restarted one's catch-up can store them.
    figures["posts_while_down"] = feed.posted - posted_at_kill
    figures["session_file"] = str(session)
    figures["session_auth_key_kept"] = key_before is not None and (
        session_auth_key(session) == key_before
    )
    # No new auth key was made: the restarted gateway signed in with the surviving session.
    figures["handshakes_after_kill"] = test_server_counters(control)["handshakes"] - (
        handshakes_before
    )
    restarts = run("systemctl", "show", "-p", "NRestarts", "--value", GATEWAY_UNIT).stdout.strip()
    figures["systemd_restarts_total"] = int(restarts) if restarts.isdigit() else None


def query_through_pgbouncer() -> bool:
    """A real query as the application role through PgBouncer (the runtime's DSN)."""
    import psycopg

    try:
        with psycopg.connect(
            env_settings()["TGSTACK_DATABASE_URL"], connect_timeout=2, prepare_threshold=None
        ) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


def stored_count() -> int | None:
    rows = try_sql("SELECT count(*) FROM telegram_gateway.messages")
    return int(rows[0][0]) if rows else None


def fault_restart_db(feed: Feed, figures: dict[str, Any]) -> None:
    before = stored_count() or 0
    t0 = time.monotonic()
    run("docker", "restart", "tgstack-postgres", check=True, timeout=120)
    figures["docker_restart_seconds"] = round(time.monotonic() - t0, 2)
    wait("a query through PgBouncer", query_through_pgbouncer, timeout=120)
    figures["pgbouncer_serving_seconds"] = round(time.monotonic() - t0, 2)
    wait(
        "the gateway storing again",
        lambda: (n := stored_count()) is not None and n > before,
        timeout=180,
    )
    figures["writes_resumed_seconds"] = round(time.monotonic() - t0, 2)
    figures["poller_database_ok"] = (h := http_json(4007)) is not None and h.get("database") is True


def unpublished_count() -> int | None:
    rows = try_sql("SELECT telegram_gateway.count_unpublished()")
    return int(rows[0][0]) if rows else None


def fault_restart_rabbitmq(feed: Feed, figures: dict[str, Any]) -> None:
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, unpublished_count() or 0)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    run("docker", "restart", "tgstack-rabbitmq", check=True, timeout=180)
    figures["docker_restart_seconds"] = round(time.monotonic() - t0, 2)

    def accepting() -> bool:
        done = run(
            "docker", "exec", "tgstack-rabbitmq", "rabbitmq-diagnostics", "-q",
            "check_port_connectivity",
        )  # fmt: skip
        return done.returncode == 0

    wait("RabbitMQ accepting connections", accepting, timeout=180, interval=1.0)
    figures["broker_accepting_seconds"] = round(time.monotonic() - t0, 2)
    feed.done.wait()
    wait(
        "the outbox relay republishing everything",
        lambda: unpublished_count() == 0,
        timeout=300,
        interval=1.0,
    )
    figures["outbox_drained_seconds"] = round(time.monotonic() - t0, 2)
    stop.set()
    watcher.join()
    figures["unpublished_peak"] = peak


FAULTS: dict[str, Callable[[Feed, dict[str, Any]], None]] = {
    "redis-master": fault_redis_master,
    "kill-gateway": fault_kill_gateway,
    "restart-db": fault_restart_db,
    "restart-rabbitmq": fault_restart_rabbitmq,
    "none": lambda feed, figures: None,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("drill", choices=sorted(FAULTS))
    parser.add_argument("--name", required=True, help="names the drill in its figures")
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.4)
    parser.add_argument("--fault-after", type=int, default=8, help="bursts posted before the fault")
    parser.add_argument("--settle-timeout", type=float, default=420)
    parser.add_argument("--control", default="127.0.0.1:4021",
                        help="HOST:PORT of the test server's control interface")
    args = parser.parse_args()

    settings = env_settings()
    if not settings.get("TGSTACK_TELEGRAM_SERVER"):
        parser.error("the gateway is not on the local test server (TGSTACK_TELEGRAM_SERVER)")
    channels = [int(c) for c in settings["TGSTACK_CHANNELS"].split(",") if c]
    feed = Feed(args, channels)
    figures: dict[str, Any] = {
        "drill": args.name,
        "posts_sent": feed.posts,
        "signals_expected": feed.signals_expected,
        "bursts": len(feed.bursts),
    }
    feeder = threading.Thread(target=feed.run, daemon=True)
    feeder.start()
    feed.wait_bursts(args.fault_after)
    error = None
    try:
        FAULTS[args.drill](feed, figures)
    except Exception as exc:  # reported, then the settle check still runs
        error = f"{type(exc).__name__}: {exc}"
    feed.done.wait()
    figures["posts_sent"] = feed.posts  # with any probe posts
    figures["message_ids"] = {str(c): list(r) for c, r in sorted(feed.ranges.items())}
    figures["feed_seconds"] = round(feed.finished_at - feed.started_at, 2)
    where = feed.where()

    def settled() -> bool:
        counts = try_sql(
            "SELECT count(*) FILTER (WHERE processing_state IN ('processed', 'ignored')),"
            " (SELECT count(*) FROM telegram_gateway.message_outbox"
            f" WHERE published_at IS NULL AND {where}),"
            f" (SELECT count(*) FROM tp_capital.signals WHERE {where})"
            f" FROM telegram_gateway.messages WHERE {where}"
        )
        return counts is not None and counts[0] == [
            str(feed.posts),
            "0",
            str(feed.signals_expected),
        ]

    try:
        figures["settled_after_feed_seconds"] = round(
            wait("every post stored and processed", settled, args.settle_timeout, interval=1.0), 2
        )
    except TimeoutError as exc:
        error = error or str(exc)
    figures["counts"] = drill_counts(feed)
    figures["dlq_depth"] = dlq_depth()
    figures["error"] = error
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
