"""Ingest benchmark: ``tgstack replay`` of synthetic posts through the whole gateway pipeline.

Starts durable PostgreSQL + PgBouncer, Redis and RabbitMQ on loopback, migrates, writes a
replay file of N synthetic posts and replays it (PostgreSQL → Redis → RabbitMQ with confirms),
then prints throughput and the ingest latency percentiles from the gateway's own histogram.

    python tests/bench/bench_ingest.py [--count 100000] [--rate N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY

# The test tooling (local servers) lives in testing/, beside the runtime, not in the wheel.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "testing"))

from tgstack.config import Settings
from tgstack.gateway.service import run_replay
from tgstack.gateway.synthetic import generate, to_jsonl_line
from tgstack.migrate import apply_migrations
from tgstack_testing.localstack import RabbitMQServer, RedisServer, start_data_stack


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def histogram_quantile(name: str, quantile: float) -> float:
    """Upper bound of the bucket holding the quantile (as Prometheus would report it)."""
    buckets: list[tuple[float, float]] = []
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= quantile * total:
            return bound
    return float("nan")


def run(args: argparse.Namespace) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="tgstack-ingest-"))
    progress(f"starting PostgreSQL + PgBouncer, Redis and RabbitMQ under {base}")
    stack = start_data_stack(base / "data", durable=True)
    redis_server = RedisServer(base / "redis", password=secrets.token_urlsafe(16))
    rabbitmq = RabbitMQServer(base / "rabbitmq")
    try:
        redis_server.start()
        rabbitmq.start()
        apply_migrations(stack.direct_dsn)
        path = base / "posts.jsonl"
        progress(f"writing {args.count:,} synthetic posts")
        with path.open("w") as out:
            for record in generate(args.count, seed=args.seed):
                out.write(to_jsonl_line(record) + "\n")
        settings = Settings(
            database_url=stack.app_dsn,  # type: ignore[arg-type]
            redis_url=f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/0",  # type: ignore[arg-type]
            amqp_url=rabbitmq.url(),  # type: ignore[arg-type]
            gateway_batch_size=args.batch,
        )
        progress("replaying")
        summary = run_replay(
            settings,
            path,
            rate=args.rate,
            progress=lambda read, pending: progress(f"{read:,} read, {pending:,} waiting"),
        )
        figures: dict[str, object] = {
            **summary.as_dict(),
            "ingest_latency_p50_s_le": histogram_quantile(
                "tgstack_gateway_ingest_latency_seconds", 0.5
            ),
            "ingest_latency_p95_s_le": histogram_quantile(
                "tgstack_gateway_ingest_latency_seconds", 0.95
            ),
            "ingest_latency_p99_s_le": histogram_quantile(
                "tgstack_gateway_ingest_latency_seconds", 0.99
            ),
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return figures
    finally:
        rabbitmq.stop()
        redis_server.stop()
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rate", type=float, help="events per second (default: unlimited)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    figures = run(parser.parse_args(argv))
    return 0 if figures["stored"] == figures["read"] else 1


if __name__ == "__main__":
    sys.exit(main())
