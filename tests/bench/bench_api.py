"""Read API latency at a fixed request rate: ``python tests/bench/bench_api.py [--rate 200]``.

Starts its own PostgreSQL + PgBouncer and Redis, migrates, seeds ``--messages`` posts over five
channels and ``--signals`` signals, then for each server under test (``--server``, default:
this checkout's ``tgstack api``) starts ``python -m tgstack api`` on the same database, sends a
warm-up and then ``--rate`` requests per second for ``--seconds`` on a fixed endpoint mix
(``MIX``), open loop: request *i* is due at ``start + i / rate`` and its latency runs from then
to the last byte of its answer, so a server that falls behind is charged for the queue it
builds. Prints p50/p99 (ms) overall and per endpoint, and the errors; ``--json`` writes them.

A server is ``LABEL=PYTHON[:PYTHONPATH]``: the interpreter whose ``tgstack`` is measured, e.g.
a virtualenv holding an older lock with an older tree on ``PYTHONPATH`` (the before/after of
docs/performance.md). Redis and the database are flushed of the API's cache between servers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

# The test tooling (local servers) lives in testing/, beside the runtime, not in the wheel.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testing"))

from tgstack.db import Database
from tgstack.migrate import apply_migrations
from tgstack.models import MessageRecord
from tgstack_testing.localstack import (
    RedisServer,
    free_port,
    port_open,
    start_data_stack,
    wait_until,
)

CHANNELS = [-1001649127710 - index for index in range(5)]
START = datetime(2026, 1, 1, tzinfo=UTC)
TOKEN = "bench-read-token-" + "0" * 16


@dataclass(frozen=True)
class Server:
    label: str
    python: str
    pythonpath: str | None = None


@dataclass
class Result:
    label: str
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    late_start_ms: float = 0.0

    def summary(self) -> dict[str, object]:
        every = [value for values in self.latencies.values() for value in values]
        per = {name: _percentiles(values) for name, values in sorted(self.latencies.items())}
        return {
            "label": self.label,
            "requests": self.sent,
            "errors": self.errors,
            "overall": _percentiles(every),
            "endpoints": per,
        }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(cut[98] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


# The endpoint mix: (name, weight, path maker). Lists repeat a few filters (cache hits after the
# first), single items draw from the whole table (mostly misses, each a database read).
def _mix(
    rng: random.Random, messages: int, signals: int
) -> list[tuple[str, int, Callable[[], str]]]:
    per_channel = messages // len(CHANNELS)
    return [
        ("list_messages", 30, lambda: f"/v1/messages?channel_id={rng.choice(CHANNELS)}&limit=50"),
        ("list_messages_page", 5, lambda: "/v1/messages?limit=20"),
        (
            "get_message",
            25,
            lambda: f"/v1/messages/{rng.choice(CHANNELS)}/{rng.randint(1, per_channel)}",
        ),
        ("list_signals", 15, lambda: f"/v1/signals?limit=50&asset={rng.choice(ASSETS)}"),
        (
            "get_signal",
            10,
            lambda: f"/v1/signals/{CHANNELS[0]}/{rng.randint(1, min(signals, per_channel))}",
        ),
        ("list_channels", 10, lambda: "/v1/channels"),
        ("health", 5, lambda: "/health"),
    ]


ASSETS = ["PETR4", "VALE3", "ITUB4", "BBDC4", "WEGE3"]


def seed(dsn: str, messages: int, signals: int) -> None:
    per_channel = messages // len(CHANNELS)
    step = timedelta(days=30) / per_channel
    with Database(dsn, min_size=1, max_size=2) as database:
        for channel in CHANNELS:
            records = [
                MessageRecord.create(
                    channel,
                    mid,
                    START + step * mid,
                    text=f"🟢Swing Trade\nAtivo: {ASSETS[mid % 5]}\nCompra: 27,50 a 28,00 #{mid}",
                )
                for mid in range(1, per_channel + 1)
            ]
            for first in range(0, len(records), 5_000):
                database.bulk_upsert(records[first : first + 5_000])
    rows = [
        (
            CHANNELS[0],
            mid,
            START + step * mid,
            ASSETS[mid % 5],
            f"Ativo: {ASSETS[mid % 5]}\nCompra: 27,50 a 28,00",
        )
        for mid in range(1, min(signals, per_channel) + 1)
    ]
    with (
        psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn,
        conn.cursor() as cur,
    ):
        cur.executemany(
            "INSERT INTO tp_capital.signals (channel_id, message_id, telegram_date, asset,"
            " signal_type, buy_min, buy_max, target_1, stop, raw_text)"
            " VALUES (%s, %s, %s, %s, 'Swing Trade', 27.50, 28.00, 30.10, 26.00, %s)",
            rows,
        )
        cur.execute("ANALYZE")


def start_server(server: Server, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    child = {k: v for k, v in os.environ.items() if not k.startswith("TGSTACK_")} | env
    if server.pythonpath:
        child["PYTHONPATH"] = server.pythonpath
    out = log.open("wb")
    return subprocess.Popen(
        [server.python, "-m", "tgstack", "api"],
        env=child,
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=log.parent,
    )


def drive(
    port: int, rate: float, seconds: float, messages: int, signals: int, seed_value: int
) -> Result:
    """Open-loop load: request i is due at start + i / rate, sent by the first free worker."""
    rng = random.Random(seed_value)
    mix = _mix(rng, messages, signals)
    names = [name for name, _, _ in mix]
    weights = [weight for _, weight, _ in mix]
    makers = {name: make for name, _, make in mix}
    total = int(rate * seconds)
    plan = [(name, makers[name]()) for name in rng.choices(names, weights, k=total)]
    due: queue.Queue[tuple[float, str, str] | None] = queue.Queue()
    result = Result(label="")
    lock = threading.Lock()
    workers = 32

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        while (item := due.get()) is not None:
            when, name, path = item
            delay = when - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:
                conn.request("GET", path, headers=headers)
                answer = conn.getresponse()
                answer.read()
                status = answer.status
                if answer.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException):
                conn.close()
                status = 0
            elapsed = time.perf_counter() - when
            with lock:
                if status == 200:
                    result.latencies.setdefault(name, []).append(elapsed)
                else:
                    key = f"{name}:{status}"
                    result.errors[key] = result.errors.get(key, 0) + 1
        conn.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    start = time.perf_counter() + 0.2
    for index, (name, path) in enumerate(plan):
        due.put((start + index / rate, name, path))
    for _ in threads:
        due.put(None)
    for thread in threads:
        thread.join(seconds + 120)
    result.sent = total
    return result


def measure(server: Server, args: argparse.Namespace, stack_env: dict[str, str], base: Path,
            cache: redis.Redis) -> Result:  # fmt: skip
    port = free_port()
    env = stack_env | {"TGSTACK_API_PORT": str(port)}
    cache.flushdb()
    log = base / f"api-{server.label}.log"
    process = start_server(server, env, log)
    try:
        try:
            wait_until(lambda: port_open(port), 30, f"{server.label} to listen")
        except Exception:
            progress(log.read_text(errors="replace")[-3000:])
            raise
        progress(f"{server.label}: warm-up ({args.warmup:.0f} s)")
        drive(port, args.rate, args.warmup, args.messages, args.signals, seed_value=1)
        progress(f"{server.label}: {args.rate:.0f} req/s for {args.seconds:.0f} s")
        result = drive(port, args.rate, args.seconds, args.messages, args.signals, seed_value=2)
        result.label = server.label
        return result
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def progress(text: str) -> None:
    print(f"[bench-api] {text}", file=sys.stderr, flush=True)


def _server(text: str) -> Server:
    label, _, rest = text.partition("=")
    python, _, pythonpath = rest.partition(":")
    if not label or not python:
        raise argparse.ArgumentTypeError("a server is LABEL=PYTHON[:PYTHONPATH]")
    return Server(label, python, pythonpath or None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--signals", type=int, default=5_000)
    parser.add_argument("--threads", type=int, default=8, help="TGSTACK_API_THREADS")
    parser.add_argument(
        "--server", type=_server, action="append", help="LABEL=PYTHON[:PYTHONPATH] (repeatable)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    servers = args.server or [Server("this-checkout", sys.executable)]

    base = Path(tempfile.mkdtemp(prefix="tgstack-bench-api-"))
    stack = None
    redis_server = None
    try:
        progress("starting PostgreSQL, PgBouncer and Redis")
        stack = start_data_stack(base / "stack", pool_size=20)
        redis_server = RedisServer(base / "redis", password=secrets.token_urlsafe(16))
        redis_server.start()
        apply_migrations(stack.direct_dsn)
        progress(f"seeding {args.messages:,} messages and {args.signals:,} signals")
        seed(stack.app_dsn, args.messages, args.signals)
        cache = redis.Redis(
            host="127.0.0.1", port=redis_server.port, password=redis_server.password
        )
        stack_env = {
            "TGSTACK_DATABASE_URL": stack.app_dsn,
            "TGSTACK_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
            "TGSTACK_REDIS_PASSWORD": redis_server.password,
            "TGSTACK_API_READ_TOKENS": TOKEN,
            "TGSTACK_API_RATE_LIMIT_PER_SECOND": "100000",
            "TGSTACK_API_RATE_LIMIT_BURST": "1000000",
            "TGSTACK_API_THREADS": str(args.threads),
        }
        results = [measure(server, args, stack_env, base, cache) for server in servers]
        cache.close()
    finally:
        if redis_server is not None:
            redis_server.stop()
        if stack is not None:
            stack.stop()
        shutil.rmtree(base, ignore_errors=True)

    summaries = [result.summary() for result in results]
    for summary in summaries:
        print(
            f"\n== {summary['label']}: {summary['requests']} requests, errors {summary['errors']}"
        )
        print(f"{'endpoint':<22}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        rows = {"overall": summary["overall"], **summary["endpoints"]}  # type: ignore[dict-item]
        for name, values in rows.items():
            print(
                f"{name:<22}{values['n']:>7}{values['p50_ms']:>10}{values['p99_ms']:>10}"
                f"{values.get('max_ms', float('nan')):>10}"
            )
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2))
    return 1 if any(summary["errors"] for summary in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
