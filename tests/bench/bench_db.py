"""Benchmark of the data layer on real servers: ``python tests/bench/bench_db.py [--rows N]``.

Starts its own durable PostgreSQL + PgBouncer (transaction pooling), migrates, loads N messages
(default 1,000,000) across ~20 channels over ~90 days through ``Database.bulk_upsert``, leaves a
realistic share pending (the newest messages plus a few stragglers), then measures through
PgBouncer:

* bulk upsert rows/s (``Database.bulk_upsert`` called with ``--chunk`` messages, which it
  writes in transactions of ``--batch``),
* ``get_unprocessed_messages_optimized`` p50/p95, one channel and all channels, both as the raw
  SQL call (rows in the binary format, as the runtime reads them) and through
  ``Database.fetch_unprocessed`` (which also builds the records),
* the SQL dedup check (``Database.message_exists``) p50/p99, half hits and half misses.

Other dedup implementations (e.g. Redis) plug in through ``DEDUP_CHECKS``: a name mapped to a
factory that gets the ``BenchContext`` and returns ``check(channel_id, message_id) -> bool``;
each is measured on the same keys as the SQL check.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import redis

# The test tooling (local servers) lives in testing/, beside the runtime, not in the wheel.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testing"))

from tgstack import jsonb, keys
from tgstack.cache import MessageCache
from tgstack.db import MESSAGE_COLUMNS, Database
from tgstack.migrate import apply_migrations
from tgstack.models import MessageKey, MessageRecord
from tgstack_testing.localstack import DataStack, RedisServer, start_data_stack

TARGET_POLL_P95_MS = 2.0
TARGET_UPSERT_ROWS_PER_S = 20_000.0
TARGET_DEDUP_P99_MS = 2.0  # the SQL fallback
TARGET_REDIS_DEDUP_P99_MS = 0.5

FIRST_CHANNEL_ID = -1001649127700

DedupCheck = Callable[[int, int], bool]


@dataclass
class BenchContext:
    """What a plugged-in dedup check may use: the stack, the keys loaded, the arguments."""

    stack: DataStack
    database: Database
    keys: Sequence[MessageKey]
    args: argparse.Namespace
    cleanups: list[Callable[[], object]] = field(default_factory=list)


DEDUP_CHECKS: dict[str, Callable[[BenchContext], DedupCheck]] = {}


def redis_dedup(context: BenchContext) -> DedupCheck:
    """MessageCache.is_duplicate against a real Redis holding every stored key's dedup marker."""
    base = Path(tempfile.mkdtemp(prefix="tgstack-bench-redis-"))
    server = RedisServer(base, password=secrets.token_urlsafe(16))
    server.start()
    context.cleanups.append(lambda: (server.stop(), shutil.rmtree(base, ignore_errors=True)))
    client = redis.Redis(host="127.0.0.1", port=server.port, password=server.password)
    progress(f"Redis: writing {len(context.keys):,} dedup markers")
    for start in range(0, len(context.keys), 10_000):
        with client.pipeline(transaction=False) as pipe:
            for key in context.keys[start : start + 10_000]:
                pipe.set(keys.dedup_key(*key), 1, ex=keys.DEDUP_TTL)
            pipe.execute()
    cache = MessageCache(client)
    return cache.is_duplicate


DEDUP_CHECKS["Redis dedup (MessageCache.is_duplicate)"] = redis_dedup


@dataclass
class Latencies:
    name: str
    samples_ms: list[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.samples_ms)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index]

    def summary(self, *ps: float) -> str:
        parts = [f"p{p:g} {self.percentile(p):.3f} ms" for p in ps]
        return f"{self.name}: " + ", ".join(parts) + f" (n={len(self.samples_ms)})"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Data ----------------------------------------------------------------------------------------

