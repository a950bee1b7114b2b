"""The latency-against-rate curve of a ``make bench`` run, as Markdown (kept out of the package).

Every tgstack load test of the run with an offered rate (the fixed-rate steps and each step of
the highest-sustained search) becomes one point: offered rate, end-to-end p50/p95/p99 (steady
state), whether it was sustained (zero loss, kept pace, p99 ≤ 250 ms), and its deadlocks and
longest lock wait. ``bench_stack.py`` puts the table and the chart into ``bench.md``; to update
``docs/performance.md`` from a run:

    python tests/bench/curve.py bench-results/<time>/bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUSTAINED_P99_MS = 250.0
# The chart's scale: 1 ms to 10 s, logarithmic.
CHART_FLOOR_MS = 1.0
CHART_CEILING_MS = 10_000.0


@dataclass(frozen=True)
class Point:
    label: str
    rate: float
    p50: float | None
    p95: float | None
    p99: float | None
    sustained: bool
    deadlocks: int | None
    longest_lock_wait_ms: float | None


def _point(result: dict[str, Any]) -> Point | None:
    rate = result.get("offered_rate")
    if not rate:
        return None
    latency = result.get("latency", {}).get("end_to_end_ms", {})
    locks = result.get("locks") or {}
    return Point(
        label=str(result.get("label", "")),
        rate=float(rate),
        p50=latency.get("p50"),
        p95=latency.get("p95"),
        p99=latency.get("p99"),
        sustained=bool(result.get("sustained")),
        deadlocks=locks.get("deadlocks"),
        longest_lock_wait_ms=locks.get("longest_lock_wait_ms"),
    )


def points(report: dict[str, Any]) -> list[Point]:
    """The run's tgstack steps with an offered rate, by rate (then label)."""
    figures = report.get("figures", {})
    results: list[dict[str, Any]] = []
    for key in ("pollers_5", "sustained_50", "spike_100"):
        ours = figures.get(key, {}).get("tgstack")
        if ours:
            results.append(ours)
    for step in figures.get("max_sustained", {}).get("tgstack", {}).get("steps", []):
        results.append(step["result"])
    found = [p for p in map(_point, results) if p is not None]
    return sorted(found, key=lambda p: (p.rate, p.label))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def table(found: list[Point]) -> str:
    lines = [
        "| step | offered posts/s | p50 ms | p95 ms | p99 ms | sustained | deadlocks "
        "| longest lock wait ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in found:
        deadlocks = "–" if p.deadlocks is None else str(p.deadlocks)
        lines.append(
            f"| {p.label} | {p.rate:,.0f} | {_ms(p.p50)} | {_ms(p.p95)} | {_ms(p.p99)} "
            f"| {'yes' if p.sustained else 'no'} | {deadlocks} | {_ms(p.longest_lock_wait_ms)} |"
        )
    return "\n".join(lines)


def _column(ms: float, width: int) -> int:
    """Where ``ms`` falls on the chart's logarithmic axis of ``width`` characters."""
    span = math.log10(CHART_CEILING_MS / CHART_FLOOR_MS)
    clipped = min(max(ms, CHART_FLOOR_MS), CHART_CEILING_MS)
    return round(width * math.log10(clipped / CHART_FLOOR_MS) / span)


def chart(found: list[Point], width: int = 60) -> str:
    """p99 (█) and p50 (the bar's light part) against the offered rate, one line per step,
    on a log scale from 1 ms to 10 s; ``|`` marks the 250 ms a sustained step stays under."""
    limit = _column(SUSTAINED_P99_MS, width)
    lines = [
        f"posts/s  end-to-end latency, log scale 1 ms … 10 s ('|' = {SUSTAINED_P99_MS:g} ms)",
    ]
    for p in found:
        if p.p99 is None or p.p50 is None:
            lines.append(f"{p.rate:>7,.0f}  (no figures)")
            continue
        light = _column(p.p50, width)
        dark = _column(p.p99, width)
        bar = ["░"] * light + ["█"] * max(0, dark - light)
        bar += [" "] * (width + 1 - len(bar))
        if bar[limit] == " ":
            bar[limit] = "|"
        mark = "" if p.sustained else "  not sustained"
        lines.append(
            f"{p.rate:>7,.0f}  {''.join(bar).rstrip():<{width + 1}} p50 {p.p50:,.0f} / "
            f"p99 {p.p99:,.0f} ms{mark}"
        )
    return "```text\n" + "\n".join(lines) + "\n```"


def markdown(report: dict[str, Any]) -> str:
    found = points(report)
    if not found:
        return "No load test with an offered rate in this run.\n"
    return table(found) + "\n\n" + chart(found) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("bench_json", type=Path, help="bench.json of a make bench run")
    args = parser.parse_args(argv)
    report = json.loads(args.bench_json.read_text())
    sys.stdout.write(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
