"""Percentiles and the per-second timeline of a run (pure functions, no I/O)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tgstack.loadtest.observer import DonePost

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (need not be sorted); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max/mean in milliseconds (None when there is nothing to summarise)."""
    if not seconds:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(seconds)
    result: dict[str, float | int | None] = {"n": len(ordered)}
    for p in PERCENTILES:
        result[f"p{p}"] = round(percentile(ordered, p) * 1000, 2)
    result["max"] = round(ordered[-1] * 1000, 2)
    result["mean"] = round(statistics.fmean(ordered) * 1000, 2)
    return result


@dataclass(frozen=True, slots=True)
class Sample:
    """Machine resources over one second of the run."""

    at: float
    cpu_percent: float
    memory_used_mb: float
    disk_write_mb_s: float
    loadavg_1m: float


def timeline(
    done: Sequence[DonePost],
    sent_times: Sequence[float],
    start: float,
    samples: Sequence[Sample] = (),
) -> list[dict[str, Any]]:
    """One row a second from ``start``: posts sent, stored and done in that second, and the
    end-to-end latency percentiles of the posts *sent* in it, plus the machine sample."""
    if not sent_times:
        return []
    last = max([*sent_times, *(d.processed_at for d in done)])
    seconds = int(last - start) + 1

    def bucket(at: float) -> int:
        return min(seconds - 1, max(0, int(at - start)))

    sent = [0] * seconds
    stored = [0] * seconds
    finished = [0] * seconds
    latencies: list[list[float]] = [[] for _ in range(seconds)]
    for at in sent_times:
        sent[bucket(at)] += 1
    for post in done:
        stored[bucket(post.received_at)] += 1
        finished[bucket(post.processed_at)] += 1
        latencies[bucket(post.sent_at)].append(post.latency)
    by_second: dict[int, Sample] = {bucket(s.at): s for s in samples}
    rows: list[dict[str, Any]] = []
    for second in range(seconds):
        row: dict[str, Any] = {
            "t": second,
            "sent": sent[second],
            "stored": stored[second],
            "done": finished[second],
        }
        for p in PERCENTILES:
            value = percentile(latencies[second], p)
            row[f"p{p}_ms"] = None if math.isnan(value) else round(value * 1000, 2)
        sample = by_second.get(second)
        if sample is not None:
            row |= {
                "cpu_percent": sample.cpu_percent,
                "memory_used_mb": sample.memory_used_mb,
                "disk_write_mb_s": sample.disk_write_mb_s,
            }
        rows.append(row)
    return rows


def thirds(done: Sequence[DonePost]) -> list[dict[str, float | int | None]]:
    """Latency summaries of the first, middle and last third of the posts (by sent time):
    degradation over a long run shows as a last third slower than the first."""
    ordered = sorted(done, key=lambda d: d.sent_at)
    size = len(ordered)
    parts = [ordered[i * size // 3 : (i + 1) * size // 3] for i in range(3)]
    return [summary_ms([d.latency for d in part]) for part in parts]


def steady(done: Iterable[DonePost], start: float, warmup: float) -> list[DonePost]:
    """The posts sent after the warm-up."""
    return [d for d in done if d.sent_at >= start + warmup]