_ASSETS = ["PETR4", "VALE3", "ITUB4", "BBDC4", "WEGE3", "MGLU3", "BBAS3", "ABEV3", "B3SA3"]
_TYPES = ["🟢Swing Trade", "🔵Day Trade", "⚡️Scalping"]
_CHATTER = [
    "Bom dia, pessoal! Mercado abrindo com volatilidade, atenção aos stops.",
    "Resumo da semana: 7 alvos atingidos, 2 stops. Seguimos firmes no plano.",
    "Live hoje às 19h no canal, vamos revisar as operações em aberto.",
    "Atenção: ajustem o stop da operação anterior para o preço de entrada.",
]


def _post_text(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(_CHATTER) * rng.randint(1, 4)
    buy = rng.uniform(5, 120)
    return (
        f"{rng.choice(_TYPES)}\n"
        f"Ativo: {rng.choice(_ASSETS)}\n"
        f"Compra: {buy:.2f} a {buy * 1.01:.2f}\n".replace(".", ",")
        + f"Alvo 1: {buy * 1.03:.2f}\nAlvo 2: {buy * 1.06:.2f}\n".replace(".", ",")
        + f"Alvo final: {buy * 1.1:.2f}\nStop: {buy * 0.95:.2f}\n".replace(".", ",")
        + "Gerenciem o risco! Operação de acordo com o plano do canal."
    )


def generate_batches(
    rows: int, channels: int, days: int, batch: int, seed: int = 7
) -> Iterator[list[MessageRecord]]:
    """Messages in arrival order: ``rows`` posts spread evenly over the last ``days``."""
    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(minutes=1)
    start = end - timedelta(days=days)
    span = (end - start).total_seconds()
    next_id = dict.fromkeys(range(channels), 1)
    current: list[MessageRecord] = []
    for n in range(rows):
        channel = rng.randrange(channels)
        message_id = next_id[channel]
        next_id[channel] += 1
        has_media = rng.random() < 0.15
        text = _post_text(rng)
        current.append(
            MessageRecord.create(
                FIRST_CHANNEL_ID - channel,
                message_id,
                start + timedelta(seconds=span * n / rows),
                text=None if has_media else text,
                caption=text if has_media else None,
                media_type="photo" if has_media else None,
                media_refs={"photo_id": rng.getrandbits(60)} if has_media else None,
                metadata={"views": rng.randint(100, 50_000)},
            )
        )
        if len(current) == batch:
            yield current
            current = []
    if current:
        yield current


# Phases --------------------------------------------------------------------------------------


def load(database: Database, args: argparse.Namespace) -> tuple[list[MessageKey], float]:
    """Load the messages; returns the keys (arrival order) and rows/s of bulk_upsert itself."""
    keys: list[MessageKey] = []
    upsert_seconds = 0.0
    started = time.perf_counter()
    chunks = generate_batches(args.rows, args.channels, args.days, args.chunk)
    for number, records in enumerate(chunks, start=1):
        t0 = time.perf_counter()
        result = database.bulk_upsert(records)
        upsert_seconds += time.perf_counter() - t0
        keys.extend(result.inserted)
        if number % max(1, 50_000 // args.chunk) == 0 or len(keys) == args.rows:
            progress(
                f"loaded {len(keys):,}/{args.rows:,} "
                f"({len(keys) / upsert_seconds:,.0f} rows/s in bulk_upsert, "
                f"{len(keys) / (time.perf_counter() - started):,.0f} rows/s with generation)"
            )
    if len(keys) != args.rows:
        raise SystemExit(f"expected {args.rows} inserted rows, got {len(keys)}")
    return keys, len(keys) / upsert_seconds


def leave_pending(
    database: Database, keys: list[MessageKey], args: argparse.Namespace
) -> tuple[int, float]:
    """Mark all but the newest ``pending_share`` (and 0.1 % stragglers) processed."""
    rng = random.Random(11)
    newest = int(len(keys) * args.pending_share)
    cut = len(keys) - newest
    to_mark = [key for key in keys[:cut] if rng.random() >= 0.001]
    started = time.perf_counter()
    for start in range(0, len(to_mark), 5000):
        database.mark_processed(to_mark[start : start + 5000], "tp-capital-bench")
        done = min(start + 5000, len(to_mark))
        if (start // 5000) % 40 == 0 or done == len(to_mark):
            progress(f"marked {done:,}/{len(to_mark):,} processed")
    elapsed = time.perf_counter() - started
    return len(keys) - len(to_mark), len(to_mark) / elapsed


def vacuum_analyze(stack: DataStack) -> None:
    with psycopg.connect(stack.postgres.superuser_dsn(stack.dbname), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) telegram_gateway.messages")
        conn.execute("VACUUM (ANALYZE) telegram_gateway.message_keys")


def time_calls(name: str, calls: int, call: Callable[[int], object]) -> Latencies:
    for i in range(min(50, calls)):  # warm caches and plans
        call(i)
    latencies = Latencies(name)
    for i in range(calls):
        t0 = time.perf_counter()
        call(i)
        latencies.samples_ms.append((time.perf_counter() - t0) * 1000)
    return latencies


def time_interleaved(calls: list[tuple[str, Callable[[], object]]], rounds: int) -> list[Latencies]:
    """Time several calls round-robin, so that load from elsewhere hits them all alike."""
    for _ in range(min(50, rounds)):  # warm caches and plans
        for _, call in calls:
            call()
    latencies = [Latencies(name) for name, _ in calls]
    for _ in range(rounds):
        for lat, (_, call) in zip(latencies, calls, strict=True):
            t0 = time.perf_counter()
            call()
            lat.samples_ms.append((time.perf_counter() - t0) * 1000)
    return latencies


def bench_polling(
    stack: DataStack, database: Database, args: argparse.Namespace
) -> list[Latencies]:
    """Per poll limit and scope (one random channel, all channels): the SQL function alone
    (rows fetched as tuples) and ``Database.fetch_unprocessed`` (which also builds records)."""
    rng = random.Random(3)
    channel_ids = [FIRST_CHANNEL_ID - c for c in range(args.channels)]
    query = (
        f"SELECT {MESSAGE_COLUMNS} FROM telegram_gateway.get_unprocessed_messages_optimized(%s, %s)"
    )
    with psycopg.connect(stack.app_dsn, autocommit=True, prepare_threshold=None) as conn:
        jsonb.configure(conn)  # jsonb decoded as Database's connections decode it

        def sql_poll(channel: Callable[[], int | None], limit: int) -> Callable[[], object]:
            # in the binary format, as Database issues it
            return lambda: conn.execute(query, (channel(), limit), binary=True).fetchall()

        def db_poll(channel: Callable[[], int | None], limit: int) -> Callable[[], object]:
            return lambda: database.fetch_unprocessed(channel(), limit)

        calls: list[tuple[str, Callable[[], object]]] = []
        for limit in args.poll_limits:
            for scope, channel in (
                ("one channel", lambda: rng.choice(channel_ids)),
                ("all channels", lambda: None),
            ):
                calls.append((f"SQL poll, {scope}, limit {limit}", sql_poll(channel, limit)))
                calls.append(
                    (f"Database.fetch_unprocessed, {scope}, limit {limit}", db_poll(channel, limit))
                )
        return time_interleaved(calls, args.polls)


def dedup_keys(keys: Sequence[MessageKey], count: int) -> list[MessageKey]:
    """Half stored keys, half keys never stored (ids past each channel's newest)."""
    rng = random.Random(5)
    hits = rng.sample(list(keys), count // 2)
    misses = [MessageKey(key.channel_id, key.message_id + 10_000_000) for key in hits]
    probe = hits + misses
    rng.shuffle(probe)
    return probe


def bench_dedup(name: str, check: DedupCheck, probe: Sequence[MessageKey]) -> Latencies:
    return time_calls(name, len(probe), lambda i: check(*probe[i]))


# Main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--batch", type=int, default=1000, help="messages per transaction")
    parser.add_argument("--chunk", type=int, default=10_000, help="messages per bulk_upsert call")
    parser.add_argument("--pending-share", type=float, default=0.02)
    parser.add_argument("--polls", type=int, default=2000, help="calls per polling figure")
    parser.add_argument(
        "--poll-limits",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[100, 20],
        help="comma-separated poll sizes (default 100,20)",
    )
    parser.add_argument("--dedup-checks", type=int, default=20_000)
    parser.add_argument("--base-dir", type=Path, help="where the servers live (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, object]:
    base = args.base_dir or Path(tempfile.mkdtemp(prefix="tgstack-bench-"))
    progress(f"starting durable PostgreSQL + PgBouncer under {base}")
    stack = start_data_stack(base, durable=True)
    try:
        apply_migrations(stack.direct_dsn, log=lambda line: progress(f"migrate: {line}"))
        with Database(stack.app_dsn, max_size=4, batch_size=args.batch) as database:
            keys, upsert_rate = load(database, args)
            pending, mark_rate = leave_pending(database, keys, args)
            progress(f"{pending:,} messages left pending; VACUUM ANALYZE")
            vacuum_analyze(stack)
            polling = bench_polling(stack, database, args)
            probe = dedup_keys(keys, args.dedup_checks)
            dedup = [bench_dedup("SQL dedup (message_exists)", database.message_exists, probe)]
            context = BenchContext(stack, database, keys, args)
            try:
                for name, factory in DEDUP_CHECKS.items():
                    dedup.append(bench_dedup(name, factory(context), probe))
            finally:
                for cleanup in context.cleanups:
                    cleanup()
        return report(args, upsert_rate, mark_rate, pending, polling, dedup)
    finally:
        stack.stop()
        if not args.keep and args.base_dir is None:
            shutil.rmtree(base, ignore_errors=True)


def report(
    args: argparse.Namespace,
    upsert_rate: float,
    mark_rate: float,
    pending: int,
    polling: list[Latencies],
    dedup: list[Latencies],
) -> dict[str, object]:
    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES TARGET"

    print(
        f"\n== tgstack data layer: {args.rows:,} messages, {args.channels} channels, "
        f"{args.days} days, {pending:,} pending =="
    )
    print(
        f"bulk upsert (Database.bulk_upsert via PgBouncer, {args.chunk:,} per call, "
        f"{args.batch:,} per transaction): "
        f"{upsert_rate:,.0f} rows/s — {verdict(upsert_rate >= TARGET_UPSERT_ROWS_PER_S)} "
        f"(≥ {TARGET_UPSERT_ROWS_PER_S:,.0f})"
    )
    print(f"mark processed (Database.mark_processed, batch 5000): {mark_rate:,.0f} rows/s")
    for lat in polling:
        ok = lat.percentile(95) <= TARGET_POLL_P95_MS
        print(f"{lat.summary(50, 95)} — {verdict(ok)} (p95 ≤ {TARGET_POLL_P95_MS} ms)")
    for lat in dedup:
        target = TARGET_REDIS_DEDUP_P99_MS if lat.name.startswith("Redis") else TARGET_DEDUP_P99_MS
        ok = lat.percentile(99) <= target
        print(f"{lat.summary(50, 99)} — {verdict(ok)} (p99 ≤ {target} ms)")
    figures: dict[str, object] = {
        "rows": args.rows,
        "pending": pending,
        "bulk_upsert_rows_per_s": round(upsert_rate),
        "mark_processed_rows_per_s": round(mark_rate),
        "latency_ms": {
            lat.name: {
                "p50": round(lat.percentile(50), 3),
                "p95": round(lat.percentile(95), 3),
                "p99": round(lat.percentile(99), 3),
                "mean": round(statistics.fmean(lat.samples_ms), 3),
            }
            for lat in polling + dedup
        },
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
