"""A load test's verdict: "sustained" needs zero loss, keeping pace and an end-to-end p99 of
at most 250 ms; the report and the bench's curve say so, with the lock figures."""

from __future__ import annotations

from typing import Any

from tests.bench import curve
from tgstack.loadtest.accounting import Accounting
from tgstack.loadtest.locks import LockFigures, deadlocks_between
from tgstack.loadtest.observer import DonePost
from tgstack.loadtest.plan import LoadPlan
from tgstack.loadtest.report import markdown
from tgstack.loadtest.result import SUSTAINED_P99_MS, LoadResult
from tgstack.models import MessageKey

CHANNEL = -1009999999000
POSTS = 200


def accounting(lost: int = 0) -> Accounting:
    stored = POSTS - lost
    return Accounting(
        sent=POSTS,
        rows=stored,
        unique_rows=stored,
        ledger_keys=stored,
        published=stored,
        processed=stored,
        ignored=0,
        failed=0,
        pending=0,
        claimed=0,
        marked_once=stored,
        signals=0,
        unique_signals=0,
        retired_signals=0,
        expected_signals=0,
        missing_signals=0,
        unexpected_signals=0,
    )


def run(latency_ms: float, *, slow_share: float = 0.0, lost: int = 0) -> LoadResult:
    """A 10 s run at 20 posts/s, every post finished ``latency_ms`` after it was sent (the
    last ``slow_share`` of them ten times later)."""
    start = 1_000.0
    slow_from = POSTS * (1 - slow_share)
    done = []
    for n in range(POSTS - lost):
        sent = start + n / 20
        seconds = latency_ms / 1000 * (10 if n >= slow_from else 1)
        done.append(
            DonePost(
                MessageKey(CHANNEL, n + 1),
                sent,
                False,
                sent + 0.001,
                sent + 0.002,
                sent + seconds,
                "ignored",
            )
        )
    return LoadResult(
        plan=LoadPlan(rate=20.0, duration=10.0, warmup=0.0, label="unit"),
        started_at="2026-12-07T00:00:00+00:00",
        send_seconds=10.0,
        sent=POSTS,
        done=done,
        sent_times=[d.sent_at for d in done],
        start=start,
        accounting=accounting(lost),
        drained=True,
        drain_seconds=0.5,
        aborted=False,
        max_sender_lag_s=0.01,
        max_queue_ready=3,
        cache=None,
        loadavg_before=[0.1, 0.1, 0.1],
        loadavg_after=[0.2, 0.1, 0.1],
        machine={"nproc": 2, "cpu_model": "unit"},
        resources={},
        locks=LockFigures(
            deadlocks=0,
            longest_lock_wait_ms=3.5,
            lock_waits_seen=2,
            samples=900,
            sample_interval_ms=10.0,
        ),
    )


def test_a_run_that_kept_pace_with_a_p99_under_250_ms_is_sustained() -> None:
    result = run(40.0)

    assert result.kept_pace()
    assert result.sustained()
    assert result.not_sustained_because() == []


def test_keeping_pace_with_a_p99_over_250_ms_is_not_sustained() -> None:
    result = run(40.0, slow_share=0.02)  # 2 % of the posts take 400 ms

    assert result.kept_pace()
    assert not result.sustained()
    (reason,) = result.not_sustained_because()
    assert reason == f"end-to-end p99 400.0 ms > {SUSTAINED_P99_MS:g} ms"


def test_a_run_that_lost_posts_is_not_sustained_whatever_its_latency() -> None:
    result = run(10.0, lost=1)

    assert not result.kept_pace()
    assert not result.sustained()
    assert result.not_sustained_because()[0].startswith("not clean: ")


def test_the_summary_gives_the_verdict_its_reason_and_the_lock_figures() -> None:
    data = run(40.0, slow_share=0.02).as_dict()
    data["files"] = {}

    text = markdown(data)

    assert "| kept pace | yes |" in text
    verdict = "| sustained (zero loss, kept pace, end-to-end p99 ≤ 250 ms) | no: end-to-end p99"
    assert verdict in text
    assert "Deadlocks (pg_stat_database, during the run): 0; longest lock wait 3.5 ms" in text


def test_deadlocks_are_the_counter_difference_and_unknown_without_a_reading() -> None:
    assert deadlocks_between(7, 9) == 2
    assert deadlocks_between(7, 3) == 3  # the statistics were reset in between
    assert deadlocks_between(None, 3) is None


def bench_report(*steps: tuple[float, float, float, bool]) -> dict[str, Any]:
    def result(rate: float, p50: float, p99: float, sustained: bool) -> dict[str, Any]:
        return {
            "label": f"max-{rate:g}",
            "offered_rate": rate,
            "sustained": sustained,
            "latency": {"end_to_end_ms": {"p50": p50, "p95": p99, "p99": p99}},
            "locks": {"deadlocks": 0, "longest_lock_wait_ms": 1.0},
        }

    return {
        "figures": {
            "max_sustained": {
                "tgstack": {
                    "steps": [
                        {"rate": s[0], "sustained": s[3], "result": result(*s)} for s in steps
                    ]
                }
            }
        }
    }


def test_the_curve_lists_every_rated_step_by_rate_and_marks_the_unsustained() -> None:
    report = bench_report(
        (1000.0, 20.0, 90.0, True), (250.0, 10.0, 30.0, True), (2000.0, 60.0, 900.0, False)
    )

    text = curve.markdown(report)

    rates = [p.rate for p in curve.points(report)]
    assert rates == [250.0, 1000.0, 2000.0]
    assert "| max-2000 | 2,000 | 60.0 | 900.0 | 900.0 | no | 0 | 1.0 |" in text
    chart = text.split("```text\n")[1]
    lines = chart.splitlines()[1:4]
    assert lines[2].endswith("p50 60 / p99 900 ms  not sustained")
    # the longer the p99, the longer the bar
    assert [line.count("█") + line.count("░") for line in lines] == sorted(
        line.count("█") + line.count("░") for line in lines
    )
