"""What a load test run measured and its verdict: ``LoadResult``, and ``SUSTAINED_P99_MS``.

The job: hold a finished run's figures (sent and finished posts, accounting, drain, cache,
locks, machine), judge them (clean, kept pace, sustained) and give them as one JSON-ready
dict. ``tgstack.loadtest.runner`` makes a ``LoadResult``; ``tgstack.loadtest.report`` writes
it as result.json, summary.md and the plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tgstack.loadtest import cachestats, stats
from tgstack.loadtest.accounting import Accounting
from tgstack.loadtest.locks import LockFigures
from tgstack.loadtest.observer import DonePost
from tgstack.loadtest.plan import LoadPlan

# A sustained run's end-to-end p99 (steady state) is at most this.
SUSTAINED_P99_MS = 250.0


@dataclass
class LoadResult:
    plan: LoadPlan
    started_at: str
    send_seconds: float
    sent: int
    done: list[DonePost]
    sent_times: list[float]
    start: float
    accounting: Accounting
    drained: bool
    drain_seconds: float
    aborted: bool
    max_sender_lag_s: float
    max_queue_ready: int | None
    cache: cachestats.CacheCounters | None
    loadavg_before: list[float]
    loadavg_after: list[float]
    machine: dict[str, Any]
    resources: dict[str, Any]
    samples: list[stats.Sample] = field(default_factory=list)
    poller_exit_codes: list[int | None] = field(default_factory=list)
    gateway_batches_failed: int | None = 0
    path: dict[str, Any] = field(default_factory=lambda: {"through": "in-process"})
    path_problems: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    locks: LockFigures | None = None

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.send_seconds if self.send_seconds > 0 else 0.0

    @property
    def end_to_end_rate(self) -> float:
        """Posts finished per second, from the first post sent to the last one finished."""
        if not self.done:
            return 0.0
        span = max(d.processed_at for d in self.done) - self.start
        return len(self.done) / span if span > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.accounting.ok and self.drained and not self.aborted and not self.path_problems

    def kept_pace(self) -> bool:
        """Kept pace with the offered rate: clean, never far behind, drained at once (within a
        tenth of the run, at least 2 s, after the last post was sent)."""
        rate = self.plan.rate or 0.0
        return (
            self.ok
            and self.achieved_rate >= 0.97 * rate
            and self.max_sender_lag_s <= 1.0
            and self.drain_seconds <= max(2.0, 0.1 * self.send_seconds)
        )

    def sustained(self) -> bool:
        """Zero loss, kept pace, and an end-to-end p99 of at most ``SUSTAINED_P99_MS``."""
        return not self.not_sustained_because()

    def not_sustained_because(self) -> list[str]:
        """Why the run is not sustained (empty when it is)."""
        reasons: list[str] = []
        if not self.ok:
            reasons.append("not clean: " + "; ".join(self.problems()))
        elif not self.kept_pace():
            reasons.append("did not keep pace with the offered rate")
        p99 = self.latency()["end_to_end_ms"]["p99"]
        if p99 is None:
            reasons.append("no post finished")
        elif p99 > SUSTAINED_P99_MS:
            reasons.append(f"end-to-end p99 {p99:,.1f} ms > {SUSTAINED_P99_MS:g} ms")
        return reasons

    def latency(self) -> dict[str, Any]:
        steady = stats.steady(self.done, self.start, self.plan.warmup)
        if self.plan.count is not None or len(steady) < len(self.done) // 2:
            steady = self.done  # a short burst has no warm-up to leave out
        return {
            "end_to_end_ms": stats.summary_ms([d.latency for d in steady]),
            "end_to_end_signals_ms": stats.summary_ms(
                [d.latency for d in steady if d.is_signal and d.state == "processed"]
            ),
            "ingest_ms": stats.summary_ms([d.ingest_latency for d in steady]),
            "publish_confirmed_ms": stats.summary_ms(
                [d.published_at - d.sent_at for d in steady if d.published_at is not None]
            ),
            "all_posts_end_to_end_ms": stats.summary_ms([d.latency for d in self.done]),
            "thirds_end_to_end_ms": stats.thirds(self.done),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.plan.label,
            "started_at": self.started_at,
            "plan": self.plan.as_dict(),
            "ok": self.ok,
            "problems": self.problems(),
            "sent": self.sent,
            "send_seconds": round(self.send_seconds, 3),
            "offered_rate": self.plan.rate,
            "achieved_send_rate": round(self.achieved_rate, 1),
            "end_to_end_rate": round(self.end_to_end_rate, 1),
            "max_sender_lag_s": round(self.max_sender_lag_s, 3),
            "drained": self.drained,
            "drain_seconds": round(self.drain_seconds, 3),
            "aborted": self.aborted,
            "sustained": self.sustained(),
            "kept_pace": self.kept_pace(),
            "not_sustained_because": self.not_sustained_because(),
            "sustained_p99_ms": SUSTAINED_P99_MS,
            "locks": None if self.locks is None else self.locks.as_dict(),
            "max_queue_ready": self.max_queue_ready,
            "accounting": self.accounting.as_dict(),
            "latency": self.latency(),
            "cache": None if self.cache is None else self.cache.as_dict(),
            "loadavg_before": self.loadavg_before,
            "loadavg_after": self.loadavg_after,
            "resources": self.resources,
            "machine": self.machine,
            "poller_exit_codes": self.poller_exit_codes,
            "gateway_batches_failed": self.gateway_batches_failed,
            "path": self.path,
            "timeline": stats.timeline(self.done, self.sent_times, self.start, self.samples),
            "files": self.files,
        }

    def problems(self) -> list[str]:
        found = self.accounting.problems()
        if not self.drained:
            found.append(f"not drained within {self.plan.drain_timeout:g} s")
        if self.aborted:
            found.append(f"stopped early: posts waited more than {self.plan.abort_lag:g} s")
        return found + self.path_problems
