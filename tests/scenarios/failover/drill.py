"""One failover drill, run ON the server with the runtime's Python (it imports tgstack).

    /opt/tgstack/runtime/venv/bin/python drill.py DRILL --posts N --first-id ID --seed S

Stages N synthetic posts (message ids from ID, over the three default channels) as F spool
files, feeds them into the gateway's spool directory one every INTERVAL seconds, injects the
fault after K files while the feed goes on, measures the recovery, waits until every post is
stored and processed, and prints one JSON document of figures and checks. Times are taken here,
next to the services, with a monotonic clock.

Drills: redis-master (docker stop the Redis master: Sentinel promotes the replica), kill-gateway
(SIGKILL the gateway: systemd restarts it, the spool read position resumes), restart-db (docker
restart PostgreSQL: PgBouncer and the pools reconnect), restart-rabbitmq (docker restart
RabbitMQ: the outbox relay republishes), none (only the feed: for a playbook run alongside).

No credentials: queries go through `docker exec` (PostgreSQL's socket as postgres, redis-cli
with the containers' own REDISCLI_AUTH).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tgstack.gateway.synthetic import DEFAULT_CHANNELS, generate, to_jsonl_line
from tgstack.keys import dedup_key
from tgstack.signals import parse_signal

ENV_FILE = Path("/etc/tgstack/tgstack.env")
SENTINEL = "tgstack-redis-sentinel-1"
MASTER_NAME = "tgstack"
GATEWAY_UNIT = "tgstack-gateway.service"


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
    """Stage posts as spool files, then move them into the spool one by one."""

    def __init__(self, args: argparse.Namespace, spool: Path) -> None:
        self.spool = spool
        self.staging = spool.parent / f"drill-staging-{args.name}"
        self.interval = args.interval
        self.name = args.name
        records = list(
            generate(
                args.posts,
                channels=DEFAULT_CHANNELS,
                seed=args.seed,
                first_message_id=args.first_id,
            )
        )
        self.posts = len(records)
        self.signals_expected = sum(1 for r in records if parse_signal(r.text) is not None)
        self.last_key = (records[-1].channel_id, records[-1].message_id)
        self.id_range = (args.first_id, max(r.message_id for r in records) + 1)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(mode=0o755)
        self.files: list[Path] = []
        per_file = -(-len(records) // args.files)
        for index in range(args.files):
            chunk = records[index * per_file : (index + 1) * per_file]
            if not chunk:
                break
            path = self.staging / f"{self.name}-{index:04d}.jsonl"
            path.write_text("".join(to_jsonl_line(r) + "\n" for r in chunk), encoding="utf-8")
            path.chmod(0o644)
            self.files.append(path)
        self.probes: list[tuple[int, int]] = []
        self.sent = 0
        self.done = threading.Event()
        self.started_at = 0.0
        self.finished_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        for path in self.files:
            os.rename(path, self.spool / path.name)
            self.sent += 1
            time.sleep(self.interval)
        self.finished_at = time.monotonic()
        self.done.set()
        shutil.rmtree(self.staging, ignore_errors=True)

    def probe(self) -> tuple[int, int]:
        """One more post (chatter, in the first channel) as a spool file of its own; it counts
        as sent and its id extends the drill's range."""
        channel, message_id = DEFAULT_CHANNELS[0], self.id_range[1]
        self.id_range = (self.id_range[0], message_id + 1)
        line = json.dumps(
            {"channel_id": channel, "message_id": message_id,
             "date": "2026-11-02T12:00:00+00:00", "text": f"probe {message_id}"}
        )  # fmt: skip
        staged = self.spool.parent / f".{self.name}-probe-{message_id}.partial"
        staged.write_text(line + "\n", encoding="utf-8")
        staged.chmod(0o644)
        os.rename(staged, self.spool / f"{self.name}-probe-{message_id}.jsonl")
        self.posts += 1
        self.probes.append((channel, message_id))
        return channel, message_id

    def wait_files(self, count: int) -> None:
        while self.sent < count and not self.done.is_set():
            time.sleep(0.05)


def drill_counts(lo: int, hi: int) -> dict[str, int]:
    rows = sql(
        "SELECT count(*), count(DISTINCT (channel_id, message_id)),"
        " count(*) FILTER (WHERE processing_state IN ('processed', 'ignored')),"
        " count(*) FILTER (WHERE coalesce((metadata ->> 'marks')::int, 0) > 1),"
        " count(*) FILTER (WHERE published_at IS NULL),"
        f" (SELECT count(*) FROM tp_capital.signals WHERE message_id >= {lo}"
        f"  AND message_id < {hi}),"
        f" (SELECT count(*) FROM telegram_gateway.message_keys"
        f"   WHERE message_id >= {lo} AND message_id < {hi})"
        f" FROM telegram_gateway.messages WHERE message_id >= {lo} AND message_id < {hi}"
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


def fault_kill_gateway(feed: Feed, figures: dict[str, Any]) -> None:
    settings = env_settings()
    session = Path(settings.get("TGSTACK_TELEGRAM_SESSION", "/var/lib/tgstack/gateway.session"))
    positions = Path(settings["TGSTACK_GATEWAY_SPOOL_DIR"]) / ".tgstack-positions.json"

    def digest(path: Path) -> str | None:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None

    session_before = digest(session)
    old = gateway_pid()
    assert old > 0, "the gateway is not running"
    t0 = time.monotonic()
    run("kill", "-9", str(old), check=True)
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
    figures["session_file"] = str(session)
    figures["session_unchanged"] = session_before is not None and digest(session) == session_before
    figures["spool_positions_kept"] = positions.exists()
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
    rows = try_sql(
        "SELECT count(*) FROM telegram_gateway.messages"
        " WHERE published_at IS NULL AND deleted_at IS NULL"
    )
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
    parser.add_argument("--name", required=True, help="names the spool files")
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.4)
    parser.add_argument("--fault-after", type=int, default=8, help="files fed before the fault")
    parser.add_argument("--settle-timeout", type=float, default=420)
    args = parser.parse_args()

    spool = Path(env_settings()["TGSTACK_GATEWAY_SPOOL_DIR"])
    feed = Feed(args, spool)
    figures: dict[str, Any] = {
        "drill": args.drill,
        "posts_sent": feed.posts,
        "signals_expected": feed.signals_expected,
        "files": len(feed.files),
        "message_ids": list(feed.id_range),
    }
    feeder = threading.Thread(target=feed.run, daemon=True)
    feeder.start()
    feed.wait_files(args.fault_after)
    error = None
    try:
        FAULTS[args.drill](feed, figures)
    except Exception as exc:  # reported, then the settle check still runs
        error = f"{type(exc).__name__}: {exc}"
    feed.done.wait()
    figures["posts_sent"] = feed.posts  # with any probe posts
    figures["message_ids"] = list(feed.id_range)
    figures["feed_seconds"] = round(feed.finished_at - feed.started_at, 2)
    lo, hi = feed.id_range

    def settled() -> bool:
        counts = try_sql(
            "SELECT count(*) FILTER (WHERE processing_state IN ('processed', 'ignored')),"
            " count(*) FILTER (WHERE published_at IS NULL),"
            f" (SELECT count(*) FROM tp_capital.signals WHERE message_id >= {lo}"
            f"  AND message_id < {hi})"
            f" FROM telegram_gateway.messages WHERE message_id >= {lo} AND message_id < {hi}"
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
    figures["counts"] = drill_counts(lo, hi)
    figures["dlq_depth"] = dlq_depth()
    figures["error"] = error
    json.dump(figures, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
